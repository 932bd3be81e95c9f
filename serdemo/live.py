"""Live microphone streams: a growing recording whose latest seconds are classified as it grows.

Every second recorded is kept, whatever the server's load; predictions may be skipped, audio may not. Gradio
keeps only the latest streamed chunk while a stream's handler runs (a chunk that arrives meanwhile replaces
the one waiting), so the page's handler must return at once: with ``background=True`` (what the page uses)
:meth:`LiveTimeline.feed` only appends the chunk and hands a due window to a classifier thread, unless this
recording's previous window is still being classified or all :data:`LIVE_CLASSIFIERS` are busy (that window
is skipped); a finished window is returned by a later call.

A live recording is one voice: with a model that adapts to voices, each classified window with speech joins
the session's :class:`~serdemo.voice.VoiceProfile` (the latest :data:`LIVE_VOICE_WINDOWS` of them, so memory
stays bounded) and its probabilities are read relative to the voice heard so far, itself included
(:attr:`Window.voice_clips` says over how many windows).

Places are bounded for a public server (issue 29 item 5): :data:`MAX_LIVE_SESSIONS` recordings at once, at
most :data:`MAX_LIVE_PER_USER` per login (or page) and :data:`MAX_LIVE_PER_ADDRESS` per client address; a
recording is a microphone's, so its sound must arrive about as fast as it is spoken: one that falls
:data:`LIVE_IDLE_S` behind real time (a chunk now and then, to hold the place) is closed and its place freed,
and one that runs more than :data:`LIVE_AHEAD_S` ahead (30 min of audio in 9 s) is refused and its audio let
go. :func:`start_watcher` checks the open recordings every :data:`WATCH_EVERY_S`.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from serdemo.envsettings import env_number
from serdemo.audio import (MIN_DURATION_S, SAMPLE_RATE, SILENCE_PEAK, AudioError, StreamResampler, channels_of,
                           check_rate_channels, downmix, to_float)
from serdemo.inference import Predictor
from serdemo.timeline import Window, classify, max_timeline_s, window_from
from serdemo.vad import MIN_TOTAL_SPEECH_S
from serdemo.voice import VoiceProfile

LIVE_WINDOW_S = 3.0  # the live view classifies the latest this-many seconds
MAX_CHUNK_S = 5.0  # the browser streams 0.5 s at a time; a longer chunk is not a microphone's
MAX_FLOAT_PEAK = 4.0  # float samples lie in [-1, 1]; a little overshoot (12 dB) is tolerated, 1e9 is not audio
MAX_LIVE_SESSIONS = 6  # live recordings held at once (all users); the next one is refused with a message
MAX_LIVE_PER_USER = 2  # ... by one login (without logins: one page session)
MAX_LIVE_PER_ADDRESS = 3  # ... from one client address (SERDEMO_LIVE_PER_ADDRESS: more behind a shared NAT)
LIVE_IDLE_S = 15.0  # a recording whose sound stops arriving (or falls this far behind real time) is closed
LIVE_AHEAD_S = 15.0  # sound a recording may run ahead of real time (a burst after a network stall) ...
LIVE_PACE = 1.25  # ... beyond which it may arrive at most this many times faster than it is spoken
WATCH_EVERY_S = 2.0  # how often the watcher (start_watcher) releases recordings that went idle
LIVE_EXTRA_S = 120.0  # a recording lives at most its length limit plus this (an API client that never stops)
LIVE_CLASSIFIERS = 2  # live windows classified at once (all recordings); a window due while none is free is skipped
LIVE_VOICE_WINDOWS = 300  # windows a live recording's voice profile keeps (the latest; 3.6 MB for the default probe)

_sessions: "weakref.WeakSet[LiveTimeline]" = weakref.WeakSet()
_sessions_lock = threading.Lock()
_classifier_slots = threading.BoundedSemaphore(LIVE_CLASSIFIERS)
_classifiers: ThreadPoolExecutor | None = None
_watcher: threading.Thread | None = None
log = logging.getLogger(__name__)


def per_user_limit() -> int:
    return env_number("SERDEMO_LIVE_PER_USER", MAX_LIVE_PER_USER, low=1, kind=int)


def per_address_limit() -> int:
    return env_number("SERDEMO_LIVE_PER_ADDRESS", MAX_LIVE_PER_ADDRESS, low=1, kind=int)


def _classifier_pool() -> ThreadPoolExecutor:
    global _classifiers
    with _sessions_lock:
        if _classifiers is None:
            _classifiers = ThreadPoolExecutor(LIVE_CLASSIFIERS, thread_name_prefix="serdemo-live")
        return _classifiers


def live_sessions(now: float | None = None, owner: str | None = None, address: str | None = None) -> int:
    """Live recordings open now (not closed, not idle past their limit); only ``owner``'s, or only those from
    ``address``, when given."""
    with _sessions_lock:
        return sum(1 for s in list(_sessions) if s.open_at(now) and (owner is None or s.owner == owner)
                   and (address is None or s.address == address))


def places_message(max_sessions: int | None = None) -> str | None:
    """What the page says before a recording starts when every live place is taken; None when one is free."""
    max_sessions = MAX_LIVE_SESSIONS if max_sessions is None else max_sessions
    if live_sessions() >= max_sessions:
        return (f"All {max_sessions} live places on the server are taken: try again in a minute, or upload a "
                "recording instead.")
    return None


def start_watcher(every_s: float = WATCH_EVERY_S) -> None:
    """Start (once) the thread that releases idle live recordings every ``every_s``, so an abandoned or
    starved stream frees its place within seconds, not at the next housekeeping sweep. The app starts it."""
    global _watcher
    with _sessions_lock:
        if _watcher is not None and _watcher.is_alive():
            return

        def watch():
            while True:
                time.sleep(every_s)
                try:
                    release_idle()
                except Exception:  # noqa: BLE001 - the watcher must outlive one bad check
                    log.exception("releasing idle live recordings failed")
        _watcher = threading.Thread(target=watch, name="serdemo-live-watch", daemon=True)
        _watcher.start()


def release_idle(now: float | None = None) -> int:
    """Close every live recording idle past its limit or past its lifetime, releasing its audio; returns how
    many. The housekeeping sweeper calls it, so a client that stops sending does not pin memory."""
    released = 0
    with _sessions_lock:
        sessions = list(_sessions)
    for session in sessions:
        if not session.released and not session.open_at(now):
            session.release("idle")
            released += 1
    return released


class LiveTimeline:
    """A growing recording from a microphone stream: every ``every_s`` of new audio the latest
    ``window_s`` are classified (one :meth:`Predictor.predict_batch` call) and join the timeline.

    ``feed(rate, chunk)`` takes what Gradio's streaming audio delivers (int16 or float, any rate,
    mono or multichannel) and returns the new :class:`Window` or None; chunks are resampled as one
    stream (:class:`StreamResampler`), so their joins leave no clicks. The recording stays in memory
    (at 16 kHz, float32: 3.8 MB a minute) up to ``max_duration_s``; :meth:`finish` returns it whole.
    With ``background`` the windows are classified beside the stream (see the module's docstring):
    ``feed`` never waits for the model, ``skipped`` counts the windows it left out. With ``adapt_voice``
    (and a model that adapts) the windows adapt to the voice so far (see the module's docstring).
    """

    def __init__(self, predictor: Predictor, window_s: float = LIVE_WINDOW_S, every_s: float = 1.0,
                 max_duration_s: float | None = None, idle_s: float = LIVE_IDLE_S,
                 max_sessions: int | None = None, clock=time.monotonic, background: bool = False,
                 adapt_voice: bool = True, owner: str | None = None, address: str | None = None,
                 per_user: int | None = None, per_address: int | None = None):
        self.clock, self.idle_s = clock, float(idle_s)
        self.created_at = self.last_fed_at = clock()
        self.released: str | None = None  # why the recording was closed ("idle", "lifetime", ...), None while open
        self.on_release = None  # called once when the recording is released (the page ends its stream there)
        self.owner, self.address = owner or None, address or None
        self.fed_s = 0.0  # seconds of sound received (pacing: about real time, see open_at and feed)
        with _sessions_lock:  # the places are counted and taken at once
            open_now = [s for s in list(_sessions) if s.open_at(self.created_at)]
            mine = sum(1 for s in open_now if self.owner is not None and s.owner == self.owner)
            here = sum(1 for s in open_now if self.address is not None and s.address == self.address)
            per_user = per_user_limit() if per_user is None else per_user
            per_address = per_address_limit() if per_address is None else per_address
            max_sessions = MAX_LIVE_SESSIONS if max_sessions is None else max_sessions
            if mine >= per_user:
                raise AudioError(f"You have {mine} live recording{'s' if mine != 1 else ''} open already (at most "
                                 f"{per_user} at once): stop one, or wait {self.idle_s:.0f} s for an abandoned one "
                                 "to close.")
            if here >= per_address:
                raise AudioError(f"{here} live recordings are open from your network already (at most {per_address}"
                                 " at once): stop one, or upload a recording instead.")
            if len(open_now) >= max_sessions:
                raise AudioError(f"All {max_sessions} live places on the server are taken: try again in a minute, "
                                 "or upload a recording instead.")
            _sessions.add(self)
        self.predictor = predictor
        self.window_s, self.every_s = window_s, every_s
        self.max_duration_s = max_timeline_s() if max_duration_s is None else max_duration_s
        self.parts: list[np.ndarray] = []
        self.samples = 0
        self.windows: list[Window] = []
        self.heard_s = 0.0  # seconds of input so far (the cadence), and when the last window was taken
        self.last_at_s = 0.0
        self.resampler: StreamResampler | None = None
        self.truncated = False
        self.lifetime_s = self.max_duration_s + LIVE_EXTRA_S
        self.background, self.skipped = background, 0
        self._classifying: Future | None = None
        self._ready: list[Window] = []  # classified beside the stream, not yet returned by feed
        self._windows_lock = threading.Lock()
        self.adapt_voice = bool(adapt_voice) and bool(getattr(predictor, "adapts", False))
        self.voice = VoiceProfile("live")  # the windows with speech so far (at most LIVE_VOICE_WINDOWS)
        self.voice.MAX_CLIPS = LIVE_VOICE_WINDOWS
        self._voice_lock = threading.Lock()  # the profile and the readapting of a window against it

    def open_at(self, now: float | None = None) -> bool:
        """Whether the recording still takes chunks at ``now``: not released, within its lifetime, and not idle:
        a chunk came within ``idle_s`` and the sound received is at most ``idle_s`` behind real time (a chunk
        now and then does not hold a place)."""
        now = self.clock() if now is None else now
        return (self.released is None and now - self.last_fed_at <= self.idle_s
                and self.behind_s(now) <= self.idle_s and now - self.created_at <= self.lifetime_s)

    def behind_s(self, now: float | None = None) -> float:
        """How far the sound received lags real time since the recording started (the first chunk counts)."""
        now = self.clock() if now is None else now
        return (now - self.created_at) - self.fed_s

    def release(self, why: str) -> None:
        """Close the recording and free its audio; later chunks are answered with a message."""
        if self.released is None or why != "session":
            self.released = why
        self.parts, self.samples, self.resampler = [], 0, None
        with self._voice_lock:
            self.voice = VoiceProfile("live")
        with _sessions_lock:
            _sessions.discard(self)
        hook, self.on_release = self.on_release, None
        if hook is not None:
            try:
                hook()
            except Exception:  # noqa: BLE001 - releasing the audio must not fail on the page's side
                log.exception("ending a released live recording's stream failed")

    def _check_open(self) -> None:
        now = self.clock()
        if self.released is None and not self.open_at(now):
            self.release("lifetime" if now - self.created_at > self.lifetime_s else
                         "idle" if now - self.last_fed_at > self.idle_s else "behind")
        if self.released == "idle":
            raise AudioError(f"This live recording got no sound for over {self.idle_s:.0f} s and was closed: "
                             "stop and record again.")
        if self.released == "behind":
            raise AudioError(f"This live recording's sound fell over {self.idle_s:.0f} s behind real time (a "
                             "microphone streams all the time) and it was closed: stop and record again.")
        if self.released == "ahead":
            raise AudioError("This live recording was closed: its sound arrived much faster than it is spoken. "
                             "Stop and record again, or upload the file instead.")
        if self.released is not None:
            raise AudioError(f"This live recording ran past its limit of {self.lifetime_s / 60:.0f} min and was "
                             "closed: stop and record again.")
        self.last_fed_at = now

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE

    def finish(self) -> np.ndarray:
        """The whole recording at 16 kHz, with what the resampler still held back (the stream ended). A
        finished recording no longer counts against :data:`MAX_LIVE_SESSIONS`."""
        with _sessions_lock:
            _sessions.discard(self)
        if self.resampler is not None:
            self._append(self.resampler.flush())
        return self.recording()

    def _append(self, wave: np.ndarray) -> None:
        room = int(self.max_duration_s * SAMPLE_RATE) - self.samples
        if len(wave) > room:
            self.truncated = True
            wave = wave[:max(0, room)]
        if len(wave):
            self.parts.append(wave.astype(np.float32, copy=False))
            self.samples += len(wave)

    def recording(self) -> np.ndarray:
        if len(self.parts) > 1:
            self.parts = [np.concatenate(self.parts)]
        return self.parts[0] if self.parts else np.zeros(0, np.float32)

    def _tail(self, n: int) -> np.ndarray:
        """The latest ``n`` samples, joining only the chunks they span (not the whole recording)."""
        picked, have = [], 0
        for part in reversed(self.parts):
            picked.append(part)
            have += len(part)
            if have >= n:
                break
        return np.concatenate(picked[::-1])[-n:]

    def feed(self, rate: int, chunk: np.ndarray) -> Window | None:
        self._check_open()
        try:
            chunk = np.asarray(chunk)
        except (TypeError, ValueError):
            chunk = np.asarray([], dtype=object)
        if chunk.dtype.kind not in "biuf" or chunk.ndim > 2:
            raise AudioError("The microphone sent something that is not audio samples: stop and record again.")
        if chunk.size == 0:
            return None
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            raise AudioError(f"The microphone's sample rate {rate!r} is not a number: stop and record again.") from None
        check_rate_channels(rate, channels_of(chunk), "the recording")
        frames = chunk.shape[0] if chunk.ndim == 1 else max(chunk.shape)
        if frames > MAX_CHUNK_S * rate:  # checked before anything is converted or kept
            raise AudioError(f"A streamed piece of {frames / rate:.1f} s arrived; a microphone sends at most "
                             f"{MAX_CHUNK_S:.0f} s at a time. Stop and record again, or upload the file instead.")
        elapsed = self.clock() - self.created_at
        if self.fed_s + frames / rate > LIVE_AHEAD_S + LIVE_PACE * elapsed:  # faster than anyone speaks
            sent = self.fed_s + frames / rate
            self.release("ahead")
            raise AudioError(f"The microphone sent {sent:.0f} s of sound in {elapsed:.0f} s; a microphone sends it as "
                             "it is spoken. This live recording was closed and its audio let go: stop and record "
                             "again, or upload the file instead.")
        self.fed_s += frames / rate
        if self.resampler is None:
            self.resampler = StreamResampler(rate)
        elif rate != self.resampler.rate:
            raise AudioError(f"The microphone switched from {self.resampler.rate} Hz to {rate} Hz mid-recording: "
                             "stop and record again.")
        if self.truncated:
            return None
        raw = downmix(to_float(chunk))
        if not np.isfinite(raw).all():
            raise AudioError(f"The microphone sent {int((~np.isfinite(raw)).sum())} NaN or infinite samples: the "
                             "piece is corrupt. Stop and record again.")
        peak = float(np.abs(raw).max()) if raw.size else 0.0
        if chunk.dtype.kind == "f" and peak > MAX_FLOAT_PEAK:
            raise AudioError(f"The microphone sent float samples up to {peak:.1e}; a microphone's lie between -1 and "
                             "1, so this is not audio. Stop and record again.")
        self.heard_s += len(raw) / rate
        self._append(self.resampler.push(raw))
        if self.heard_s - self.last_at_s < self.every_s - 1e-6 or self.samples < MIN_DURATION_S * SAMPLE_RATE:
            return self._take_ready()
        self.last_at_s = self.heard_s
        start = max(0, self.samples - int(self.window_s * SAMPLE_RATE))
        piece = self._tail(self.samples - start)
        if float(np.abs(piece).max()) <= SILENCE_PEAK:
            return self._take_ready()
        span = (start / SAMPLE_RATE, self.samples / SAMPLE_RATE)
        if not self.background:
            return self._classify(piece, span)
        busy = self._classifying is not None and not self._classifying.done()
        if busy or not _classifier_slots.acquire(blocking=False):  # this window's prediction is skipped
            self.skipped += 1
            return self._take_ready()
        try:
            self._classifying = _classifier_pool().submit(self._classify_beside, piece, span)
        except RuntimeError:  # the interpreter is shutting down
            _classifier_slots.release()
            self.skipped += 1
        return self._take_ready()

    @property
    def voice_windows(self) -> int:
        """How many windows the session's voice profile holds now."""
        return self.voice.n_clips

    def _adapt(self, pred, speech_s: float) -> None:
        """A window with speech joins the voice so far; the prediction is then read relative to that voice
        (a window without speech is read relative to it, without joining). In place."""
        if not self.adapt_voice or getattr(pred, "statistics", None) is None:
            return
        with self._voice_lock:
            if speech_s >= MIN_TOTAL_SPEECH_S:
                self.voice.add(pred.statistics[None], self.predictor.voice_layout, key=pred.extra.get("digest"))
            if self.voice.n_clips:
                self.predictor.readapt([pred], self.voice)

    def _classify(self, piece: np.ndarray, span: tuple[float, float]) -> Window:
        pred = classify(self.predictor, [piece])[0]
        win = window_from(pred, span[0], span[1], -1)
        self._adapt(pred, win.speech_s)
        win.probabilities = {**pred.probabilities}  # the emotion head's, read relative to the voice so far
        win.voice_clips = int(getattr(pred, "voice_clips", 0) or 0)
        with self._windows_lock:
            self.windows.append(win)
        return win

    def _classify_beside(self, piece: np.ndarray, span: tuple[float, float]) -> None:
        """A classifier thread's job: the window joins the timeline and waits for the next ``feed`` to return it."""
        try:
            win = self._classify(piece, span)
            with self._windows_lock:
                self._ready.append(win)
        except Exception:  # noqa: BLE001 - a failed prediction is a skipped one; the audio is kept regardless
            self.skipped += 1
            log.exception("a live window could not be classified")
        finally:
            _classifier_slots.release()

    def _take_ready(self) -> Window | None:
        """The newest window classified beside the stream since the last call, or None."""
        with self._windows_lock:
            ready, self._ready = self._ready, []
        return ready[-1] if ready else None

    def has_speech(self, win: Window) -> bool:
        return win.speech_s >= MIN_TOTAL_SPEECH_S

