"""Numbers the operator sets in the environment (``SERDEMO_*``): read, bounded, and the default kept when the
value is not a number, so a typo in a Space's settings never stops the app."""

from __future__ import annotations

import os


def env_number(name: str, default, low=None, high=None, kind=float):
    """``kind(os.environ[name])`` clamped to ``[low, high]`` (either may be None), or ``default`` when the
    variable is unset or not a ``kind`` (an unset variable's default is clamped like a set one)."""
    try:
        value = kind(os.environ.get(name, default))
    except ValueError:
        return default
    if low is not None:
        value = max(low, value)
    if high is not None:
        value = min(high, value)
    return value
