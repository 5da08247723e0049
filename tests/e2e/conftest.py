"""Helpers for driving the ``tandem`` command as a user would."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def tandem_command() -> list[str]:
    """The installed ``tandem`` console script (next to this Python), else ``python -m``."""
    script = Path(sys.executable).parent / "tandem"
    if script.exists():
        return [str(script)]
    found = shutil.which("tandem")
    return [found] if found else [sys.executable, "-m", "services.cli"]
