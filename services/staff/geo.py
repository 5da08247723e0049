"""A schematic map of Germany: a hand-made outline and an equirectangular projection.

No map tiles are reachable from where the service runs, so the staff page draws its own SVG.
The outline is a simplified polygon of about 110 approximate border and coast points
(longitude, latitude), good for orientation, not for surveying. The projection is
equirectangular with the east-west axis shrunk by cos(51°), the latitude of central Germany,
so the country keeps its familiar proportions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Border and coast points (lon, lat), clockwise from the Ems estuary (Dollart).
GERMANY_OUTLINE: tuple[tuple[float, float], ...] = (
    # North Sea coast, west to east
    (7.21, 53.24), (7.05, 53.40), (7.10, 53.62), (7.45, 53.70), (7.80, 53.72), (8.05, 53.66),
    (8.10, 53.52), (8.25, 53.40), (8.35, 53.62), (8.55, 53.58), (8.50, 53.75), (8.70, 53.88),
    (9.00, 53.88), (8.85, 54.05), (8.85, 54.20), (8.62, 54.28), (8.65, 54.35), (8.90, 54.48),
    (8.82, 54.65), (8.68, 54.78), (8.65, 54.91),
    # Danish border, then the Baltic coast west to east
    (9.15, 54.85), (9.42, 54.83), (9.62, 54.80), (9.95, 54.70), (9.95, 54.57), (9.85, 54.47),
    (10.20, 54.45), (10.45, 54.35), (10.75, 54.30), (11.05, 54.40), (11.10, 54.20),
    (10.85, 54.05), (10.90, 53.95), (11.20, 53.98), (11.45, 53.98), (11.60, 54.12),
    (12.10, 54.18), (12.35, 54.30), (12.50, 54.47), (12.90, 54.44), (13.10, 54.33),
    (13.25, 54.60), (13.40, 54.68), (13.68, 54.52), (13.60, 54.30), (13.70, 54.17),
    (13.80, 54.10), (14.00, 54.05), (14.22, 53.93),
    # Polish border (Stettin Lagoon, Oder, Neisse), north to south
    (14.27, 53.75), (14.41, 53.33), (14.30, 53.05), (14.13, 52.84), (14.62, 52.58),
    (14.55, 52.30), (14.72, 51.95), (14.60, 51.75), (14.73, 51.55), (15.03, 51.25),
    (14.82, 50.87),
    # Czech border, east to west, then south along the Bavarian Forest
    (14.60, 50.92), (14.40, 51.03), (14.25, 50.90), (13.85, 50.72), (13.40, 50.62),
    (12.95, 50.40), (12.50, 50.35), (12.18, 50.32), (12.10, 50.25), (12.30, 50.05),
    (12.45, 49.80), (12.55, 49.65), (12.85, 49.35), (13.20, 49.12), (13.50, 48.95),
    (13.84, 48.77),
    # Austrian border (Inn, Salzach, Alps), east to west
    (13.47, 48.57), (13.30, 48.40), (13.02, 48.26), (12.83, 48.16), (12.75, 47.95),
    (12.98, 47.80), (13.05, 47.50), (12.80, 47.58), (12.50, 47.67), (12.17, 47.60),
    (11.65, 47.59), (11.26, 47.42), (10.98, 47.40), (10.70, 47.55), (10.45, 47.56),
    (10.22, 47.27), (10.05, 47.45), (9.70, 47.55),
    # Lake Constance and the Swiss border along the Rhine, east to west
    (9.45, 47.65), (9.18, 47.66), (8.90, 47.68), (8.70, 47.78), (8.55, 47.65),
    (8.40, 47.58), (8.20, 47.62), (7.95, 47.55), (7.60, 47.58),
    # French border along the Rhine, south to north, then west to Saarland
    (7.55, 47.85), (7.58, 48.12), (7.80, 48.50), (8.00, 48.75), (8.23, 48.97),
    (7.95, 49.05), (7.65, 49.05), (7.35, 49.17), (7.05, 49.12), (6.85, 49.20),
    (6.55, 49.42), (6.37, 49.47),
    # Luxembourg, Belgian and Dutch borders, south to north
    (6.52, 49.80), (6.20, 50.02), (6.13, 50.13), (6.40, 50.33), (6.27, 50.50),
    (6.17, 50.62), (6.02, 50.75), (5.87, 51.05), (6.08, 51.18), (6.22, 51.40),
    (6.10, 51.60), (5.95, 51.80), (6.35, 51.85), (6.72, 51.90), (6.82, 52.10),
    (7.05, 52.23), (7.05, 52.40), (6.70, 52.48), (7.05, 52.65), (7.20, 53.00),
)  # fmt: skip

#: The map's frame in degrees (a little larger than Germany's extent).
WEST, EAST, SOUTH, NORTH = 5.5, 15.4, 47.0, 55.3
ASPECT = math.cos(math.radians(51.0))
#: Pixels per degree of latitude in the SVG's own coordinates (its viewBox).
SCALE = 60.0
WIDTH = round((EAST - WEST) * ASPECT * SCALE, 1)
HEIGHT = round((NORTH - SOUTH) * SCALE, 1)


@dataclass(frozen=True, slots=True)
class Point:
    """A projected point in the SVG's coordinates."""

    x: float
    y: float


def project(lon: float, lat: float) -> Point:
    """Equirectangular projection with a cos(51°) aspect into the map's viewBox."""
    return Point(round((lon - WEST) * ASPECT * SCALE, 1), round((NORTH - lat) * SCALE, 1))


def outline_path() -> str:
    """The SVG path data of Germany's outline."""
    points = [project(lon, lat) for lon, lat in GERMANY_OUTLINE]
    head, *tail = points
    return f"M{head.x},{head.y} " + " ".join(f"L{p.x},{p.y}" for p in tail) + " Z"
