"""Pretrained speech encoders: a contract (:mod:`serdemo.encoders.base`), a registry, and loaded encoders
kept by name (several may be loaded in one process; each is loaded and hash-checked once).

Adding an encoder is its own module (an ``INFO`` :class:`EncoderInfo` and a ``load()`` returning a
:class:`SpeechEncoder`) and one line in :data:`REGISTRY`. Nothing outside this package knows an encoder's
width or depth: everything else reads them from ``info(name)`` or from the loaded encoder's ``info``.
"""

from __future__ import annotations

import importlib
import threading

from serdemo.encoders.base import EncoderError, EncoderInfo, SpeechEncoder, cpu_bf16_default

# name -> the module that defines it (imported only when asked for: no weights are read until load())
REGISTRY = {
    "whisper-base": "serdemo.encoders.whisper_base",
    "whisper-tiny.en": "serdemo.encoders.whisper_tiny_en",
}
DEFAULT = "whisper-base"  # what a card without an encoder name (every card before names) stands on

_LOADED: dict[str, SpeechEncoder] = {}
_LOCK = threading.Lock()


def _module(name: str):
    if name not in REGISTRY:
        raise EncoderError(f"unknown encoder {name!r}; known: {', '.join(sorted(REGISTRY))}")
    return importlib.import_module(REGISTRY[name])


def info(name: str = DEFAULT) -> EncoderInfo:
    """What encoder ``name`` is (dimensions, front end, licence), without loading its weights."""
    return _module(name).INFO


def load(name: str = DEFAULT) -> SpeechEncoder:
    """Encoder ``name`` on the CPU, frozen: loaded and hash-checked on first use, then shared in this process."""
    with _LOCK:
        if name not in _LOADED:
            _LOADED[name] = _module(name).load().eval()
        return _LOADED[name]


def name_of(card: dict) -> str:
    """The encoder a card names (:data:`DEFAULT` for cards written before encoders had names)."""
    block = card.get("encoder") if isinstance(card.get("encoder"), dict) else {}
    name = block.get("name", DEFAULT)
    return name if isinstance(name, str) else ""


__all__ = ["DEFAULT", "REGISTRY", "EncoderError", "EncoderInfo", "SpeechEncoder", "cpu_bf16_default", "info",
           "load", "name_of"]
