"""Imports point inward (issue #18): the services do not import demo code, infra imports no
service. Every import counts, also those inside functions and ``TYPE_CHECKING`` blocks."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def imports_of(package: str) -> dict[str, set[str]]:
    """Module path -> the modules it imports (``from a import b`` gives ``a`` and ``a.b``)."""
    found: dict[str, set[str]] = {}
    for path in sorted((ROOT / package.replace(".", "/")).rglob("*.py")):
        relative = path.relative_to(ROOT)
        if "migrations" in relative.parts:
            continue
        here = ".".join(relative.with_suffix("").parts)
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: resolve against this module's package
                    anchor = here.split(".")[: -node.level]
                    base = ".".join([*anchor, base] if base else anchor)
                names.add(base)
                names.update(f"{base}.{alias.name}" for alias in node.names)
        found[relative.as_posix()] = names
    return found


def offenders(package: str, forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{module} imports {name}"
        for module, names in imports_of(package).items()
        for name in sorted(names)
        if any(name == f or name.startswith(f"{f}.") for f in forbidden)
    ]


def test_the_import_scan_sees_imports_inside_functions() -> None:
    """The scan itself: the CLI imports the demo inside its commands."""
    assert any(
        name.startswith("services.demo") for name in imports_of("services")["services/cli.py"]
    )


@pytest.mark.parametrize("service", ["services.registry", "services.matcher", "services.infra"])
def test_no_service_imports_demo_code(service: str) -> None:
    assert offenders(service, ("services.demo",)) == []


def test_infra_imports_no_service() -> None:
    assert offenders("services.infra", ("services.matcher", "services.registry")) == []


def test_the_matcher_domain_does_no_io() -> None:
    """Scoring, assignment, planning, reasons, calibration, lifecycle and advice ranking are plain
    Python: stdlib, numpy, scipy, networkx, ``schemas`` and their own modules."""
    io = ("faststream", "aiokafka", "sqlalchemy", "fastapi", "starlette", "httpx", "asyncpg",
          "aiosqlite", "services.infra", "services.registry", "services.staff")  # fmt: skip
    assert offenders("services.matcher.domain", io) == []
    outside = [
        f"{module} imports {name}"
        for module, names in imports_of("services.matcher.domain").items()
        for name in names
        if name.startswith("services.") and not name.startswith("services.matcher.domain")
    ]
    assert outside == []
