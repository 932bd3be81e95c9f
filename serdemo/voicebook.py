"""The Analyse tab's voices: a voice name as it keys a profile (:func:`voice_name`), the profiles per scope
(:class:`VoiceBook`, bounded), and what the tab says of a result's voice. Split from
:mod:`serdemo.workbench` (which re-exports every name); no torch here.
"""

from __future__ import annotations

import html
import threading
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field

from serdemo.store import StoreError, name_key
from serdemo.uikit import user_error
from serdemo.voice import VoiceProfile

MAX_VOICES = 200  # Analyse-tab voice profiles kept (all users; the least recently used is forgotten first)
MAX_VOICE_NAME = 64  # characters of a voice name, after normalising
VOICE_CLIPS = 200  # clips one Analyse-tab voice keeps (its latest)
MAX_VOICE_CLIPS_TOTAL = 10_000  # clips all Analyse-tab voices keep together (~120 MB for the default probe)


def voice_name(name) -> str:
    """A voice name as it keys a profile: :func:`serdemo.store.name_key` (Unicode NFKC, case folded, inner
    whitespace collapsed, stripped, a leading ``@`` dropped, one alphabet), the same rule that makes two
    spellings of an annotator one person; "" for none. Refused (a user error) when not text, with control
    characters or over :data:`MAX_VOICE_NAME` characters."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise user_error("the voice name must be text")
    if len(name) > 16 * MAX_VOICE_NAME:  # not normalised at all: NFKC can grow a text many times
        raise user_error(f"a voice name has at most {MAX_VOICE_NAME} characters")
    try:
        text = name_key(name, "voice name")
    except StoreError as exc:
        raise user_error(exc) from None
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise user_error("the voice name has control or invisible characters: type a plain name, e.g. alice")
    if len(text) > MAX_VOICE_NAME:
        raise user_error(f"a voice name has at most {MAX_VOICE_NAME} characters (this one has {len(text)})")
    return text


def shown_name(name: str) -> str:
    """A (normalised) voice name for Markdown: HTML and Markdown's own characters escaped."""
    text = html.escape(name, quote=False)
    return "".join("\\" + ch if ch in "\\`*_[]|~#" else ch for ch in text)


@dataclass
class Voice:
    """One Analyse-tab voice: its profile and the lock that keeps two analyses from mixing its clips."""

    profile: VoiceProfile
    lock: threading.Lock = field(default_factory=threading.Lock)


class VoiceBook:
    """The Analyse tab's voices: ``(scope, name, layout)`` -> :class:`Voice`, least recently used forgotten
    first beyond ``max_voices`` or beyond ``max_total`` clips in all (each voice keeps its latest
    ``max_clips``). ``scope`` is whose voices they are (a login, an annotator or a browser session, see
    :func:`serdemo.uikit.voice_scope`); ``layout`` the model's statistics (a profile never crosses models)."""

    def __init__(self, max_voices: int = MAX_VOICES, max_clips: int = VOICE_CLIPS,
                 max_total: int = MAX_VOICE_CLIPS_TOTAL):
        self.max_voices, self.max_clips, self.max_total = max_voices, max_clips, max_total
        self._voices: OrderedDict[tuple[str, str, str], Voice] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._voices)

    def get(self, scope: str, name: str, layout: str) -> Voice:
        """The voice (created empty when new), now the most recently used."""
        key = (scope, name, layout)
        with self._lock:
            voice = self._voices.get(key)
            if voice is None:
                profile = VoiceProfile(name)
                profile.MAX_CLIPS = self.max_clips
                voice = self._voices[key] = Voice(profile)
            self._voices.move_to_end(key)
            self._trim(keep=key)
            return voice

    def clips(self, scope: str, name: str) -> int:
        """Clips held under ``name`` in ``scope`` (the most of its models' profiles)."""
        with self._lock:
            return max((v.profile.n_clips for (s, n, _), v in self._voices.items() if (s, n) == (scope, name)),
                       default=0)

    def forget(self, scope: str, name: str) -> int:
        """Drop ``name``'s profiles in ``scope`` (every model's); returns the clips they held (the most of them)."""
        with self._lock:
            keys = [k for k in self._voices if k[:2] == (scope, name)]
            held = max((self._voices[k].profile.n_clips for k in keys), default=0)
            for k in keys:
                del self._voices[k]
            return held

    def trim(self) -> None:
        """Forget the least recently used voices while over the bounds (after a voice grew)."""
        with self._lock:
            self._trim()

    def _trim(self, keep=None) -> None:
        total = sum(v.profile.n_clips for v in self._voices.values())
        for key in list(self._voices):
            if len(self._voices) <= self.max_voices and total <= self.max_total:
                break
            if key == keep:
                continue
            total -= self._voices.pop(key).profile.n_clips


UNUSUAL_NOTE = ("This clip sounds unlike the recordings the model was trained on (another language, microphone or "
                "room?): trust its probabilities less than the figures above suggest.")


def unusual_note(pred) -> str:
    """The out-of-domain flag in words (empty when the clip looks like the training data or is not measured)."""
    return UNUSUAL_NOTE if getattr(pred, "unusual", False) else ""


def voice_sentence(name: str, clips: int, model: str, adapts: bool) -> str:
    """What the Analyse tab says of a result's voice."""
    if not name:
        return "Read on its own (no voice name)"
    if not adapts:
        return f"Read on its own: `{model}` does not adapt to a voice (voice '{shown_name(name)}' not used)"
    return f"Adapted to voice '{shown_name(name)}' over {clips} clip{'s' if clips != 1 else ''}"
