"""Configuration shared by every service: every option as ``TANDEM_<OPTION>``. Each service's
own options live with it (``services/registry/settings.py``, ``services/matcher/settings.py``);
``services/config.py`` lists them all."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import (
    BaseSettings,
    DotEnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: The variable that names a settings file (``TANDEM_<OPTION>=value`` lines, as in a .env file).
SETTINGS_FILE_VARIABLE = "TANDEM_SETTINGS_FILE"


class CommonSettings(BaseSettings):
    """Options every Tandem process understands.

    Every option comes from its environment variable or, below that, from the settings file
    named by ``TANDEM_SETTINGS_FILE`` (lines ``TANDEM_WEIGHTS=topics=0.5``, as in a .env file).
    """

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        path = os.environ.get(SETTINGS_FILE_VARIABLE)
        if not path:
            return init_settings, env_settings, file_secret_settings
        if not Path(path).is_file():
            raise ValueError(f"{SETTINGS_FILE_VARIABLE}={path}: no such file")
        from_file = DotEnvSettingsSource(settings_cls, env_file=path)
        return init_settings, env_settings, from_file, file_secret_settings

    settings_file: Path | None = Field(
        default=None,
        description="A file of `TANDEM_<OPTION>=value` lines read below the environment "
        "(e.g. the weights); unset: none.",
    )

    broker: str | None = Field(
        default=None,
        description="Kafka bootstrap address HOST:PORT; unset: `tandem up` embeds a broker.",
    )
    data: Path = Field(default=Path(".tandem"), description="Directory for SQLite databases.")
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy async URL; default sqlite+aiosqlite in the data directory.",
    )
    host: str = Field(default="127.0.0.1", description="HTTP listen address.")
    port: int = Field(default=8000, ge=0, le=65535, description="HTTP port (0: a free one).")
    api_tokens: SecretStr | None = Field(
        default=None,
        description="Comma-separated `role:token` or `coordinator:token:<city_id>`; "
        "unset: generated and kept in the data directory.",
    )
    log_level: str = Field(default="INFO", description="Log level.")
    max_body_bytes: int = Field(default=1_000_000, ge=1024, description="Largest request body.")
    request_read_timeout_seconds: float = Field(
        default=20.0,
        gt=0,
        le=3600,
        description="Longest a client may take to send a request's headers, and again its "
        "body; a slower one gets 408 and its connection is closed.",
    )
    kafka_session_timeout_ms: int | None = Field(
        default=None,
        ge=500,
        le=300_000,
        description="Consumer group session timeout; unset: 10000, or 1500 on the embedded "
        "broker (which accepts short sessions, so a restarted consumer rejoins fast).",
    )
    kafka_fetch_max_wait_ms: int | None = Field(
        default=None,
        ge=1,
        le=60_000,
        description="How long a consumer's fetch may wait for records; unset: 500, or 20 on the "
        "embedded broker (which answers a waiting fetch only when the wait is over).",
    )
    consumer_stall_seconds: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="A consumer group that commits nothing for this long while records wait "
        "makes `/ready` answer 503 with the reason (until it progresses) and is restarted. "
        "Unset: 30, or 10 on the embedded broker.",
    )
    outbox_batch: int = Field(default=2000, ge=1, description="Outbox rows published per round.")
    outbox_poll_seconds: float = Field(
        default=1.0, gt=0, description="How often the relay looks for unsent rows when idle."
    )
    kafka_idempotence: bool = Field(
        default=False,
        description="Idempotent producer (real Kafka only; the embedded broker lacks it).",
    )

    @field_validator("log_level")
    @classmethod
    def _level(cls, value: str) -> str:
        level = value.upper()
        if level not in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}:
            raise ValueError("log_level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        return level

    @field_validator("api_tokens")
    @classmethod
    def _tokens(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            from services.infra.auth import TokenBook

            TokenBook.parse(value.get_secret_value())  # names the bad entry, never its token
        return value

    def database_for(self, service: str) -> str:
        """The database URL of ``service``: the configured one, or its own SQLite file."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data / f'{service}.db').resolve()}"
