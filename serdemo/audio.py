"""Decoding, streaming and validation of speech audio: the one decoder.

Every waveform that enters a model passes through this module, read the same way whatever its size:
:class:`AudioStream` opens a path, encoded bytes or an in-memory array, checks its header (rate,
channels, duration and the bytes a decode would produce) before anything is decoded, and yields mono
float32 blocks at 16 kHz: the file is decoded :data:`DECODE_BLOCK_BYTES` at a time, downmixed as it is
read, and resampled with :class:`StreamResampler`, whose output equals resampling the whole recording.
:func:`load_audio` is that stream read whole (a clip); the timeline and the live microphone read it block
by block. Problems raise :class:`AudioError` with a message a person can act on (and no server path).

    stream = AudioStream("talk.flac", max_duration_s=1800)   # header checked, nothing decoded yet
    for block in stream.blocks(): ...                        # (samples,) float32 at 16 kHz
    wave = load_audio("clip.ogg")                            # (samples,) float32 at 16 kHz

A header's length is checked against the data (:func:`repair_header`): a FLAC whose STREAMINFO does not
record its length (0) is counted by decoding it, an MP3 by walking its frame headers, and where the data
disagrees with the header (an MP3's Xing/Info/VBRI frame count of 0 or 2 for a 5-s file) the decoder reads
the file through :class:`PatchedFile`, which presents the counted length instead. Counting is bounded by the
duration limit: a file is refused as soon as it is known to be longer.

Memory per request (:data:`REQUEST_BUDGET_BYTES`): one decoded block of interleaved channels, its mono
mix, the resampler's held-back context and its output block, plus the result itself for
:func:`load_audio` (60 s at 16 kHz: 3.8 MB). A 64-channel 192 kHz file costs what a mono one does.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import math
import os
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import soundfile as sf

# the decoder's parts, each in its own module; their public names stay importable from here
from serdemo.audio_errors import BYTES_PER_SAMPLE, DECODE_BLOCK_BYTES, MICROPHONE, AudioError, problem, reason  # noqa: F401
from serdemo.audio_headers import UNKNOWN_FRAMES, PatchedFile, mpeg_frame, repair_header  # noqa: F401
from serdemo.resampling import (MAX_RESAMPLE_TAPS, SAMPLE_RATE, StreamResampler, kernel_taps, resample,  # noqa: F401
                                resample_ratio)

MIN_DURATION_S = 0.25  # shorter clips carry too little speech to classify
MAX_DURATION_S = 60.0  # default upper bound; callers may raise or lower it
MIN_SOURCE_RATE = 2_000  # Hz; below this there is no speech band left to analyse
MAX_SOURCE_RATE = 384_000  # Hz; the highest rate any common recorder produces
MAX_CHANNELS = 64
SILENCE_PEAK = 1.0 / 32768  # at or below one 16-bit step: digital silence
# What one decode may produce in all (channels x rate x duration x 4 bytes), checked from the header before
# anything is read: decoding is streamed, so this bounds work (CPU time), not memory. 30 min of 96 kHz stereo
# is 1.4 GB; 60 s of 64 channels at 192 kHz would be 2.9 GB.
MAX_DECODED_BYTES = 2 * 2**30
MONO_BLOCK_BYTES = 4 * 2**20  # mono source-rate samples gathered before each resampling step
# Memory one request may hold while decoding: a decoded block, its mono mix, the resampler's pending input
# and its output (torch's polyphase intermediate included), with room to spare; load_audio adds its result.
# Several requests at once add up to this times the app's concurrency (SERDEMO_CONCURRENCY, 2 per event).
REQUEST_BUDGET_BYTES = 32 * 2**20
# Resampling cost bound: torchaudio's polyphase sinc kernel has up x (2 * width + down) taps for a reduced
# up/down ratio, and every output sample costs 2 * width + down of them. 11,025 Hz, the costliest common
# rate, needs 291,200; 4,001 Hz would need 64 million (1.7 GB, 5 s). Ratios over the bound are approximated.

AudioSource = Union[str, os.PathLike, bytes, bytearray, tuple, np.ndarray]


def describe(source) -> str:
    """How messages name ``source``: a file by its name (never its folder), else "the uploaded data"."""
    if isinstance(source, (str, os.PathLike)):
        return f"'{Path(source).name}'"
    if isinstance(source, (bytes, bytearray)):
        return f"the uploaded data ({len(source)} bytes)"
    return "the recording"


def duration_text(seconds: float) -> str:
    """``5.0 s`` under two minutes, else ``31 min 05 s``."""
    if seconds < 120:
        return f"{seconds:.1f} s"
    s = int(round(seconds))
    return f"{s // 60} min {s % 60:02d} s"


def limit_text(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 120 else f"{s // 60} min" + (f" {s % 60:02d} s" if s % 60 else "")


def check_rate_channels(rate: int, channels: int, label: str = "the recording") -> None:
    """Raise :class:`AudioError` for a sample rate or channel count outside what is supported."""
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise problem(f"{{what}} has a sample rate of {rate} Hz; supported rates are "
                      f"{MIN_SOURCE_RATE}–{MAX_SOURCE_RATE} Hz.", label, "Convert it to a common rate such as 16 kHz.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise problem(f"{{what}} has {channels} channels; at most {MAX_CHANNELS} are supported.", label,
                      "Mix it down to mono or stereo.")


def check_duration(duration_s: float, label: str, max_duration_s: float, min_duration_s: float = 0.0,
                   what_limit: str = "the limit") -> None:
    """Raise :class:`AudioError` for audio shorter than ``min_duration_s`` or longer than ``max_duration_s``."""
    if duration_s < min_duration_s:
        raise problem(f"{{what}} is {duration_s * 1000:.0f} ms long; at least {min_duration_s * 1000:.0f} ms of "
                      "speech is needed.", label, "Upload a longer clip.", "Record a longer clip.")
    if duration_s > max_duration_s * 1.01:
        limit = limit_text(max_duration_s)
        raise problem(f"{{what}} lasts {duration_text(duration_s)}; {what_limit} is {limit}.", label,
                      f"Trim it to the part you want analysed (at most {limit}).", "Record a shorter clip.")


def check_decoded_bytes(frames: int, channels: int, rate: int, label: str) -> None:
    """Refuse, from the header, a file whose decode would exceed :data:`MAX_DECODED_BYTES` in all."""
    total = int(frames) * int(channels) * BYTES_PER_SAMPLE
    if total > MAX_DECODED_BYTES:
        raise problem(f"{{what}} would decode to {total / 1e9:.1f} GB ({channels} channels × {rate} Hz × "
                      f"{duration_text(frames / rate)}); the limit is {MAX_DECODED_BYTES / 1e9:.1f} GB.", label,
                      "Mix it down to mono or stereo, or convert it to a lower sample rate such as 16 kHz.")


def to_float(array: np.ndarray) -> np.ndarray:
    """Integer PCM to float32 in [-1, 1); floats pass through as float32."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "i":
        scale = float(2 ** (8 * array.dtype.itemsize - 1))
        return (array.astype(np.float64) / scale).astype(np.float32)
    if array.dtype.kind == "u":
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array.astype(np.float64) - half) / half).astype(np.float32)
    if array.dtype.kind == "b":
        raise AudioError("The recording is boolean data, not audio samples.")
    raise AudioError(f"The recording has samples of type {array.dtype}, which is not audio.")


def channels_of(array: np.ndarray) -> int:
    """Channels of a ``(samples,)``, ``(samples, channels)`` or ``(channels, samples)`` array."""
    return 1 if array.ndim == 1 else min(array.shape)


def downmix(samples: np.ndarray) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` -> mono ``(samples,)`` float32 by averaging channels.

    A 2-D array whose first axis is short and second long is taken as ``(channels, samples)``.
    """
    if samples.ndim == 1:
        return samples
    if samples.ndim != 2:
        raise AudioError(f"The recording has shape {samples.shape}; expected (samples,) or (samples, channels).")
    if samples.shape[0] <= MAX_CHANNELS < samples.shape[1]:
        samples = samples.T
    if samples.shape[1] > MAX_CHANNELS:
        raise AudioError(f"The recording has {samples.shape[1]} channels; at most {MAX_CHANNELS} are supported.")
    if samples.shape[1] == 1:
        return samples[:, 0].astype(np.float32, copy=False)
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


def release_memory() -> None:
    """Hand freed heap back to the OS (glibc's ``malloc_trim``; a no-op elsewhere): a decode or a batch of
    differently sized windows otherwise leaves the heap fragmented and the process large."""
    global _LIBC
    if _LIBC is None:
        try:
            _LIBC = ctypes.CDLL("libc.so.6")
            _LIBC.malloc_trim  # noqa: B018 - glibc only
        except (OSError, AttributeError):
            _LIBC = False
    if _LIBC:
        _LIBC.malloc_trim(0)


_LIBC = None




# ------------------------------------------------------------------------------ the stream
class AudioStream:
    """A recording read as mono float32 blocks at ``target_rate``, whatever its rate, channels and length.

    ``source``: a path, encoded bytes, a ``(sample_rate, array)`` pair (as Gradio delivers it, int16 or
    float, ``(samples,)`` or ``(samples, channels)``; ``(array, rate)`` is recognised too), or a bare
    array with ``sample_rate`` given. The header (or the array's shape) is checked on construction:
    rate, channels, duration against ``max_duration_s`` (``what_limit`` names that limit in the message)
    and the decoded size against :data:`MAX_DECODED_BYTES`. Nothing is decoded until :meth:`blocks`,
    :meth:`read` or :meth:`span`, which decode :data:`DECODE_BLOCK_BYTES` at a time and downmix as they go.
    """

    def __init__(self, source: AudioSource, *, sample_rate: int | None = None, target_rate: int = SAMPLE_RATE,
                 max_duration_s: float = MAX_DURATION_S, min_duration_s: float = MIN_DURATION_S,
                 what_limit: str = "the limit"):
        self.target_rate = int(target_rate)
        self.max_duration_s, self.min_duration_s = float(max_duration_s), float(min_duration_s)
        self.path: Path | None = None
        self.data: bytes | None = None
        self.patches: dict[int, bytes] = {}  # byte offset -> bytes: a corrected header (:func:`repair_header`)
        self.what_limit = what_limit
        self.array: np.ndarray | None = None  # mono float32 at self.rate (in-memory sources)
        self.label, self.name = describe(source), "recording"
        if isinstance(source, (str, os.PathLike, bytes, bytearray)):
            self._open_encoded(source)
        else:
            self._open_array(source, sample_rate)
        self.duration_s = self.frames / self.rate
        check_duration(self.duration_s, self.label, self.max_duration_s, self.min_duration_s, what_limit)
        if self.path is not None or self.data is not None:
            check_decoded_bytes(self.frames, self.channels, self.rate, self.label)
        self.resampler = StreamResampler(self.rate, self.target_rate)  # its phase arithmetic (reads make their own)
        self.samples_out = self.resampler.output_length(self.frames)

    # ----------------------------------------------------------------- opening
    def _open_encoded(self, source) -> None:
        if isinstance(source, (str, os.PathLike)):
            path = Path(source)
            if not path.exists():
                raise problem("{what} does not exist.", self.label, "Upload it again.", "Record again.")
            if path.is_dir():
                raise AudioError(f"{self.label} is a folder, not an audio file.")
            if path.stat().st_size == 0:
                raise problem("{what} is empty (0 bytes).", self.label,
                              "The upload did not complete: upload it again.", "Nothing was recorded: record again.")
            self.path, self.name = path, path.name
        else:
            if not source:
                raise AudioError("The uploaded data is empty (0 bytes): the upload did not complete.")
            self.data = bytes(source)
        try:
            info = sf.info(self._opener())
        except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
            raise problem("{what} is not a readable audio file" + reason(exc) + ".", self.label,
                          "Upload wav, flac, ogg or mp3.",
                          "Record again, or upload a wav, flac, ogg or mp3 file.") from None
        if info.frames <= 0:
            raise problem("{what} holds no audio samples: it is empty or its header is truncated.", self.label,
                          "Upload the complete file.", "Record again.")
        check_rate_channels(int(info.samplerate), int(info.channels), self.label)
        self.rate, self.channels, self.frames = int(info.samplerate), int(info.channels), int(info.frames)
        # the header's length is checked against the data (counted, within the limits) before it is trusted
        self.patches = repair_header(self, str(info.format))

    def _open_array(self, source, sample_rate) -> None:
        if isinstance(source, tuple):
            if len(source) != 2:
                raise AudioError("Expected a (sample_rate, samples) pair for the recording.")
            rate, array = source
            if not isinstance(rate, (int, np.integer)) and isinstance(array, (int, np.integer)):
                rate, array = array, rate  # (array, rate) as librosa returns it
        elif isinstance(source, np.ndarray):
            if sample_rate is None:
                raise AudioError("A bare sample array needs its sample_rate.")
            rate, array = sample_rate, source
        elif source is None:
            raise AudioError("No audio was given: upload a file or record a clip first.")
        else:
            raise AudioError(f"Cannot read audio from a {type(source).__name__}.")
        try:
            rate = int(rate)
        except (TypeError, ValueError):
            raise AudioError(f"The sample rate {rate!r} is not a number.") from None
        array = np.asarray(array)
        if array.size == 0:
            raise AudioError("The recording holds no samples.", "Nothing was recorded: record again.")
        channels = channels_of(array)
        check_rate_channels(rate, channels, self.label)
        self.array = downmix(to_float(array))
        self.rate, self.channels, self.frames = rate, channels, len(self.array)

    def _opener(self):
        """What libsndfile opens: the path, the bytes, or either with its header corrected (:class:`PatchedFile`)."""
        if self.patches:
            return PatchedFile(self.path if self.path is not None else self.data, self.patches)
        return str(self.path) if self.path is not None else io.BytesIO(self.data)

    @property
    def encoded(self) -> bool:
        """Whether the source is an encoded file (a path or bytes), not an in-memory array."""
        return self.array is None

    @contextlib.contextmanager
    def soundfile(self):
        """The recording opened by libsndfile (through :meth:`_opener`); whatever was opened is closed after."""
        opened = self._opener()
        try:
            with sf.SoundFile(opened) as f:
                yield f
        finally:
            if isinstance(opened, PatchedFile):
                opened.close()

    def frame_limit(self) -> int:
        """Source frames past which the recording is refused: the duration limit (with check_duration's 1 %
        grace), and what :data:`MAX_DECODED_BYTES` allows."""
        by_bytes = MAX_DECODED_BYTES // (BYTES_PER_SAMPLE * max(1, self.channels))
        if math.isinf(self.max_duration_s):
            return by_bytes
        return min(by_bytes, int(self.max_duration_s * 1.01 * self.rate) + 1)

    def too_long(self) -> AudioError:
        """The refusal of a recording found, while counting, to pass :meth:`frame_limit`."""
        by_bytes = MAX_DECODED_BYTES // (BYTES_PER_SAMPLE * max(1, self.channels))
        if math.isinf(self.max_duration_s) or by_bytes < self.max_duration_s * self.rate:
            return problem(f"{{what}} would decode to more than {MAX_DECODED_BYTES / 1e9:.1f} GB ({self.channels} "
                           f"channels × {self.rate} Hz); the limit is {MAX_DECODED_BYTES / 1e9:.1f} GB.", self.label,
                           "Mix it down to mono or stereo, or convert it to a lower sample rate such as 16 kHz.")
        limit = limit_text(self.max_duration_s)
        return problem(f"{{what}} lasts more than {limit}; {self.what_limit} is {limit}.", self.label,
                       f"Trim it to the part you want analysed (at most {limit}).", "Record a shorter clip.")

    # ----------------------------------------------------------------- reading
    def source_blocks(self, start: int = 0, stop: int | None = None,
                      max_frames: int | None = None) -> Iterator[np.ndarray]:
        """Mono float32 at the source rate, frames ``[start, stop)``, decoded :data:`DECODE_BLOCK_BYTES` at
        a time (fewer frames the more channels; at most ``max_frames``) and downmixed as they are read."""
        stop = self.frames if stop is None else stop
        cap = max_frames or MONO_BLOCK_BYTES // BYTES_PER_SAMPLE
        if self.array is not None:
            step = max(1, cap)
            for i in range(start, min(stop, len(self.array)), step):
                yield self.array[i:min(i + step, stop)]
            return
        frames = max(1, min(cap, DECODE_BLOCK_BYTES // (BYTES_PER_SAMPLE * self.channels)))
        out = np.empty((frames, self.channels), np.float32)  # one decode buffer, reused for every block
        try:
            with self.soundfile() as f:
                if start:
                    f.seek(start)
                left = None if stop >= self.frames else stop - start  # to the end: as far as the decoder goes
                while left is None or left > 0:
                    n = frames if left is None else min(frames, left)
                    got = f.read(n, dtype="float32", always_2d=True, out=out[:n])
                    if not len(got):
                        return
                    yield downmix(got) if self.channels > 1 else got[:, 0].copy()
                    if left is not None:
                        left -= len(got)
                    if len(got) < n:
                        return
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise problem("{what} is damaged and could not be decoded" + reason(exc) + ".", self.label,
                          "Upload an intact copy.", "Record again.") from None

    def _gathered(self, blocks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
        """Mono blocks joined to at least ``size`` samples (the resampler's cost per call has a fixed part)."""
        pending, have = [], 0
        for b in blocks:
            pending.append(b)
            have += len(b)
            if have >= size:
                yield np.concatenate(pending) if len(pending) > 1 else pending[0]
                pending, have = [], 0
        if pending:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]

    def blocks(self, block_s: float | None = None) -> Iterator[np.ndarray]:
        """Mono float32 blocks at ``target_rate`` in order; their concatenation equals resampling the
        whole recording. ``block_s``: source seconds per block (default: what fits
        :data:`MONO_BLOCK_BYTES`; never more).

        Raises :class:`AudioError` for NaN or infinite samples, and for digital silence (at the end).
        """
        rs = StreamResampler(self.rate, self.target_rate)
        size = MONO_BLOCK_BYTES // BYTES_PER_SAMPLE
        if block_s is not None:
            size = min(size, max(1, int(block_s * self.rate)))
        size = max(size, 2 * rs.context, rs.down)
        size = -(-size // rs.down) * rs.down
        peak = 0.0
        for raw in self._gathered(self.source_blocks(max_frames=size), size):
            finite = np.isfinite(raw)
            if not finite.all():
                bad = int((~finite).sum())
                raise problem(f"{{what}} contains {bad} NaN or infinite samples: it is corrupt.", self.label,
                              "Export it again from its source.", "Record again.")
            if len(raw):
                peak = max(peak, float(np.abs(raw).max()))
            out = rs.push(raw)
            if len(out):
                yield out
        out = rs.flush()  # ends where the decoder ended (a compressed file's header may be a little off)
        if len(out):
            yield out
        if peak <= SILENCE_PEAK:
            raise problem(f"{{what}} is digital silence (peak {peak:.1e}).", self.label,
                          "It holds no sound at all: upload a clip of someone speaking.",
                          "Check that the microphone is on and unmuted and that the browser may use it, "
                          "then record again.")

    def read(self) -> np.ndarray:
        """The whole recording at ``target_rate``, ``(samples,)`` float32: :meth:`blocks` joined, checked
        for length (at least ``min_duration_s``)."""
        if self.array is not None:
            wave = self.array
            validate(wave, self.rate, self.label, self.min_duration_s, self.max_duration_s)
            return np.ascontiguousarray(resample(wave, self.rate, self.target_rate), dtype=np.float32)
        out = np.empty(self.samples_out + 16, np.float32)  # the header's length; grown if the decoder gives more
        n = 0
        try:
            for block in self.blocks():
                if n + len(block) > len(out):
                    out = np.concatenate([out[:n], np.empty(max(len(block), len(out) // 4), np.float32)])
                out[n:n + len(block)] = block
                n += len(block)
        finally:
            release_memory()
        if n == 0:
            raise problem("{what} is truncated: its header promises audio but no samples follow.", self.label,
                          "Upload the complete file.", "Record again.")
        check_duration(n / self.target_rate, self.label, self.max_duration_s, self.min_duration_s)
        return out[:n].copy() if n < len(out) else out

    def span(self, start_s: float, end_s: float) -> np.ndarray:
        """Samples ``[start_s, end_s)`` at ``target_rate``, read with seeking (only that part is decoded);
        equal to the same slice of :meth:`read`."""
        a = max(0, int(round(start_s * self.target_rate)))
        b = min(self.samples_out, int(round(end_s * self.target_rate)))
        if b <= a:
            return np.zeros(0, np.float32)
        rs = self.resampler
        if rs.passthrough:
            return np.concatenate(list(self.source_blocks(a, b)) or [np.zeros(0, np.float32)])
        sa = a // rs.up * rs.down  # the phase-aligned input sample at or before output sample a
        sb = min(self.frames, -(-b * rs.down // rs.up) + 1)
        lo, hi = max(0, sa - rs.context), min(self.frames, sb + rs.context)
        raw = np.concatenate(list(self.source_blocks(lo, hi)) or [np.zeros(0, np.float32)])
        out = rs.span(raw, lo, sa, sb, final=hi == self.frames)
        first = a - sa * rs.up // rs.down
        return np.ascontiguousarray(out[first: first + (b - a)])


def validate(wave: np.ndarray, rate: int, label: str = "the recording",
             min_duration_s: float = MIN_DURATION_S, max_duration_s: float = MAX_DURATION_S) -> None:
    """Raise :class:`AudioError` for an in-memory waveform no model should see."""
    check_duration(wave.shape[0] / rate, label, max_duration_s, min_duration_s)
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise problem(f"{{what}} contains {bad} NaN or infinite samples: it is corrupt.", label,
                      "Export it again from its source.", "Record again.")
    peak = float(np.abs(wave).max())
    if peak <= SILENCE_PEAK:
        raise problem(f"{{what}} is digital silence (peak {peak:.1e}).", label,
                      "It holds no sound at all: upload a clip of someone speaking.",
                      "Check that the microphone is on and unmuted and that the browser may use it, "
                      "then record again.")


def load_audio(source: AudioSource, *, sample_rate: int | None = None,
               target_rate: int = SAMPLE_RATE, max_duration_s: float = MAX_DURATION_S,
               min_duration_s: float = MIN_DURATION_S) -> np.ndarray:
    """Decode, validate, downmix and resample any supported input to mono float32 at ``target_rate``:
    :class:`AudioStream` read whole (a file is decoded in blocks, never whole).

    ``source`` is a path, encoded bytes, a ``(sample_rate, array)`` pair as Gradio delivers it
    (int16 or float, ``(samples,)`` or ``(samples, channels)``), or a bare array with
    ``sample_rate=`` given. Returns ``(samples,)`` float32.
    """
    return AudioStream(source, sample_rate=sample_rate, target_rate=target_rate, max_duration_s=max_duration_s,
                       min_duration_s=min_duration_s).read()
