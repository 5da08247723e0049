"""The great-circle distance, written once for every service (registry, matcher, staff page).

Haversine on a sphere of the mean earth radius; coordinates in degrees (WGS84 latitude and
longitude as members carry them). ``great_circle_km`` is the scalar form;
``great_circle_km_from`` measures from one point to many at once (numpy), with ``nan`` where a
coordinate is unknown. Both give the same figures up to float rounding. Pure: stdlib and numpy.

The matcher's tuned scoring engine (``services.matcher.domain.scoring``) evaluates the same
haversine in a factored form for whole matrices; it takes ``EARTH_RADIUS_KM`` from here.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

#: Mean earth radius (IUGG), in kilometres.
EARTH_RADIUS_KM = 6371.0088


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle (haversine) distance in kilometres between two points given in degrees."""
    phi1, lam1, phi2, lam2 = map(math.radians, (lat1, lon1, lat2, lon2))
    hav = (
        math.sin((phi2 - phi1) / 2) ** 2
        + math.cos(phi1) * math.cos(phi2) * math.sin((lam2 - lam1) / 2) ** 2
    )
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(hav)))


def great_circle_km_from(
    lat: float, lon: float, lats: NDArray[np.float64], lons: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Great-circle distances in kilometres from one point to each of ``lats``/``lons``
    (degrees); ``nan`` where a latitude or longitude is ``nan`` (unknown)."""
    phi1, lam1 = math.radians(lat), math.radians(lon)
    phi2, lam2 = np.radians(lats), np.radians(lons)
    with np.errstate(invalid="ignore"):
        hav = (
            np.sin((phi2 - phi1) / 2) ** 2
            + np.cos(phi1) * np.cos(phi2) * np.sin((lam2 - lam1) / 2) ** 2
        )
        km: NDArray[np.float64] = 2 * EARTH_RADIUS_KM * np.arcsin(np.minimum(1.0, np.sqrt(hav)))
    return km
