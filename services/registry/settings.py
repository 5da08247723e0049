"""The registry's options (beside the common ones)."""

from __future__ import annotations

from pydantic import Field

from services.infra.settings import CommonSettings


class RegistrySettings(CommonSettings):
    """Options of the registry."""

    registry_group_id: str = Field(
        default="tandem-registry", description="Consumer group of the registry (member.admitted)."
    )
