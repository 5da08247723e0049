"""Bearer tokens: ``role:token`` or ``coordinator:token:<city_id>``, compared in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

Role = Literal["platform", "staff", "coordinator"]
ROLES: tuple[Role, ...] = ("platform", "staff", "coordinator")


@dataclass(frozen=True)
class Principal:
    """Who calls: a role, a name for the audit trail and, for coordinators, their city."""

    role: Role
    name: str
    city_id: str | None = None


@dataclass(frozen=True)
class _Entry:
    principal: Principal
    token: bytes


class TokenBook:
    """The known tokens."""

    def __init__(self, entries: list[tuple[Principal, str]]) -> None:
        self._entries = [_Entry(p, t.encode()) for p, t in entries]

    @classmethod
    def parse(cls, spec: str) -> TokenBook:
        """Parse ``TANDEM_API_TOKENS``; raises ValueError naming the bad entry (not its token)."""
        entries: list[tuple[Principal, str]] = []
        for position, item in enumerate((s.strip() for s in spec.split(",")), start=1):
            if not item:
                continue
            parts = item.split(":")
            role = parts[0]
            if role not in ROLES:
                raise ValueError(
                    f"token {position}: unknown role {role!r} (use {', '.join(ROLES)})"
                )
            if len(parts) < 2 or len(parts[1]) < 8:
                raise ValueError(f"token {position}: a token of at least 8 characters is needed")
            if role == "coordinator":
                if len(parts) != 3 or not parts[2]:
                    raise ValueError(f"token {position}: use coordinator:<token>:<city_id>")
                principal = Principal("coordinator", f"coordinator:{parts[2]}", parts[2])
            else:
                if len(parts) > 3:
                    raise ValueError(f"token {position}: use {role}:<token>[:<name>]")
                name = parts[2] if len(parts) == 3 and parts[2] else role
                principal = Principal(cast(Role, role), name)
            entries.append((principal, parts[1]))
        if not entries:
            raise ValueError("no tokens configured")
        return cls(entries)

    def lookup(self, token: str) -> Principal | None:
        """The principal of ``token``; every entry is compared, in constant time each."""
        given = token.encode()
        found: Principal | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.token, given):
                found = entry.principal
        return found

    def first(self, role: Role) -> str | None:
        """The first token of ``role`` (for printing generated tokens)."""
        for entry in self._entries:
            if entry.principal.role == role:
                return entry.token.decode()
        return None


def load_or_create_tokens(spec: str | None, data_dir: Path) -> tuple[TokenBook, str | None]:
    """Tokens from ``spec``; unset: the ones kept in ``data_dir/tokens`` (mode 0600), generated
    on first start. Returns the book and, when generated or loaded from the file, its text."""
    if spec:
        return TokenBook.parse(spec), None
    path = data_dir / "tokens"
    if path.exists():
        text = path.read_text().strip()
        return TokenBook.parse(text), text
    data_dir.mkdir(parents=True, exist_ok=True)
    text = ",".join(
        [
            f"platform:{secrets.token_urlsafe(24)}",
            f"staff:{secrets.token_urlsafe(24)}",
        ]
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    return TokenBook.parse(text), text
