"""Who may retrain, and what a refusal says: the limits' exceptions (:class:`RetrainBusy`, :class:`RetrainRefused`),
logins and admins (``SERDEMO_AUTH``, ``SERDEMO_ADMINS``), a run's owner in words, the base checkpoint's check
before a run, and :func:`user_reason` (a message fit to show anyone: no path, no traceback). Split from
:mod:`serdemo.retrain` (which re-exports every name); no torch at import, no Gradio.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

MAX_REASON_CHARS = 300
log = logging.getLogger("serdemo.retrain")  # the retrainer's log, as before the split


class RetrainBusy(RuntimeError):
    """A run cannot start now; the message says why and when it can (no path)."""


class RetrainRefused(RetrainBusy):
    """Refused by a limit (cool-down, quota) or because the base checkpoint is broken."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/,;:()\[\]<>]+)+[\\/]?")


def user_reason(text: str | None) -> str:
    """A message fit to show anyone: its last meaningful line, absolute paths cut to their last part,
    at most ``MAX_REASON_CHARS`` characters."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Traceback", "File \"", "^", "~"))]
    line = lines[-1] if lines else ""
    line = _ABSOLUTE_PATH.sub(lambda m: re.split(r"[\\/]", m.group().rstrip("\\/"))[-1] or "…", line)
    return line if len(line) <= MAX_REASON_CHARS else line[:MAX_REASON_CHARS - 1] + "…"



def check_weights(checkpoint: Path) -> None:
    """Load ``checkpoint`` as the app would (card, weights' size and SHA-256, tensor names and shapes);
    raises :class:`RetrainRefused` with the checkpoint's problem in the user's words."""
    from serdemo.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(checkpoint, "cpu")
    except CheckpointError as exc:  # its messages name the checkpoint, never a path
        raise RetrainRefused(f"cannot fine-tune: {user_reason(str(exc))}") from None
    except Exception:  # noqa: BLE001 - anything else is a broken file too; the detail goes to the log
        log.exception("retraining refused: checkpoint %s could not be loaded", checkpoint)
        raise RetrainRefused(f"cannot fine-tune '{Path(checkpoint).name}': its weights could not be loaded") from None


def auth_configured(env=None) -> bool:
    """Whether the app has logins (``SERDEMO_AUTH`` holds at least one ``name:password`` pair)."""
    env = os.environ if env is None else env
    return any(":" in pair for pair in env.get("SERDEMO_AUTH", "").split(","))


def admins(env=None) -> set[str]:
    """``SERDEMO_ADMINS="alice,bob"``: the logins (as :func:`serdemo.store.name_key` reads names) that may cancel,
    keep or discard anyone's run. Only logins count: without logins nobody is an admin."""
    from serdemo.store import StoreError, name_key

    env = os.environ if env is None else env
    out = set()
    for name in env.get("SERDEMO_ADMINS", "").split(","):
        try:
            key = name_key(name)
        except StoreError:
            continue
        if key:
            out.add(key)
    return out


def is_admin(who: str | None, env=None) -> bool:
    """Whether the requester ``who`` (``login:NAME``, as :func:`serdemo.uikit.requester` names them) is an admin."""
    from serdemo.store import StoreError, name_key

    if not who or not who.startswith("login:"):
        return False
    try:
        return name_key(who[len("login:"):]) in admins(env)
    except StoreError:
        return False


def owner_words(owner: str) -> str:
    """Who started a run, as a refusal names them (never a session id)."""
    kind, _, name = owner.partition(":")
    if kind == "login":
        return f"{name[:64]}, who started it,"
    if kind == "annotator":
        return f"the annotator who started it ({name[:64]})"
    return "the page that started it"


def check_may_retrain(user: str | None, env=None) -> None:
    """Refuse (:class:`RetrainRefused`) a retraining request from someone not logged in when the app has
    logins; without logins anyone may ask (the cool-down and the quota still hold)."""
    if auth_configured(env) and not (user or "").strip():
        raise RetrainRefused("retraining needs a login: log in with your name and password first")

