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
import functools
import mmap
import struct
import io
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Iterator, Union

import numpy as np
import soundfile as sf
import torch
import torchaudio.transforms as AT

SAMPLE_RATE = 16_000  # Hz, what every model sees
MIN_DURATION_S = 0.25  # shorter clips carry too little speech to classify
MAX_DURATION_S = 60.0  # default upper bound; callers may raise or lower it
MIN_SOURCE_RATE = 2_000  # Hz; below this there is no speech band left to analyse
MAX_SOURCE_RATE = 384_000  # Hz; the highest rate any common recorder produces
MAX_CHANNELS = 64
SILENCE_PEAK = 1.0 / 32768  # at or below one 16-bit step: digital silence
BYTES_PER_SAMPLE = 4  # float32, as every sample is decoded
# What one decode may produce in all (channels x rate x duration x 4 bytes), checked from the header before
# anything is read: decoding is streamed, so this bounds work (CPU time), not memory. 30 min of 96 kHz stereo
# is 1.4 GB; 60 s of 64 channels at 192 kHz would be 2.9 GB.
MAX_DECODED_BYTES = 2 * 2**30
DECODE_BLOCK_BYTES = 4 * 2**20  # interleaved float32 decoded at once (16,384 frames of 64 channels)
MONO_BLOCK_BYTES = 4 * 2**20  # mono source-rate samples gathered before each resampling step
# Memory one request may hold while decoding: a decoded block, its mono mix, the resampler's pending input
# and its output (torch's polyphase intermediate included), with room to spare; load_audio adds its result.
# Several requests at once add up to this times the app's concurrency (SERDEMO_CONCURRENCY, 2 per event).
REQUEST_BUDGET_BYTES = 32 * 2**20
# Resampling cost bound: torchaudio's polyphase sinc kernel has up x (2 * width + down) taps for a reduced
# up/down ratio, and every output sample costs 2 * width + down of them. 11,025 Hz, the costliest common
# rate, needs 291,200; 4,001 Hz would need 64 million (1.7 GB, 5 s). Ratios over the bound are approximated.
MAX_RESAMPLE_TAPS = 400_000
LOWPASS_WIDTH = 6  # zero crossings of the sinc on each side (torchaudio's default)
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency (torchaudio's default)

AudioSource = Union[str, os.PathLike, bytes, bytearray, tuple, np.ndarray]
UNKNOWN_FRAMES = 2**62  # libsndfile reports SF_COUNT_MAX (2**63 - 1) for a length it does not know


MICROPHONE = "microphone"  # the source name for audio recorded in the browser (anything else: a file)


class AudioError(ValueError):
    """Audio that cannot be analysed; the message says why and what to do.

    ``str()`` words it for a file (or whatever was given); :meth:`for_source` words the same problem
    for a microphone recording, where the advice differs (check the microphone, record again).
    """

    def __init__(self, message: str, microphone: str | None = None):
        super().__init__(message)
        self.microphone = microphone or message

    def for_source(self, source: str | None) -> str:
        """The message for audio that came from ``source`` (:data:`MICROPHONE` or an upload)."""
        return self.microphone if source == MICROPHONE else str(self)


def problem(text: str, label: str, upload: str = "", record: str = "") -> AudioError:
    """An :class:`AudioError` for ``text``, where ``{what}`` names the audio: about ``label`` with the
    ``upload`` advice, and about "the recording" with the ``record`` advice (default: the same)."""

    def sentence(what: str, advice: str) -> str:
        t = text.replace("{what}", what)
        return f"{t[:1].upper()}{t[1:]} {advice}".strip()

    return AudioError(sentence(label, upload), sentence("the recording", record or upload))


def _reason(exc: Exception) -> str:
    """What the decoder said, as ' (reason)', without the file's path (soundfile puts it in str(exc))."""
    text = str(getattr(exc, "error_string", "") or "").strip().rstrip(".")
    return f" ({text})" if text else ""


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


# ------------------------------------------------------------------------------ resampling
def kernel_taps(ratio: Fraction) -> int:
    """Taps of the sinc kernel that resampling by ``ratio`` (= new rate / old rate, reduced) builds."""
    up, down = ratio.numerator, ratio.denominator
    width = math.ceil(LOWPASS_WIDTH * down / (ROLLOFF * min(up, down)))
    return up * (2 * width + down)


def resample_ratio(rate: int, target_rate: int = SAMPLE_RATE) -> Fraction:
    """The ``target_rate / rate`` ratio :func:`resample` applies.

    Exact when its kernel fits :data:`MAX_RESAMPLE_TAPS` (every common rate: 8k, 11.025k, 22.05k, 24k,
    32k, 44.1k, 48k, 96k, ...). Otherwise the closest fraction whose kernel fits: the audio is read as if
    recorded at a rate under 0.1% away, a pitch and tempo change far below what anyone hears (VTLP itself
    warps by up to 10%).
    """
    exact = ratio = Fraction(target_rate, rate)
    while kernel_taps(ratio) > MAX_RESAMPLE_TAPS:  # shrink the denominator until the kernel fits
        ratio = exact.limit_denominator(min(ratio.denominator - 1, int(ratio.denominator * 0.95)))
        ratio = max(ratio, Fraction(1, ratio.denominator))  # never resample to nothing
    return ratio


def resample(wave: np.ndarray, rate: int, target_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Band-limited resampling (torchaudio's windowed sinc) of a mono float32 waveform, at bounded cost.

    The ratio comes from :func:`resample_ratio`; ``(samples,)`` -> ``(ceil(samples * ratio),)``.
    """
    if rate == target_rate:
        return wave
    out = _resampler(resample_ratio(rate, target_rate))(torch.from_numpy(np.ascontiguousarray(wave)))
    return out.numpy().astype(np.float32, copy=False)


@functools.lru_cache(maxsize=16)  # at most 16 x 1.6 MB of float32 kernels
def _resampler(ratio: Fraction) -> AT.Resample:
    """torchaudio's resampler for ``ratio`` with its kernel built once (same output as its functional form)."""
    return AT.Resample(ratio.denominator, ratio.numerator, lowpass_filter_width=LOWPASS_WIDTH, rolloff=ROLLOFF,
                       dtype=torch.float32)


class StreamResampler:
    """Resampling to ``target_rate`` of a stream that arrives in pieces of any size (file blocks,
    microphone chunks): the concatenated output equals :func:`resample` of the whole stream.

    Each piece is resampled with ``context`` input samples of look-back and look-ahead, starting on a
    whole phase of the polyphase filter (a multiple of ``down`` input samples), so no piece edge is
    audible; the last ``context`` samples wait for the next :meth:`push` or for :meth:`flush`.
    """

    def __init__(self, rate: int, target_rate: int = SAMPLE_RATE):
        self.rate, self.target_rate = int(rate), int(target_rate)
        ratio = resample_ratio(self.rate, self.target_rate)
        self.up, self.down = ratio.numerator, ratio.denominator
        width = math.ceil(LOWPASS_WIDTH * self.down / (ROLLOFF * min(self.up, self.down)))
        self.context = -(-(width + self.down) // self.down) * self.down  # input samples, phase-aligned
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # input index of buf[0]
        self.done = 0  # input samples already turned into output

    @property
    def passthrough(self) -> bool:
        return self.rate == self.target_rate

    def output_length(self, n_in: int) -> int:
        return -(-n_in * self.up // self.down)

    def push(self, raw: np.ndarray) -> np.ndarray:
        """Mono float32 input -> the output it completes (possibly empty)."""
        if self.passthrough:
            return raw
        self.buf = np.concatenate([self.buf, raw]) if len(self.buf) else np.asarray(raw, np.float32)
        stop = (self.buf_start + len(self.buf) - self.context) // self.down * self.down
        if stop <= self.done:
            return np.zeros(0, np.float32)
        out = self.span(self.buf, self.buf_start, self.done, stop, final=False)
        self.done = stop
        keep = max(0, (stop - self.context) // self.down * self.down)
        self.buf, self.buf_start = self.buf[keep - self.buf_start:].copy(), keep
        return out

    def flush(self) -> np.ndarray:
        """The output still held back at the end of the stream."""
        end = self.buf_start + len(self.buf)
        if self.passthrough or self.done >= end:
            return np.zeros(0, np.float32)
        out = self.span(self.buf, self.buf_start, self.done, end, final=True)
        self.done = end
        self.buf = np.zeros(0, np.float32)
        self.buf_start = end
        return out

    def span(self, buf: np.ndarray, buf_start: int, a: int, b: int, final: bool) -> np.ndarray:
        """Output for input samples ``[a, b)`` (``a`` a multiple of ``down``) from ``buf``, which starts at
        input index ``buf_start`` and holds ``context`` samples around the span (``final``: ``buf`` ends
        where the stream ends)."""
        ext_start = max(buf_start, (a - self.context) // self.down * self.down)
        ext_stop = buf_start + len(buf) if final else min(buf_start + len(buf), b + self.context)
        out = resample(np.ascontiguousarray(buf[ext_start - buf_start: ext_stop - buf_start]), self.rate,
                       self.target_rate)
        first = (a - ext_start) * self.up // self.down
        return out[first: first + self.output_length(b) - a * self.up // self.down]


# ------------------------------------------------------------------------------ headers checked against the data
class PatchedFile(io.RawIOBase):
    """A file (a path, or bytes) as libsndfile's virtual IO reads it, with some byte ranges replaced:
    ``patches`` maps a byte offset to the bytes that stand there instead (a corrected length in a header).
    The file itself is never written."""

    def __init__(self, source, patches: dict[int, bytes]):
        super().__init__()
        self._file = open(source, "rb") if isinstance(source, (str, os.PathLike)) else io.BytesIO(bytes(source))
        self._file.seek(0, io.SEEK_END)
        self._size = self._file.tell()
        self._file.seek(0)
        self._patches = sorted((int(k), bytes(v)) for k, v in patches.items())

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def readinto(self, buffer) -> int:
        start = self._file.tell()
        data = self._file.read(len(buffer))
        if data and self._patches:
            data = bytearray(data)
            for at, replacement in self._patches:
                lo, hi = max(at, start), min(at + len(replacement), start + len(data))
                if lo < hi:
                    data[lo - start:hi - start] = replacement[lo - at:hi - at]
        n = len(data)
        memoryview(buffer).cast("B")[:n] = data
        return n

    def close(self) -> None:
        self._file.close()
        super().close()


@contextlib.contextmanager
def _raw_bytes(stream: "AudioStream"):
    """The encoded file's bytes, mapped (a path) or as given (bytes), for reading its headers."""
    if stream.data is not None:
        yield stream.data
        return
    with open(stream.path, "rb") as f:
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            yield m


def _id3v2_size(b) -> int:
    """Bytes of an ID3v2 tag at the start of ``b`` (0 without one)."""
    if len(b) >= 10 and b[:3] == b"ID3":
        size = (b[6] & 0x7F) << 21 | (b[7] & 0x7F) << 14 | (b[8] & 0x7F) << 7 | (b[9] & 0x7F)
        return 10 + size + (10 if b[5] & 0x10 else 0)
    return 0


def repair_header(stream: "AudioStream", fmt: str) -> dict[int, bytes]:
    """Check ``stream``'s header length against its data and correct ``stream.frames``: returns the byte
    patches (:class:`PatchedFile`) that make libsndfile read the counted length, or ``{}`` when the header is
    right. FLAC: a STREAMINFO length of 0 (unknown) is counted by decoding, bounded by the limits. MPEG: the
    frame headers are walked (no decoding); a Xing/Info/VBRI count that disagrees with them (0, 2, ...), or an
    estimate that does (a variable-rate file without such a frame), is replaced. Other formats whose length
    libsndfile does not know are refused. Raises :class:`AudioError`."""
    if fmt == "FLAC":
        return _repair_flac(stream)
    if fmt in ("MP3", "MPEG"):  # soundfile names libsndfile's MPEG format "MP3" (layers I-III)
        return _repair_mpeg(stream)
    if stream.frames >= UNKNOWN_FRAMES:
        raise problem("{what} does not say how long it is, and this format cannot be counted.", stream.label,
                      "Convert it to wav or flac.", "Record again.")
    return {}


def _repair_flac(stream: "AudioStream") -> dict[int, bytes]:
    with _raw_bytes(stream) as b:
        at = _id3v2_size(b)
        if b[at:at + 4] != b"fLaC" or len(b) < at + 26:
            return {}
        field = at + 4 + 4 + 10  # 'fLaC', STREAMINFO's block header, block and frame sizes
        packed = int.from_bytes(b[field:field + 8], "big")
    if packed & (2**36 - 1) and stream.frames < UNKNOWN_FRAMES:
        return {}  # the recorded length (libsndfile checks the frames against it while decoding)
    total = _count_by_decoding(stream)
    if total == 0:
        raise problem("{what} holds no audio samples: it is empty or truncated.", stream.label,
                      "Upload the complete file.", "Record again.")
    stream.frames = total
    return {field: ((packed & ~(2**36 - 1)) | total).to_bytes(8, "big")}


def _count_by_decoding(stream: "AudioStream") -> int:
    """Frames of a file whose header does not record them, counted by decoding it block by block (nothing is
    kept); refused as soon as the count passes :meth:`AudioStream.frame_limit`. libsndfile's own read is used
    without the seek after each block that ``SoundFile.read`` makes, which fails past an unknown end."""
    read = getattr(getattr(sf, "_snd", None), "sf_readf_float", None)
    ffi = getattr(sf, "_ffi", None)
    if read is None or ffi is None:  # pragma: no cover - another soundfile
        raise problem("{what} does not record its length in its header.", stream.label,
                      "Convert it again (its encoder left the length out).", "Record again.")
    limit = stream.frame_limit()
    frames = max(1, DECODE_BLOCK_BYTES // (BYTES_PER_SAMPLE * stream.channels))
    buffer = np.empty((frames, stream.channels), np.float32)
    pointer = ffi.cast("float *", buffer.ctypes.data)
    counted = 0
    try:
        with stream.soundfile() as f:
            while True:
                got = int(read(f._file, pointer, frames))
                if got <= 0:
                    break
                counted += got
                if counted > limit:
                    raise stream.too_long()
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise problem("{what} is damaged and could not be decoded" + _reason(exc) + ".", stream.label,
                      "Upload an intact copy.", "Record again.") from None
    return counted


# MPEG audio frame headers: bit rates (kbit/s) by (MPEG-1?, layer), sample rates by version bits
_MPEG_KBPS = {
    (True, 1): (0, 32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 384, 416, 448),
    (True, 2): (0, 32, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384),
    (True, 3): (0, 32, 40, 48, 56, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320),
    (False, 1): (0, 32, 48, 56, 64, 80, 96, 112, 128, 144, 160, 176, 192, 224, 256),
    (False, 2): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
    (False, 3): (0, 8, 16, 24, 32, 40, 48, 56, 64, 80, 96, 112, 128, 144, 160),
}
_MPEG_RATES = {3: (44100, 48000, 32000), 2: (22050, 24000, 16000), 0: (11025, 12000, 8000)}


def mpeg_frame(b, i: int) -> tuple[int, int, int, int] | None:
    """The MPEG audio frame header at ``b[i:]``: ``(bytes, samples per frame, sample rate, offset of a
    Xing/Info tag)``, or None where no valid header (free-format frames included) starts."""
    if i + 4 > len(b) or b[i] != 0xFF or b[i + 1] & 0xE0 != 0xE0:
        return None
    version, layer = (b[i + 1] >> 3) & 3, 4 - ((b[i + 1] >> 1) & 3)
    index, rate_index, padding = b[i + 2] >> 4, (b[i + 2] >> 2) & 3, (b[i + 2] >> 1) & 1
    if version == 1 or layer == 4 or index in (0, 15) or rate_index == 3:
        return None
    mpeg1, rate = version == 3, _MPEG_RATES[version][rate_index]
    bits = _MPEG_KBPS[(mpeg1, layer)][index] * 1000
    if layer == 1:
        size, spf = (12 * bits // rate + padding) * 4, 384
    elif layer == 2:
        size, spf = 144 * bits // rate + padding, 1152
    else:
        size, spf = (144 if mpeg1 else 72) * bits // rate + padding, 1152 if mpeg1 else 576
    mono = b[i + 3] >> 6 == 3
    side = (17 if mono else 32) if mpeg1 else (9 if mono else 17)
    return size, spf, rate, 4 + side


def _repair_mpeg(stream: "AudioStream") -> dict[int, bytes]:
    """Walk an MP3's frame headers (bounded by the limits) and replace a frame count that disagrees with them."""
    limit = stream.frame_limit()
    with _raw_bytes(stream) as b:
        i, end = _id3v2_size(b), len(b)
        frames = samples = 0
        first = info = None  # (offset, header) of the first frame; (offset of the tag, its kind) of an info frame
        while i < end:
            head = mpeg_frame(b, i)
            if head is None or i + head[0] > end:
                if b[i:i + 3] == b"TAG" or b[i:i + 8] == b"APETAGEX":
                    break
                nxt = b.find(b"\xff", i + 1)  # resynchronise on the next possible header
                if nxt < 0:
                    break
                i = nxt
                continue
            if first is None:
                first = (i, head)
                tag = bytes(b[i + head[3]:i + head[3] + 4])
                vbri = bytes(b[i + 36:i + 40]) if head[0] >= 40 + 18 else b""
                if tag in (b"Xing", b"Info") and head[0] >= head[3] + 8:
                    info = (i + head[3], "xing", struct.unpack(">I", b[i + head[3] + 4:i + head[3] + 8])[0])
                elif vbri == b"VBRI":
                    info = (i + 36, "vbri", 0)
            frames += 1
            samples += head[1]
            if samples - (first[1][1] if info else 0) > limit + 4 * head[1]:
                raise stream.too_long()
            i += head[0]
    if first is None:
        return {}
    spf = first[1][1]
    audio_frames = frames - (1 if info else 0)  # the info frame itself holds no audio
    counted = audio_frames * spf
    if stream.frames < UNKNOWN_FRAMES and abs(stream.frames - counted) <= 4 * spf:
        return {}  # the header agrees with the data (up to the encoder's delay and padding)
    offset = first[0]
    if info is not None and info[1] == "xing":
        at, _, flags = info
        if flags & 1:  # the count field is there: only the count changes (the gapless tag stays readable)
            patches = {at + 8: struct.pack(">I", audio_frames)}
        else:  # no count field: frames only (the fields after it are no longer read)
            patches = {at + 4: struct.pack(">II", 1, audio_frames)}
    elif info is not None:  # VBRI: version, delay, quality, bytes, then frames
        patches = {info[0] + 14: struct.pack(">I", audio_frames)}
    else:  # no info frame: the first frame becomes one (its side information zeroed, as decoders expect)
        side = first[1][3]
        if first[1][0] < side + 12:
            return {}
        audio_frames -= 1
        patches = {offset + 4: bytes(side - 4) + b"Xing" + struct.pack(">II", 1, audio_frames)}
    stream.patches = patches
    try:
        with stream.soundfile() as f:
            stream.frames = int(f.frames)
    except (sf.LibsndfileError, RuntimeError):
        stream.frames = audio_frames * spf
    finally:
        stream.patches = {}
    if stream.frames <= 0 or stream.frames >= UNKNOWN_FRAMES:
        stream.frames = max(1, audio_frames * spf)
    return patches


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
            raise problem("{what} is not a readable audio file" + _reason(exc) + ".", self.label,
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
            raise problem("{what} is damaged and could not be decoded" + _reason(exc) + ".", self.label,
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
