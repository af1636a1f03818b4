"""nb_trainer's on/off environment switches (``NBT_KEEP_FREED_MEMORY``, ``NBT_RAY_PRELOAD``): on unless
set to 0, false, no or off."""
from __future__ import annotations

import os

OFF = ("0", "false", "no", "off")


def is_on(name: str) -> bool:
    """Is the switch ``name`` on (unset counts as on)?"""
    return os.environ.get(name, "1").strip().lower() not in OFF
