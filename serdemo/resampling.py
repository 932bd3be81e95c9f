"""Resampling to 16 kHz with torchaudio's windowed-sinc kernel, whole or as a stream whose output equals
resampling the whole recording (:class:`StreamResampler`); the kernel's size is bounded before it is built."""

from __future__ import annotations

import functools
import math
from fractions import Fraction

import numpy as np
import torch
import torchaudio.transforms as AT

SAMPLE_RATE = 16_000  # Hz, what every model sees
MAX_RESAMPLE_TAPS = 400_000
LOWPASS_WIDTH = 6  # zero crossings of the sinc on each side (torchaudio's default)
ROLLOFF = 0.99  # cutoff as a fraction of the lower Nyquist frequency (torchaudio's default)


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
