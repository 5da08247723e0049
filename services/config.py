"""Every option of every service in one place: the README's configuration table and
``tandem config``. It sits above the services, as the command line does."""

from __future__ import annotations

from services.infra.settings import CommonSettings
from services.matcher.settings import MatcherSettings
from services.registry.settings import RegistrySettings

SETTINGS_CLASSES: tuple[type[CommonSettings], ...] = (
    CommonSettings,
    RegistrySettings,
    MatcherSettings,
)
SECRET_FIELDS = {"api_tokens"}


def _default_text(name: str, cls: type[CommonSettings]) -> str:
    field = cls.model_fields[name]
    if name == "database_url":
        return "SQLite in the data directory"
    if field.default is None:
        return "unset"
    return f"`{field.default}`"


def config_rows() -> list[tuple[str, str, str, str]]:
    """(variable, default, service, description) for every option, common ones first."""
    rows: list[tuple[str, str, str, str]] = []
    seen: set[str] = set()
    for cls in SETTINGS_CLASSES:
        for name, field in cls.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            owners = [c for c in SETTINGS_CLASSES[1:] if name in c.model_fields]
            scope = (
                "all"
                if name in CommonSettings.model_fields
                else ", ".join(c.__name__.removesuffix("Settings").lower() for c in owners)
            )
            rows.append(
                (f"TANDEM_{name.upper()}", _default_text(name, cls), scope, field.description or "")
            )
    rows.append(
        ("TANDEM_EXTRA_TOPICS", "unset", "all", "Extra topic slugs (comma-separated) for the "
         "vocabulary.")
    )  # fmt: skip
    return rows


def config_table_markdown() -> str:
    """The README's configuration table, generated so it cannot drift from the code."""
    lines = ["| variable | default | service | meaning |", "| --- | --- | --- | --- |"]
    for variable, default, scope, description in config_rows():
        lines.append(f"| `{variable}` | {default} | {scope} | {description.replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def effective_configuration() -> dict[str, str]:
    """Every option's effective value in this environment, secrets masked."""
    values: dict[str, str] = {}
    for cls in SETTINGS_CLASSES:
        settings = cls()
        for name in cls.model_fields:
            value = getattr(settings, name)
            if name in SECRET_FIELDS and value is not None:
                text = "***"
            elif name == "database_url":
                text = _mask_password(
                    settings.database_for("registry" if cls is not MatcherSettings else "matcher")
                )
            else:
                text = str(value) if value is not None else "unset"
            values.setdefault(f"TANDEM_{name.upper()}", text)
    return values


def _mask_password(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    user = credentials.split(":", 1)[0]
    return f"{scheme}{sep}{user}:***@{host}"
