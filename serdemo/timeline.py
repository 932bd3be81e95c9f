"""Emotion over time for a long recording: segments of speech, each classified, as a :class:`Timeline`.

The recording is read twice through :class:`serdemo.audio.AudioStream` (decoded, downmixed and resampled
in bounded blocks, never whole, so memory stays flat whatever its length):

1. speech detector scores per 32 ms chunk, a min/max waveform envelope and the content hash of the
   16 kHz samples;
2. the speech mask is cleaned and cut into segments (pauses under ``min_gap_s`` joined, pieces
   over ``max_segment_s`` split); a long segment is covered by overlapping windows of ``window_s``;
   the recording is read again and each window, as soon as its samples have arrived, joins a batch
   for :meth:`Predictor.predict_batch` (the one forward path), with its slice of the speech mask of
   pass 1 where the predictor takes one (the detector runs once per recording, not once per window).

    tl = analyze("call.flac", predictor)       # Timeline: segments, windows, envelope
    tl.export("out/", "call")                   # call.csv, call.json, call.labels.txt

A recording is one voice: with a model that adapts to voices (:attr:`Predictor.adapts`) and ``adapt_voice``,
every window's emotion probabilities are then read relative to the voice of all the recording's windows
(:meth:`Predictor.predict_from_statistics` on the statistics each window's prediction kept: no second
encoder pass). :data:`ADAPT_VOICE` is the default, as measured (``benchmarks/voice_timeline.py``).

Exports: CSV and JSON (start, end, label, confidence, one probability per class) and a label track
(``start<TAB>end<TAB>label``, seconds) that Audacity imports as labels and ELAN as a tier.
The live microphone is :mod:`serdemo.live`; the command line (``python -m serdemo.timeline FILE... --out
DIR``) is :mod:`serdemo.timeline_cli`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from serdemo.envsettings import env_number
from serdemo import csvsafe
from serdemo.audio import SAMPLE_RATE, MIN_DURATION_S, AudioStream, release_memory
from serdemo.fsutil import atomic_write
from serdemo.inference import NoSpeechError, Prediction, Predictor
from serdemo.store import to_pcm16
from serdemo.vad import CHUNK, frames_from_chunks, segments as speech_runs

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
MASK_HOP = 160  # samples per frame of the detector's mask over the whole recording (10 ms)
ADAPT_VOICE = True  # windows read relative to the recording's voice (models that adapt); benchmarks/voice_timeline.py

Progress = Callable[[float, str], None]  # (fraction done, what is happening)


def max_timeline_s() -> float:
    """The longest recording :func:`analyze` accepts: ``SERDEMO_MAX_TIMELINE_S`` or 30 minutes."""
    return env_number("SERDEMO_MAX_TIMELINE_S", MAX_TIMELINE_S)


def open_recording(source, max_duration_s: float | None = None) -> AudioStream:
    """A recording (path, ``(rate, array)`` or a bare 16 kHz array) as a 16 kHz :class:`AudioStream`,
    its header checked against the timeline's limit."""
    limit = max_timeline_s() if max_duration_s is None else float(max_duration_s)
    return AudioStream(source, sample_rate=SAMPLE_RATE, max_duration_s=limit, what_limit="the timeline's limit")

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
    voice_clips: int = 0  # how many windows of the voice its probabilities were adapted to (0: read on its own)

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
    human_label: str | None = None  # a person's correction (the Timeline tab's relabel), beside the model's
    annotator: str | None = None

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s

    @property
    def number(self) -> int:
        """The segment's number as the table, the figure and the exports show it (from 1)."""
        return self.index + 1

    def shown_label(self) -> str:
        """The human label where a person gave one, else the model's."""
        return self.human_label or self.label()

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
    voice_windows: int = 0  # windows the adaptation to the recording's voice rests on (0: each read on its own)

    # ----------------------------------------------------------------- exports
    def relabel(self, number: int, label: str, annotator: str) -> Segment:
        """Record a person's label for segment ``number`` (from 1); the model's label stays beside it."""
        seg = self.segments[number - 1]
        seg.human_label, seg.annotator = label, annotator
        return seg

    def rows(self) -> list[dict]:
        """One dict per segment: its number (from 1, as the table), start, end, the model's label and
        confidence, the human label and its annotator (blank: none yet), one probability per class, then
        ``voice_windows``: how many of the recording's windows the probabilities were adapted to (0: none)."""
        out = []
        for s in self.segments:
            row = {"segment": s.number, "start": round(s.start_s, 3), "end": round(s.end_s, 3),
                   "label": s.label(), "confidence": round(s.confidence(), 4), "human_label": s.human_label or "",
                   "annotator": s.annotator or ""}
            row.update({c: round(s.probabilities["emotion"][c], 4) for c in self.classes})
            row["voice_windows"] = self.voice_windows
            out.append(row)
        return out

    def to_dict(self, windows: bool = True) -> dict:
        d = {"name": self.name, "duration_s": round(self.duration_s, 3), "checkpoint": self.checkpoint,
             "classes": self.classes, "source_sha256": self.source_sha,
             "voice": {"adapted": self.voice_windows > 0, "windows": self.voice_windows,
                       "note": self.voice_note()},
             "segments": self.rows()}
        if windows:
            d["windows"] = [{"start": round(w.start_s, 3), "end": round(w.end_s, 3), "segment": w.segment,
                             "label": w.label(), "speech_s": round(w.speech_s, 2), "voice_clips": w.voice_clips,
                             "probabilities": {c: round(w.probabilities["emotion"][c], 4) for c in self.classes}}
                            for w in self.windows]
        return d

    def voice_note(self) -> str:
        """One sentence: whether (and on how many windows) the probabilities are adapted to the recording's voice."""
        if self.voice_windows:
            n = self.voice_windows
            return f"adapted to the recording's voice over {n} window{'s' if n != 1 else ''}"
        return "each window read on its own (not adapted to the recording's voice)"

    def csv_text(self) -> str:
        """:meth:`rows` as CSV; text cells that a spreadsheet would run as a formula (an annotator ``@alice``, a
        label ``=1+1``) are written as text (:func:`serdemo.csvsafe.csv_text`); numbers stay numbers."""
        return csvsafe.csv_text(["segment", "start", "end", "label", "confidence", "human_label", "annotator",
                                 *self.classes, "voice_windows"], self.rows())

    def json_text(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def label_track(self) -> str:
        """Audacity label track (also read by ELAN's import of tab-delimited text): start, end, label; a
        relabelled segment reads ``human (model: label)``."""
        return "".join(f"{s.start_s:.3f}\t{s.end_s:.3f}\t"
                       f"{f'{s.human_label} (model: {s.label()})' if s.human_label else s.label()}\n"
                       for s in self.segments)

    def export(self, folder, stem: str | None = None) -> dict[str, Path]:
        """Write ``stem.csv``, ``stem.json`` and ``stem.labels.txt`` into ``folder``; returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        stem = stem or Path(self.name).stem or "timeline"
        paths = {"csv": folder / f"{stem}.csv", "json": folder / f"{stem}.json",
                 "labels": folder / f"{stem}.labels.txt"}
        for key, text in (("csv", self.csv_text()), ("json", self.json_text()), ("labels", self.label_track())):
            data = text.encode("utf-8")
            atomic_write(paths[key], lambda f: f.write(data))
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
def window_from(pred: Prediction, start_s: float, end_s: float, segment: int, offset_s: float | None = None) -> Window:
    """A prediction for the window ``[start_s, end_s)`` as a :class:`Window` on the recording's timeline;
    ``offset_s``: where the prediction's own clock starts on the recording (default ``start_s``)."""
    rate = 1.0 / (pred.frame_times_s[1] - pred.frame_times_s[0]) if len(pred.frame_times_s) > 1 else 100.0
    speech = float(np.count_nonzero(pred.speech)) / rate if pred.speech is not None else 0.0
    offset_s = start_s if offset_s is None else offset_s
    return Window(start_s, end_s, pred.probabilities, pred.attention.astype(np.float32),
                  (pred.attention_times_s + offset_s).astype(np.float32), speech, segment)


def _accepts(fn, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def classify(predictor: Predictor, waves: list[np.ndarray], speech: list[np.ndarray] | None = None) -> list[Prediction]:
    """Windows -> predictions through :meth:`Predictor.predict_batch` (no VTLP view, no speech demand).

    ``speech``: each window's speech mask on the predictor's frame grid, already known from the
    recording's detector pass, handed over when the predictor takes it (so the detector does not run again).
    """
    if not waves:
        return []
    if speech is not None and _accepts(predictor.predict_batch, "speech"):
        return predictor.predict_batch(waves, alpha=None, require_speech=False, speech=speech)
    return predictor.predict_batch(waves, alpha=None, require_speech=False)


def window_speech(mask: np.ndarray, start: int, n: int, predictor: Predictor) -> np.ndarray:
    """The slice of the recording's speech mask (:data:`MASK_HOP` samples per frame) under the window of
    ``n`` samples from sample ``start``, on the predictor's frame grid (its own frame count and hop)."""
    feats = predictor.features
    n_frames = int(feats.num_frames(n))
    hop = int(getattr(feats, "hop_length", MASK_HOP))
    idx = (start + np.arange(n_frames) * hop + MASK_HOP // 2) // MASK_HOP  # the nearest mask frame
    return np.where(idx < len(mask), mask[np.minimum(idx, len(mask) - 1)], False)


def adapt_to_voice(predictor: Predictor, windows: list[Window], statistics: list[np.ndarray | None]) -> int:
    """Read every window's emotion probabilities relative to the voice of all of them (one recording, one
    voice), in place, from the raw statistics their predictions kept (``statistics[i]`` for ``windows[i]``):
    no encoder runs again. Returns how many windows the adaptation rests on; 0 (nothing changed) when the
    model does not adapt or a window has no statistics (e.g. ``shared_context``)."""
    if not windows or not getattr(predictor, "adapts", False) or any(s is None for s in statistics):
        return 0
    stats = np.stack([np.asarray(s, np.float32) for s in statistics])
    adapted = predictor.predict_from_statistics(stats, voice_stats=stats)
    for w, p in zip(windows, adapted):
        w.probabilities = {**w.probabilities, "emotion": p}
        w.voice_clips = len(stats)
    return len(stats)


def _mean_probabilities(windows: list[Window]) -> dict[str, dict[str, float]]:
    heads = windows[0].probabilities
    return {h: {c: float(np.mean([w.probabilities[h][c] for w in windows])) for c in heads[h]} for h in heads}


def analyze(source, predictor: Predictor, *, max_duration_s: float | None = None, window_s: float = WINDOW_S,
            hop_s: float = HOP_S, min_gap_s: float = MIN_GAP_S, min_segment_s: float = MIN_SEGMENT_S,
            max_segment_s: float = MAX_SEGMENT_S, batch_size: int = BATCH_SIZE, block_s: float = 30.0,
            progress: Progress | None = None, name: str | None = None, shared_context: bool = False,
            adapt_voice: bool = ADAPT_VOICE) -> Timeline:
    """A recording (path, ``(rate, array)`` or 16 kHz array) -> :class:`Timeline`.

    Each window is classified on its own samples, as the Analyse tab would classify it (in padded batches
    with its slice of the recording's speech mask). ``shared_context``: instead, pool every window from one
    encoding of the stretch of recording it lies in (:meth:`Predictor.predict_spans`); a window's
    probabilities then depend on the speech around it (on real corpus speech by up to 0.63, and it was
    not faster: 228 s in 3.1 s against 1.5 s on one CPU thread), so it is off by default.

    ``adapt_voice`` (default :data:`ADAPT_VOICE`): once every window is classified, read each relative to the
    voice of all the recording's windows (:func:`adapt_to_voice`; models that adapt only, and not with
    ``shared_context``, whose windows keep no statistics); :attr:`Timeline.voice_windows` says on how many.

    Raises :class:`AudioError` for unreadable, too long or silent audio and :class:`NoSpeechError`
    when the detector finds no segment of speech.
    """
    t0 = time.perf_counter()
    progress = progress or (lambda f, d: None)
    src = open_recording(source, max_duration_s)
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
    for blk in regroup(src.blocks(block_s), block):
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
        progress(0.5 * n / max(1, src.samples_out), "finding speech")
    duration_s = n / SAMPLE_RATE
    n_frames = 1 + n // MASK_HOP
    mask = frames_from_chunks(np.concatenate(scores), n_frames, MASK_HOP, SAMPLE_RATE)
    runs = speech_runs(mask, SAMPLE_RATE / MASK_HOP)
    del scores
    segs = plan_segments(runs, duration_s, min_gap_s, min_segment_s, max_segment_s)
    if not segs:
        raise NoSpeechError("No speech found in this recording (noise, music or tones?): the timeline needs "
                            "someone speaking.")
    plan = [(a, b, s.index) for s in segs for a, b in plan_windows(s, window_s, hop_s)]
    plan.sort()

    # pass 2: windows as their samples arrive, classified with the speech mask of pass 1
    windows: list[Window] = []
    statistics: list[np.ndarray | None] = []  # each window's raw statistics (models that adapt), for adapt_voice
    spans = shared_context and hasattr(predictor, "predict_spans")

    def run(region: np.ndarray, region_start: int, items: list[tuple[float, float, int]]) -> None:
        """Classify windows ``items`` (recording seconds) that lie in ``region``, which starts at sample
        ``region_start``: one encoding of the region for all of them where the predictor pools spans,
        else one padded batch of the windows' own samples."""
        if not items:
            return
        origin = region_start / SAMPLE_RATE
        if spans:
            speech = window_speech(mask, region_start, len(region), predictor)
            preds = predictor.predict_spans(region, [(a - origin, b - origin) for a, b, _ in items], speech=speech)
            offsets = [origin] * len(items)
        else:
            cuts = [(int(round(a * SAMPLE_RATE)) - region_start, int(round(b * SAMPLE_RATE)) - region_start)
                    for a, b, _ in items]
            waves = [region[max(0, x):y] for x, y in cuts]
            speech = [window_speech(mask, region_start + max(0, x), len(w), predictor) for (x, _), w in zip(cuts, waves)]
            preds = classify(predictor, waves, speech)
            offsets = [(region_start + max(0, x)) / SAMPLE_RATE for x, _ in cuts]
        windows.extend(window_from(pr, a, b, si, off) for pr, (a, b, si), off in zip(preds, items, offsets))
        statistics.extend(getattr(pr, "statistics", None) for pr in preds)
        release_memory()
        progress(0.5 + 0.5 * len(windows) / len(plan), "classifying windows")

    def run_ready(buf: np.ndarray, buf_start: int, ready: list[tuple[float, float, int]]) -> None:
        group = max(1, len(ready) if spans else batch_size)
        for g in range(0, len(ready), group):
            items = ready[g:g + group]
            lo = int(round(items[0][0] * SAMPLE_RATE))
            hi = max(int(round(b * SAMPLE_RATE)) for _, b, _ in items)
            run(buf[lo - buf_start: hi - buf_start], lo, items)

    buf = np.zeros(0, np.float32)
    buf_start = 0
    k = 0
    for blk in src.blocks(block_s):
        buf = np.concatenate([buf, blk]) if len(buf) else blk
        end = buf_start + len(buf)
        ready = []
        while k < len(plan) and int(round(plan[k][1] * SAMPLE_RATE)) <= end:
            ready.append(plan[k])
            k += 1
        run_ready(buf, buf_start, ready)
        keep = int(round(plan[k][0] * SAMPLE_RATE)) if k < len(plan) else end
        keep = min(max(keep, buf_start), end)
        buf, buf_start = buf[keep - buf_start:], keep
        if k >= len(plan):
            break
    end = buf_start + len(buf)
    tail = []  # the decoder gave a few samples fewer than the header promised: what is there, if enough
    for a, b, si in plan[k:]:
        b = min(b, end / SAMPLE_RATE)
        if b - a >= MIN_DURATION_S:
            tail.append((a, b, si))
    run_ready(buf, buf_start, tail)
    del buf
    voice_windows = adapt_to_voice(predictor, windows, statistics) if adapt_voice else 0
    del statistics
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
                    source_sha=sha.hexdigest(), source_rate=src.rate, elapsed_s=time.perf_counter() - t0,
                    voice_windows=voice_windows)



if __name__ == "__main__":  # python -m serdemo.timeline: the command line lives in serdemo.timeline_cli
    import runpy

    runpy.run_module("serdemo.timeline_cli", run_name="__main__", alter_sys=True)
