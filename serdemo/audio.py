"""Decoding and validation of speech audio.

Everything that enters the models passes through :func:`load_audio`, which returns a mono float32
waveform at :data:`SAMPLE_RATE` or raises :class:`AudioError` with a message a person can act on.
Decoding uses ``soundfile`` (libsndfile): wav, flac, ogg/vorbis, opus and mp3 where libsndfile has it.
"""

from __future__ import annotations

import functools
import io
import math
import os
from fractions import Fraction
from pathlib import Path
from typing import Union

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
# Resampling cost bound: torchaudio's polyphase sinc kernel has up x (2 * width + down) taps for a reduced
# up/down ratio, and every output sample costs 2 * width + down of them. 11,025 Hz, the costliest common
# rate, needs 291,200; 4,001 Hz would need 64 million (1.7 GB, 5 s). Ratios over the bound are approximated.
MAX_RESAMPLE_TAPS = 400_000
LOWPASS_WIDTH = 6  # zero crossings of the sinc on each side (torchaudio's default)
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency (torchaudio's default)

AudioSource = Union[str, os.PathLike, bytes, bytearray, tuple, np.ndarray]


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


def _fail(problem: str, label: str, upload: str = "", record: str = "") -> AudioError:
    """An :class:`AudioError` for ``problem``, where ``{what}`` names the audio: about ``label`` with the
    ``upload`` advice, and about "the recording" with the ``record`` advice (default: the same)."""

    def sentence(what: str, advice: str) -> str:
        text = problem.replace("{what}", what)
        return f"{text[:1].upper()}{text[1:]} {advice}".strip()

    return AudioError(sentence(label, upload), sentence("the recording", record or upload))


def _reason(exc: Exception) -> str:
    """What the decoder said, as ' (reason)', without the file's path (soundfile puts it in str(exc))."""
    text = str(getattr(exc, "error_string", "") or "").strip().rstrip(".")
    return f" ({text})" if text else ""


def _describe(source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return f"'{Path(source).name}'"
    if isinstance(source, (bytes, bytearray)):
        return f"the uploaded data ({len(source)} bytes)"
    return "the recording"


def _open_info(source, label: str):
    try:
        return sf.info(source)
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise _fail("{what} is not a readable audio file" + _reason(exc) + ".", label,
                    "Upload wav, flac, ogg or mp3.", "Record again, or upload a wav, flac, ogg or mp3 file.") from None


def _check_file(path: Path, label: str) -> None:
    if not path.exists():
        raise _fail("{what} does not exist.", label, "Upload it again.", "Record again.")
    if path.is_dir():
        raise AudioError(f"{label} is a folder, not an audio file.")
    if path.stat().st_size == 0:
        raise _fail("{what} is empty (0 bytes).", label, "The upload did not complete: upload it again.",
                    "Nothing was recorded: record again.")


def decode(source, max_duration_s: float = MAX_DURATION_S) -> tuple[np.ndarray, int]:
    """Decode a path or encoded bytes to ``(samples, channels)`` float32 and its sample rate.

    The header is read first, so a file that declares more than ``max_duration_s`` is refused
    before any of it is decoded.
    """
    label = _describe(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        _check_file(path, label)
        opener = lambda: str(path)  # noqa: E731
    else:
        data = bytes(source)
        if not data:
            raise AudioError("The uploaded data is empty (0 bytes): the upload did not complete.")
        opener = lambda: io.BytesIO(data)  # noqa: E731
    info = _open_info(opener(), label)
    if info.frames <= 0:
        raise _fail("{what} holds no audio samples: it is empty or its header is truncated.", label,
                    "Upload the complete file.", "Record again.")
    _check_rate_channels(info.samplerate, info.channels, label)
    _check_duration(info.frames / info.samplerate, label, max_duration_s)
    try:
        samples, rate = sf.read(opener(), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise _fail("{what} is damaged and could not be decoded" + _reason(exc) + ".", label,
                    "Upload an intact copy.", "Record again.") from None
    if samples.shape[0] == 0:
        raise _fail("{what} is truncated: its header promises audio but no samples follow.", label,
                    "Upload the complete file.", "Record again.")
    return samples, int(rate)


def _check_rate_channels(rate: int, channels: int, label: str) -> None:
    if not MIN_SOURCE_RATE <= rate <= MAX_SOURCE_RATE:
        raise _fail(f"{{what}} has a sample rate of {rate} Hz; supported rates are "
                    f"{MIN_SOURCE_RATE}–{MAX_SOURCE_RATE} Hz.", label, "Convert it to a common rate such as 16 kHz.")
    if not 1 <= channels <= MAX_CHANNELS:
        raise _fail(f"{{what}} has {channels} channels; at most {MAX_CHANNELS} are supported.", label,
                    "Mix it down to mono or stereo.")


def _check_duration(duration_s: float, label: str, max_duration_s: float) -> None:
    if duration_s > max_duration_s * 1.01:
        raise _fail(f"{{what}} lasts {duration_s:.1f} s; the limit is {max_duration_s:.0f} s.", label,
                    "Trim it to the part you want analysed.", "Record a shorter clip.")


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


def downmix(samples: np.ndarray) -> np.ndarray:
    """``(samples,)`` or ``(samples, channels)`` -> mono ``(samples,)`` by averaging channels.

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
    return samples.mean(axis=1, dtype=np.float64).astype(np.float32)


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


def validate(wave: np.ndarray, rate: int, label: str = "the recording",
             min_duration_s: float = MIN_DURATION_S, max_duration_s: float = MAX_DURATION_S) -> None:
    """Raise :class:`AudioError` for a waveform no model should see."""
    duration_s = wave.shape[0] / rate
    if duration_s < min_duration_s:
        raise _fail(f"{{what}} is {duration_s * 1000:.0f} ms long; at least {min_duration_s * 1000:.0f} ms of "
                    "speech is needed.", label, "Upload a longer clip.", "Record a longer clip.")
    _check_duration(duration_s, label, max_duration_s)
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise _fail(f"{{what}} contains {bad} NaN or infinite samples: it is corrupt.", label,
                    "Export it again from its source.", "Record again.")
    peak = float(np.abs(wave).max())
    if peak <= SILENCE_PEAK:
        raise _fail(f"{{what}} is digital silence (peak {peak:.1e}).", label,
                    "It holds no sound at all: upload a clip of someone speaking.",
                    "Check that the microphone is on and unmuted and that the browser may use it, "
                    "then record again.")


def load_audio(source: AudioSource, *, sample_rate: int | None = None,
               target_rate: int = SAMPLE_RATE, max_duration_s: float = MAX_DURATION_S,
               min_duration_s: float = MIN_DURATION_S) -> np.ndarray:
    """Decode, validate, downmix and resample any supported input to mono float32 at ``target_rate``.

    ``source`` is a path, encoded bytes, a ``(sample_rate, array)`` pair as Gradio delivers it
    (int16 or float, ``(samples,)`` or ``(samples, channels)``), or a bare array with
    ``sample_rate=`` given.
    Returns ``(samples,)`` float32.
    """
    if isinstance(source, tuple):
        if len(source) != 2:
            raise AudioError("Expected a (sample_rate, samples) pair for the recording.")
        rate, array = source
        if not isinstance(rate, (int, np.integer)) and isinstance(array, (int, np.integer)):
            rate, array = array, rate  # (array, rate) as librosa returns it
        label = "the recording"
    elif isinstance(source, np.ndarray):
        if sample_rate is None:
            raise AudioError("A bare sample array needs its sample_rate.")
        rate, array, label = sample_rate, source, "the recording"
    elif isinstance(source, (str, os.PathLike, bytes, bytearray)):
        array, rate = decode(source, max_duration_s=max_duration_s)
        label = _describe(source)
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
        raise AudioError(f"{label} holds no samples.")
    channels = 1 if array.ndim == 1 else min(array.shape)
    _check_rate_channels(rate, channels, label)
    wave = downmix(to_float(array))
    validate(wave, rate, label, min_duration_s, max_duration_s)
    wave = resample(wave, rate, target_rate)
    return np.ascontiguousarray(wave, dtype=np.float32)
