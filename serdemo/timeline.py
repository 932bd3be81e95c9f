"""Emotion over time: long recordings (and live streams) as a timeline of segments.

A file is read twice in bounded blocks, never whole (memory stays flat whatever its length):

1. decode -> downmix -> resample (per block, with enough context that the result equals a
   whole-file resample) -> speech detector scores per 32 ms chunk, a min/max waveform envelope and
   the content hash of the 16 kHz samples;
2. the speech mask is cleaned and cut into segments (pauses under ``min_gap_s`` joined, pieces
   over ``max_segment_s`` split); a long segment is covered by overlapping windows of ``window_s``;
   the file is decoded again and each window, as soon as its samples have arrived, joins a batch
   for :meth:`Predictor.predict_batch` (the one forward path).

    tl = analyze("call.flac", predictor)       # Timeline: segments, windows, envelope
    tl.export("out/", "call")                   # call.csv, call.json, call.labels.txt

``python -m serdemo.timeline FILE... --out DIR`` does that for a batch of files with a progress bar, one
worker process per core (and the GPU when there is one).
Exports: CSV and JSON (start, end, label, confidence, one probability per class) and a label track
(``start<TAB>end<TAB>label``, seconds) that Audacity imports as labels and ELAN as a tier.
"""

from __future__ import annotations

import argparse
import csv
import ctypes
import hashlib
import io
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import soundfile as sf
import torch

from serdemo import audio as _audio
from serdemo.audio import (LOWPASS_WIDTH, MIN_DURATION_S, ROLLOFF, SAMPLE_RATE, SILENCE_PEAK, AudioError,
                           downmix, resample, resample_ratio, to_float)
from serdemo.inference import NoSpeechError, Prediction, Predictor
from serdemo.store import to_pcm16
from serdemo.vad import CHUNK, MIN_TOTAL_SPEECH_S, frames_from_chunks, segments as speech_runs

MAX_TIMELINE_S = 1800.0  # default upper bound (30 min); SERDEMO_MAX_TIMELINE_S overrides it
BLOCK_CHUNKS = 960  # speech-detector chunks per block: 960 x 512 samples = 30.72 s at 16 kHz
LEAD_CHUNKS = 32  # chunks (~1 s) the detector hears again before each block, to settle its LSTM
ENVELOPE_HOP = 1024  # samples per min/max point of the waveform overview (64 ms)
WINDOW_S = 4.0  # length of the windows a long segment is cut into
HOP_S = 3.0  # step between windows (1 s overlap)
SINGLE_WINDOW_S = 6.0  # a segment up to this long is classified whole, as one window
MIN_GAP_S = 0.5  # pauses shorter than this stay inside a segment
MIN_SEGMENT_S = 0.4  # shorter speech bursts are left out of the timeline
MAX_SEGMENT_S = 20.0  # longer stretches of speech are split into equal segments
BATCH_SIZE = 16  # windows per forward pass
LIVE_WINDOW_S = 3.0  # the live view classifies the latest this-many seconds
FRAME_RATE_HZ = SAMPLE_RATE / 160  # the speech mask's frame grid (10 ms)

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


def max_timeline_s() -> float:
    """The longest recording :func:`analyze` accepts: ``SERDEMO_MAX_TIMELINE_S`` or 30 minutes."""
    try:
        return float(os.environ.get("SERDEMO_MAX_TIMELINE_S", MAX_TIMELINE_S))
    except ValueError:
        return MAX_TIMELINE_S


# ---------------------------------------------------------------------------------------- results
@dataclass
class Window:
    """One classified stretch: ``probabilities`` head -> {label: p}; ``attention`` at
    ``attention_times_s`` (seconds on the recording's own timeline); ``speech_s`` detected in it."""

    start_s: float
    end_s: float
    probabilities: dict[str, dict[str, float]]
    attention: np.ndarray
    attention_times_s: np.ndarray
    speech_s: float
    segment: int = -1

    def label(self, head: str = "emotion") -> str:
        p = self.probabilities[head]
        return max(p, key=p.get)


@dataclass
class Segment:
    """A stretch of speech; its probabilities are the mean of its windows'."""

    index: int
    start_s: float
    end_s: float
    probabilities: dict[str, dict[str, float]] = field(default_factory=dict)
    windows: list[int] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    def label(self, head: str = "emotion") -> str:
        p = self.probabilities[head]
        return max(p, key=p.get)

    def confidence(self, head: str = "emotion") -> float:
        return max(self.probabilities[head].values())


@dataclass
class Timeline:
    """Emotion over time for one recording (times in seconds from its start)."""

    name: str
    duration_s: float
    classes: list[str]
    checkpoint: str
    segments: list[Segment]
    windows: list[Window]
    speech_s: list[tuple[float, float]]  # the detector's speech runs, before joining and splitting
    envelope_times_s: np.ndarray
    envelope_min: np.ndarray
    envelope_max: np.ndarray
    source_sha: str = ""  # SHA-256 of the 16 kHz 16-bit samples (what the store would name this audio)
    source_rate: int = SAMPLE_RATE
    elapsed_s: float = 0.0

    # ----------------------------------------------------------------- exports
    def rows(self) -> list[dict]:
        """One dict per segment: index, start, end, label, confidence, then one probability per class."""
        out = []
        for s in self.segments:
            row = {"segment": s.index, "start": round(s.start_s, 3), "end": round(s.end_s, 3),
                   "label": s.label(), "confidence": round(s.confidence(), 4)}
            row.update({c: round(s.probabilities["emotion"][c], 4) for c in self.classes})
            out.append(row)
        return out

    def to_dict(self, windows: bool = True) -> dict:
        d = {"name": self.name, "duration_s": round(self.duration_s, 3), "checkpoint": self.checkpoint,
             "classes": self.classes, "source_sha256": self.source_sha, "segments": self.rows()}
        if windows:
            d["windows"] = [{"start": round(w.start_s, 3), "end": round(w.end_s, 3), "segment": w.segment,
                             "label": w.label(), "speech_s": round(w.speech_s, 2),
                             "probabilities": {c: round(w.probabilities["emotion"][c], 4) for c in self.classes}}
                            for w in self.windows]
        return d

    def csv_text(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=["segment", "start", "end", "label", "confidence", *self.classes],
                           lineterminator="\n")
        w.writeheader()
        w.writerows(self.rows())
        return buf.getvalue()

    def json_text(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def label_track(self) -> str:
        """Audacity label track (also read by ELAN's import of tab-delimited text): start, end, label."""
        return "".join(f"{s.start_s:.3f}\t{s.end_s:.3f}\t{s.label()}\n" for s in self.segments)

    def export(self, folder, stem: str | None = None) -> dict[str, Path]:
        """Write ``stem.csv``, ``stem.json`` and ``stem.labels.txt`` into ``folder``; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = stem or Path(self.name).stem or "timeline"
        paths = {"csv": folder / f"{stem}.csv", "json": folder / f"{stem}.json",
                 "labels": folder / f"{stem}.labels.txt"}
        for key, text in (("csv", self.csv_text()), ("json", self.json_text()), ("labels", self.label_track())):
            tmp = paths[key].with_name(f".{paths[key].name}.tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, paths[key])
        return paths

    def probability_grid(self, step_s: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities on a regular grid ``(times,)``, ``(classes, times)``: the mean of the windows
        covering each instant, NaN where no window is (pauses)."""
        n = max(1, int(math.ceil(self.duration_s / step_s)))
        t = (np.arange(n) + 0.5) * step_s
        acc = np.zeros((len(self.classes), n))
        cnt = np.zeros(n)
        for w in self.windows:
            a, b = int(round(w.start_s / step_s)), max(int(round(w.end_s / step_s)), int(round(w.start_s / step_s)) + 1)
            p = np.array([w.probabilities["emotion"][c] for c in self.classes])
            acc[:, a:b] += p[:, None]
            cnt[a:b] += 1
        grid = np.where(cnt > 0, acc / np.maximum(cnt, 1), np.nan)
        return t, grid


# ------------------------------------------------------------------------------ bounded decoding
class StreamResampler:
    """Resampling to 16 kHz of a stream that arrives in pieces of any size (file blocks, microphone
    chunks): the concatenated output equals :func:`serdemo.audio.resample` of the whole stream.

    Each piece is resampled with ``context`` input samples of look-back and look-ahead, starting on a
    whole phase of the polyphase filter (a multiple of ``down`` input samples), so no piece edge is
    audible; the last ``context`` samples wait for the next :meth:`push` or for :meth:`flush`.
    """

    def __init__(self, rate: int):
        self.rate = int(rate)
        ratio = resample_ratio(self.rate, SAMPLE_RATE)
        self.up, self.down = ratio.numerator, ratio.denominator
        width = math.ceil(LOWPASS_WIDTH * self.down / (ROLLOFF * min(self.up, self.down)))
        self.context = -(-(width + self.down) // self.down) * self.down  # input samples, phase-aligned
        self.buf = np.zeros(0, np.float32)
        self.buf_start = 0  # input index of buf[0]
        self.done = 0  # input samples already turned into output

    def output_length(self, n_in: int) -> int:
        return -(-n_in * self.up // self.down)

    def push(self, raw: np.ndarray) -> np.ndarray:
        """Mono float32 input -> the output it completes (possibly empty)."""
        if self.rate == SAMPLE_RATE:
            return raw
        self.buf = np.concatenate([self.buf, raw])
        stop = (self.buf_start + len(self.buf) - self.context) // self.down * self.down
        if stop <= self.done:
            return np.zeros(0, np.float32)
        out = self.span(self.buf, self.buf_start, self.done, stop, final=False)
        self.done = stop
        keep = max(0, (stop - self.context) // self.down * self.down)
        self.buf, self.buf_start = self.buf[keep - self.buf_start:], keep
        return out

    def flush(self) -> np.ndarray:
        """The output still held back at the end of the stream."""
        end = self.buf_start + len(self.buf)
        if self.rate == SAMPLE_RATE or self.done >= end:
            return np.zeros(0, np.float32)
        out = self.span(self.buf, self.buf_start, self.done, end, final=True)
        self.done = end
        return out

    def span(self, buf: np.ndarray, buf_start: int, a: int, b: int, final: bool) -> np.ndarray:
        """Output for input samples ``[a, b)`` (``a`` a multiple of ``down``) from ``buf``, which starts at
        input index ``buf_start`` and holds ``context`` samples around the span (``final``: ``buf`` ends
        where the stream ends)."""
        ext_start = max(buf_start, (a - self.context) // self.down * self.down)
        ext_stop = buf_start + len(buf) if final else min(buf_start + len(buf), b + self.context)
        out = resample(np.ascontiguousarray(buf[ext_start - buf_start: ext_stop - buf_start]), self.rate)
        first = (a - ext_start) * self.up // self.down
        return out[first: first + self.output_length(b) - a * self.up // self.down]


class Source:
    """A recording read as 16 kHz mono float32 blocks, whatever its rate, channels and length.

    ``source``: a path, a ``(sample_rate, array)`` pair (as Gradio delivers microphone audio) or a
    bare array at 16 kHz. A file is never decoded whole: :meth:`blocks` reads ``block`` source frames
    at a time and resamples each with enough context on both sides (aligned to the resampler's
    phase) that the result equals resampling the whole file.
    """

    def __init__(self, source, max_duration_s: float | None = None, block_s: float = 30.0):
        self.max_duration_s = max_timeline_s() if max_duration_s is None else float(max_duration_s)
        self.block_s = block_s
        self.path: Path | None = None
        self.array: np.ndarray | None = None
        if isinstance(source, (str, os.PathLike)):
            self.path = Path(source)
            self.label = _audio._describe(self.path)
            self.name = self.path.name
            _audio._check_file(self.path, self.label)
            info = _audio._open_info(str(self.path), self.label)
            if info.frames <= 0:
                raise AudioError(f"{self.label} holds no audio samples: it is empty or its header is truncated.")
            _audio._check_rate_channels(info.samplerate, info.channels, self.label)
            self.rate, self.frames = int(info.samplerate), int(info.frames)
        else:
            if isinstance(source, tuple) and len(source) == 2:
                rate, array = source
            elif isinstance(source, np.ndarray):
                rate, array = SAMPLE_RATE, source
            elif source is None:
                raise AudioError("No audio was given: upload a file or record first.")
            else:
                raise AudioError(f"Cannot read audio from a {type(source).__name__}.")
            self.label, self.name = "the recording", "recording"
            array = np.asarray(array)
            if array.size == 0:
                raise AudioError("The recording holds no samples.", "Nothing was recorded: record again.")
            channels = 1 if array.ndim == 1 else min(array.shape)
            _audio._check_rate_channels(int(rate), channels, self.label)
            self.array, self.rate = downmix(to_float(array)), int(rate)
            self.frames = len(self.array)
        self.duration_s = self.frames / self.rate
        if self.duration_s < MIN_DURATION_S:
            raise _audio._fail(f"{{what}} is {self.duration_s * 1000:.0f} ms long; at least "
                               f"{MIN_DURATION_S * 1000:.0f} ms of speech is needed.", self.label,
                               "Upload a longer recording.", "Record a longer clip.")
        if self.duration_s > self.max_duration_s * 1.01:
            limit = _minutes(self.max_duration_s)
            raise _audio._fail(f"{{what}} lasts {_minutes(self.duration_s)}; the timeline's limit is {limit}.",
                               self.label, "Trim it, or split it into parts of at most " + limit + ".",
                               "Record a shorter stretch.")
        self.resampler = StreamResampler(self.rate)  # its phase arithmetic (each pass makes its own)
        self.samples_16k = self.resampler.output_length(self.frames)

    def _raw_blocks(self, size: int) -> Iterator[np.ndarray]:
        if self.array is not None:
            for i in range(0, self.frames, size):
                yield self.array[i:i + size]
            return
        try:
            with sf.SoundFile(str(self.path)) as f:
                while True:
                    data = f.read(size, dtype="float32", always_2d=True)
                    if not len(data):
                        return
                    yield downmix(data)
        except (sf.LibsndfileError, RuntimeError) as exc:
            raise _audio._fail("{what} is damaged and could not be decoded" + _audio._reason(exc) + ".",
                               self.label, "Upload an intact copy.", "Record again.") from None

    def blocks(self) -> Iterator[np.ndarray]:
        """16 kHz blocks in order; their concatenation equals resampling the whole recording.

        Raises :class:`AudioError` for NaN or infinite samples, and for digital silence (at the end).
        """
        rs = StreamResampler(self.rate)
        size = max(rs.down, int(self.block_s * self.rate) // rs.down * rs.down)
        peak = 0.0
        for raw in self._raw_blocks(size):
            if not np.isfinite(raw).all():
                bad = int((~np.isfinite(raw)).sum())
                raise _audio._fail(f"{{what}} contains {bad} NaN or infinite samples: it is corrupt.", self.label,
                                   "Export it again from its source.", "Record again.")
            peak = max(peak, float(np.abs(raw).max()) if len(raw) else 0.0)
            out = rs.push(raw)
            if len(out):
                yield out
        out = rs.flush()  # ends where the decoder ended (a compressed file's header may be a little off)
        if len(out):
            yield out
        if peak <= SILENCE_PEAK:
            raise _audio._fail(f"{{what}} is digital silence (peak {peak:.1e}).", self.label,
                               "It holds no sound at all: upload a recording of someone speaking.",
                               "Check that the microphone is on and unmuted, then record again.")

    def span(self, start_s: float, end_s: float) -> np.ndarray:
        """16 kHz samples of ``[start_s, end_s)``, read with seeking (only that part is decoded)."""
        a = max(0, int(round(start_s * SAMPLE_RATE)))
        b = min(self.samples_16k, int(round(end_s * SAMPLE_RATE)))
        if self.array is not None and self.rate == SAMPLE_RATE:
            return self.array[a:b].copy()
        rs = self.resampler
        sa = a // rs.up * rs.down  # the phase-aligned input sample at or before output sample a
        sb = min(self.frames, -(-b * rs.down // rs.up) + 1)
        lo, hi = max(0, sa - rs.context), min(self.frames, sb + rs.context)
        if self.array is not None:
            raw = self.array[lo:hi]
        else:
            with sf.SoundFile(str(self.path)) as f:
                f.seek(lo)
                raw = downmix(f.read(hi - lo, dtype="float32", always_2d=True))
        out = rs.span(raw, lo, sa, sb, final=hi == self.frames)
        first = a - sa * rs.up // rs.down
        return np.ascontiguousarray(out[first: first + (b - a)])


def regroup(blocks: Iterator[np.ndarray], size: int) -> Iterator[np.ndarray]:
    """Blocks of any sizes -> blocks of exactly ``size`` samples (the last may be shorter)."""
    pending: list[np.ndarray] = []
    have = 0
    for b in blocks:
        pending.append(b)
        have += len(b)
        while have >= size:
            joined = np.concatenate(pending)
            yield joined[:size]
            rest = joined[size:]
            pending, have = ([rest] if len(rest) else []), len(rest)
    if have:
        yield np.concatenate(pending)


# ------------------------------------------------------------------------------ planning
def plan_segments(runs: list[tuple[float, float]], duration_s: float, min_gap_s: float = MIN_GAP_S,
                  min_segment_s: float = MIN_SEGMENT_S, max_segment_s: float = MAX_SEGMENT_S) -> list[Segment]:
    """Speech runs -> segments: pauses under ``min_gap_s`` joined, bursts under ``min_segment_s``
    dropped, stretches over ``max_segment_s`` split into equal parts."""
    joined: list[list[float]] = []
    for a, b in runs:
        a, b = max(0.0, a), min(duration_s, b)
        if joined and a - joined[-1][1] < min_gap_s:
            joined[-1][1] = b
        else:
            joined.append([a, b])
    out: list[Segment] = []
    for a, b in joined:
        if b - a < min_segment_s:
            continue
        n = max(1, math.ceil((b - a) / max_segment_s - 1e-9))
        edges = np.linspace(a, b, n + 1)
        for x, y in zip(edges[:-1], edges[1:]):
            out.append(Segment(len(out), float(x), float(y)))
    return out


def plan_windows(seg: Segment, window_s: float = WINDOW_S, hop_s: float = HOP_S,
                 single_s: float = SINGLE_WINDOW_S) -> list[tuple[float, float]]:
    """The windows that cover a segment: the whole segment up to ``single_s``, else windows of
    ``window_s`` spread evenly with at most ``hop_s`` between starts."""
    if seg.duration_s <= single_s:
        return [(seg.start_s, seg.end_s)]
    n = math.ceil((seg.duration_s - window_s) / hop_s - 1e-9) + 1
    starts = np.linspace(seg.start_s, seg.end_s - window_s, n)
    return [(float(s), float(s) + window_s) for s in starts]


# ------------------------------------------------------------------------------ analysis
def _window(pred: Prediction, start_s: float, end_s: float, segment: int) -> Window:
    speech = float(np.count_nonzero(pred.speech)) / FRAME_RATE_HZ if pred.speech is not None else 0.0
    return Window(start_s, end_s, pred.probabilities, pred.attention.astype(np.float32),
                  (pred.attention_times_s + start_s).astype(np.float32), speech, segment)


def classify(predictor: Predictor, waves: list[np.ndarray]) -> list[Prediction]:
    """Windows -> predictions through :meth:`Predictor.predict_batch` (no VTLP view, no speech demand)."""
    return predictor.predict_batch(waves, alpha=None, require_speech=False) if waves else []


def _release_memory() -> None:
    """Hand freed heap back to the OS (glibc): batches of differently sized windows otherwise leave the
    heap fragmented, and a 30-minute recording peaked ~75 MB higher than with this after each batch."""
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


def _mean_probabilities(windows: list[Window]) -> dict[str, dict[str, float]]:
    heads = windows[0].probabilities
    return {h: {c: float(np.mean([w.probabilities[h][c] for w in windows])) for c in heads[h]} for h in heads}


def analyze(source, predictor: Predictor, *, max_duration_s: float | None = None, window_s: float = WINDOW_S,
            hop_s: float = HOP_S, min_gap_s: float = MIN_GAP_S, min_segment_s: float = MIN_SEGMENT_S,
            max_segment_s: float = MAX_SEGMENT_S, batch_size: int = BATCH_SIZE, block_s: float = 30.0,
            progress: Progress | None = None, name: str | None = None) -> Timeline:
    """A recording (path, ``(rate, array)`` or 16 kHz array) -> :class:`Timeline`.

    Raises :class:`AudioError` for unreadable, too long or silent audio and :class:`NoSpeechError`
    when the detector finds no segment of speech.
    """
    t0 = time.perf_counter()
    progress = progress or (lambda f, d: None)
    src = Source(source, max_duration_s, block_s)
    detector = predictor.detector  # on the CPU, as Predictor runs it (its net follows its input's device)
    block = BLOCK_CHUNKS * CHUNK
    lead = LEAD_CHUNKS * CHUNK

    # pass 1: speech scores, envelope, content hash
    scores: list[np.ndarray] = []
    env_min: list[np.ndarray] = []
    env_max: list[np.ndarray] = []
    sha = hashlib.sha256()
    n = 0
    prev = np.zeros(0, np.float32)
    for blk in regroup(src.blocks(), block):
        x = np.concatenate([prev, blk])
        s = detector.chunk_scores(torch.from_numpy(x)[None])[0].numpy()
        scores.append(s[len(prev) // CHUNK:])
        prev = blk[-lead:] if len(blk) >= lead else np.zeros(0, np.float32)
        m = len(blk) // ENVELOPE_HOP * ENVELOPE_HOP
        if m:
            env_min.append(blk[:m].reshape(-1, ENVELOPE_HOP).min(1))
            env_max.append(blk[:m].reshape(-1, ENVELOPE_HOP).max(1))
        if len(blk) > m:
            env_min.append(blk[m:].min(keepdims=True))
            env_max.append(blk[m:].max(keepdims=True))
        sha.update(to_pcm16(blk).tobytes())
        n += len(blk)
        progress(0.5 * n / max(1, src.samples_16k), "finding speech")
    duration_s = n / SAMPLE_RATE
    n_frames = 1 + n // 160
    mask = frames_from_chunks(np.concatenate(scores), n_frames)
    runs = speech_runs(mask, FRAME_RATE_HZ)
    segs = plan_segments(runs, duration_s, min_gap_s, min_segment_s, max_segment_s)
    if not segs:
        raise NoSpeechError("No speech found in this recording (noise, music or tones?): the timeline needs "
                            "someone speaking.")
    plan = [(a, b, s.index) for s in segs for a, b in plan_windows(s, window_s, hop_s)]
    plan.sort()

    # pass 2: windows as their samples arrive, classified in batches
    windows: list[Window] = []
    pending: list[tuple[np.ndarray, float, float, int]] = []

    def flush():
        preds = classify(predictor, [p[0] for p in pending])
        windows.extend(_window(pr, a, b, si) for pr, (_, a, b, si) in zip(preds, pending))
        pending.clear()
        _release_memory()

    if src.array is not None and src.rate == SAMPLE_RATE:
        for a, b, si in plan:
            pending.append((src.array[int(round(a * SAMPLE_RATE)):int(round(b * SAMPLE_RATE))], a, b, si))
            if len(pending) >= batch_size:
                flush()
                progress(0.5 + 0.5 * len(windows) / len(plan), "classifying windows")
    else:
        buf = np.zeros(0, np.float32)
        buf_start = 0
        k = 0
        for blk in src.blocks():
            buf = np.concatenate([buf, blk])
            end = buf_start + len(buf)
            while k < len(plan) and int(round(plan[k][1] * SAMPLE_RATE)) <= end:
                a, b, si = plan[k]
                ia, ib = int(round(a * SAMPLE_RATE)), int(round(b * SAMPLE_RATE))
                pending.append((buf[ia - buf_start: ib - buf_start].copy(), a, b, si))
                k += 1
                if len(pending) >= batch_size:
                    flush()
                    progress(0.5 + 0.5 * len(windows) / len(plan), "classifying windows")
            keep = int(round(plan[k][0] * SAMPLE_RATE)) if k < len(plan) else end
            keep = min(max(keep, buf_start), end)
            buf, buf_start = buf[keep - buf_start:], keep
            if k >= len(plan):
                break
        while k < len(plan):  # the decoder gave a few samples fewer than the header promised
            a, b, si = plan[k]
            ia, ib = int(round(a * SAMPLE_RATE)), int(round(b * SAMPLE_RATE))
            piece = buf[max(0, ia - buf_start): max(0, ib - buf_start)]
            if len(piece) >= MIN_DURATION_S * SAMPLE_RATE:
                pending.append((piece.copy(), a, b, si))
            k += 1
    if pending:
        flush()
    for i, w in enumerate(windows):
        segs[w.segment].windows.append(i)
    segs = [s for s in segs if s.windows]
    for i, s in enumerate(segs):
        s.index = i
        for wi in s.windows:
            windows[wi].segment = i
        s.probabilities = _mean_probabilities([windows[wi] for wi in s.windows])
    progress(1.0, "done")
    env_t = (np.arange(sum(len(e) for e in env_min)) + 0.5) * ENVELOPE_HOP / SAMPLE_RATE
    return Timeline(name=name or src.name, duration_s=duration_s, classes=list(predictor.heads["emotion"]),
                    checkpoint=predictor.name, segments=segs, windows=windows, speech_s=runs,
                    envelope_times_s=np.minimum(env_t, duration_s).astype(np.float32),
                    envelope_min=np.concatenate(env_min).astype(np.float32) if env_min else np.zeros(0, np.float32),
                    envelope_max=np.concatenate(env_max).astype(np.float32) if env_max else np.zeros(0, np.float32),
                    source_sha=sha.hexdigest(), source_rate=src.rate, elapsed_s=time.perf_counter() - t0)


# ------------------------------------------------------------------------------ live streams
class LiveTimeline:
    """A growing recording from a microphone stream: every ``every_s`` of new audio the latest
    ``window_s`` are classified (one :meth:`Predictor.predict_batch` call) and join the timeline.

    ``feed(rate, chunk)`` takes what Gradio's streaming audio delivers (int16 or float, any rate,
    mono or multichannel) and returns the new :class:`Window` or None; chunks are resampled as one
    stream (:class:`StreamResampler`), so their joins leave no clicks. The recording stays in memory
    (at 16 kHz, float32: 3.8 MB a minute) up to ``max_duration_s``; :meth:`finish` returns it whole.
    """

    def __init__(self, predictor: Predictor, window_s: float = LIVE_WINDOW_S, every_s: float = 1.0,
                 max_duration_s: float | None = None):
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

    @property
    def duration_s(self) -> float:
        return self.samples / SAMPLE_RATE

    def finish(self) -> np.ndarray:
        """The whole recording at 16 kHz, with what the resampler still held back (the stream ended)."""
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
        chunk = np.asarray(chunk)
        if chunk.size == 0:
            return None
        rate = int(rate)
        _audio._check_rate_channels(rate, 1 if chunk.ndim == 1 else min(chunk.shape), "the recording")
        if self.resampler is None:
            self.resampler = StreamResampler(rate)
        elif rate != self.resampler.rate:
            raise AudioError(f"The microphone switched from {self.resampler.rate} Hz to {rate} Hz mid-recording: "
                             "stop and record again.")
        if self.truncated:
            return None
        raw = np.nan_to_num(downmix(to_float(chunk)), nan=0.0, posinf=0.0, neginf=0.0)
        self.heard_s += len(raw) / rate
        self._append(self.resampler.push(raw))
        if self.heard_s - self.last_at_s < self.every_s - 1e-6 or self.samples < MIN_DURATION_S * SAMPLE_RATE:
            return None
        self.last_at_s = self.heard_s
        start = max(0, self.samples - int(self.window_s * SAMPLE_RATE))
        piece = self._tail(self.samples - start)
        if float(np.abs(piece).max()) <= SILENCE_PEAK:
            return None
        pred = classify(self.predictor, [piece])[0]
        win = _window(pred, start / SAMPLE_RATE, self.samples / SAMPLE_RATE, -1)
        self.windows.append(win)
        return win

    def has_speech(self, win: Window) -> bool:
        return win.speech_s >= MIN_TOTAL_SPEECH_S


# ------------------------------------------------------------------------------ CLI
def _minutes(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 120 else f"{s // 60} min {s % 60:02d} s"


def _analyze_one(args, progress: Progress | None = None) -> tuple[str, dict | str]:
    """Worker: one file -> (file name, written paths or the error message a person can act on)."""
    path, stem, out, checkpoint, device, threads, opts = args
    predictor = _PREDICTORS.get((checkpoint, device)) or Predictor.from_checkpoint(checkpoint, device)
    _PREDICTORS[(checkpoint, device)] = predictor
    torch.set_num_threads(threads)  # after loading: importing silero-vad sets torch to one thread
    try:
        tl = analyze(path, predictor, progress=progress, **opts)
    except AudioError as exc:
        return Path(path).name, str(exc)
    paths = tl.export(out, stem)
    return Path(path).name, {"paths": {k: str(v) for k, v in paths.items()}, "segments": len(tl.segments),
                             "duration_s": tl.duration_s, "elapsed_s": tl.elapsed_s}


_PREDICTORS: dict = {}  # per worker process: (checkpoint, device) -> Predictor


def _seconds(path) -> float:
    try:
        info = sf.info(str(path))
        return info.frames / info.samplerate
    except Exception:  # noqa: BLE001 - an unreadable file is reported by its worker, worded there
        return 0.0


class _Bar:
    """tqdm over seconds of audio (tqdm is in requirements.txt); a plain line per file without it."""

    def __init__(self, total_s: float):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_s, 1), desc="timeline", unit="s audio", dynamic_ncols=True,
                            file=sys.stderr)
        except ImportError:  # pragma: no cover
            self.bar = None
        self.base = 0.0

    def partial(self, seconds: float, fraction: float) -> None:
        if self.bar is not None:
            self.bar.n = round(self.base + fraction * seconds, 1)
            self.bar.refresh()

    def done(self, seconds: float, message: str) -> None:
        self.base += seconds
        if self.bar is None:
            print(message, file=sys.stderr)
            return
        self.bar.write(message, file=sys.stderr)
        self.bar.n = round(self.base, 1)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _message(name: str, result: dict | str) -> str:
    if isinstance(result, str):
        return f"{name}: skipped: {result}"
    p = result["paths"]
    return (f"{name}: {result['segments']} segments in {result['duration_s']:.1f} s of audio "
            f"({result['elapsed_s']:.1f} s) -> {Path(p['csv']).name}, {Path(p['json']).name}, "
            f"{Path(p['labels']).name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serdemo.timeline",
                                description="Emotion over time for long recordings: CSV, JSON and a label "
                                            "track per file.")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    p.add_argument("--out", required=True, help="folder for FILE.csv, FILE.json and FILE.labels.txt")
    p.add_argument("--checkpoint", default=os.environ.get("SERDEMO_CHECKPOINT", "checkpoints/default"),
                   help="checkpoint folder (default checkpoints/default, or SERDEMO_CHECKPOINT)")
    p.add_argument("--device", default=os.environ.get("SERDEMO_DEVICE") or None, help="cpu or cuda (default: best)")
    p.add_argument("--jobs", type=int, default=0,
                   help="files analysed at once, each in its own worker process (default: one per core, at most "
                        "one per file)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: the windows are small, so one process per core "
                        "beats threads; on this 2-core machine, beside another busy process, 2 threads were "
                        "6x slower than 1)")
    p.add_argument("--max-duration", type=float, default=None, help=f"seconds (default {MAX_TIMELINE_S:.0f}, "
                   "or SERDEMO_MAX_TIMELINE_S)")
    p.add_argument("--window", type=float, default=WINDOW_S, help="window length in seconds")
    p.add_argument("--hop", type=float, default=HOP_S, help="step between windows in seconds")
    p.add_argument("--min-gap", type=float, default=MIN_GAP_S, help="shorter pauses stay inside a segment")
    args = p.parse_args(argv)
    opts = dict(max_duration_s=args.max_duration, window_s=args.window, hop_s=args.hop, min_gap_s=args.min_gap)
    cores = os.cpu_count() or 1
    jobs = max(1, min(args.jobs or cores, len(args.files)))
    threads = max(1, args.threads)
    seconds = {f: _seconds(f) for f in args.files}
    stems: dict[str, int] = {}
    work = []
    for f in args.files:  # two inputs with the same name (in different folders) get -2, -3... outputs
        stem = Path(f).stem
        stems[stem] = stems.get(stem, 0) + 1
        work.append((f, stem if stems[stem] == 1 else f"{stem}-{stems[stem]}", args.out, args.checkpoint,
                     args.device, threads, opts))
    bar = _Bar(sum(seconds.values()))
    failed = 0
    try:
        if jobs == 1:
            for w in work:
                name, result = _analyze_one(w, lambda f, _d, s=seconds[w[0]]: bar.partial(s, f))
                failed += isinstance(result, str)
                bar.done(seconds[w[0]], _message(name, result))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_analyze_one, w): w[0] for w in work}
                for fut in as_completed(futures):
                    name, result = fut.result()
                    failed += isinstance(result, str)
                    bar.done(seconds[futures[fut]], _message(name, result))
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. the checkpoint cannot be read
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
