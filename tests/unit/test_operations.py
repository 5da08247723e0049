"""What operators rely on: the README's configuration table, the compose file, the Dockerfile."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.config import SETTINGS_CLASSES, config_table_markdown

ROOT = Path(__file__).resolve().parents[2]
KNOWN_VARIABLES = {
    f"TANDEM_{name.upper()}" for cls in SETTINGS_CLASSES for name in cls.model_fields
} | {"TANDEM_EXTRA_TOPICS"}


def test_readme_configuration_table_is_generated_from_the_settings() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- config-table:start -->\n(.*?)<!-- config-table:end -->", readme, re.S)
    assert block, "README lacks the config-table markers"
    assert block.group(1) == config_table_markdown(), "run: tandem config --markdown"


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def test_compose_runs_kafka_postgres_registry_and_two_matchers() -> None:
    services = compose()["services"]
    assert set(services) == {"kafka", "postgres", "registry", "matcher"}
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert services["matcher"]["deploy"]["replicas"] == 2
    for name in ("kafka", "postgres"):
        assert services[name]["healthcheck"]["test"], f"{name} needs a health check"
    for name in ("registry", "matcher"):
        service = services[name]
        assert service["build"] == "."
        assert service["command"] == [name]
        assert service["depends_on"] == {
            "kafka": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
        }
        assert service["ports"], f"{name} publishes its HTTP port"


def test_compose_keeps_kafka_data_on_its_volume() -> None:
    """Kafka writes to ``KAFKA_LOG_DIRS``; unset, that is /tmp in the container, the volume stays
    empty and topics are lost with a recreated container."""
    kafka = compose()["services"]["kafka"]
    log_dirs = kafka["environment"]["KAFKA_LOG_DIRS"]
    mounts: dict[str, str] = {}
    for volume in kafka["volumes"]:
        source, target = volume.split(":")[:2]
        mounts[target] = source
    assert log_dirs in mounts, f"KAFKA_LOG_DIRS {log_dirs} is not a mounted path: {mounts}"
    assert mounts[log_dirs] in compose()["volumes"], "the log dir must be a named volume"


def test_compose_configures_only_through_known_tandem_variables() -> None:
    for name in ("registry", "matcher"):
        environment = compose()["services"][name]["environment"]
        tandem = {k for k in environment if k.startswith("TANDEM_")}
        assert tandem, name
        assert tandem <= KNOWN_VARIABLES, tandem - KNOWN_VARIABLES
        assert environment["TANDEM_BROKER"] == "kafka:9092"
        assert environment["TANDEM_DATABASE_URL"].startswith("postgresql+asyncpg://")
        assert environment["TANDEM_HOST"] == "0.0.0.0"


def test_dockerfile_installs_the_package_and_runs_tandem() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.1[1-9]", dockerfile, re.M)
    assert "pip install ." in dockerfile
    assert 'ENTRYPOINT ["tandem"]' in dockerfile
    assert "HEALTHCHECK" in dockerfile and "/health" in dockerfile
    assert re.search(r"^USER \w+", dockerfile, re.M), "the services do not run as root"


def test_a_settings_file_supplies_options_below_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from services.matcher.settings import MatcherSettings

    path = tmp_path / "tandem.env"
    path.write_text("TANDEM_WEIGHTS=topics=0.9\nTANDEM_PORT=8123\n", encoding="utf-8")
    monkeypatch.setenv("TANDEM_SETTINGS_FILE", str(path))
    monkeypatch.delenv("TANDEM_WEIGHTS", raising=False)
    monkeypatch.setenv("TANDEM_PORT", "9000")
    settings = MatcherSettings()
    assert settings.weights == "topics=0.9"  # from the file
    assert settings.port == 9000  # the environment wins

    path.write_text("TANDEM_WEIGHTS=topics=-1\n", encoding="utf-8")
    with pytest.raises(ValueError, match="weight"):
        MatcherSettings()
    monkeypatch.setenv("TANDEM_SETTINGS_FILE", str(tmp_path / "missing.env"))
    with pytest.raises(ValueError, match="no such file"):
        MatcherSettings()
