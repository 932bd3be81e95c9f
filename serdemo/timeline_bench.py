"""The Timeline tab's state and actions: emotion over time for an upload or a live microphone, the view of
one segment, and its relabelling. Plain methods with named results (as :class:`serdemo.workbench.Workbench`
for the other tabs), so the tab is testable without a browser; ``serdemo.timeline_ui`` lays it out."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import soundfile as sf

from serdemo.audio import MICROPHONE, SAMPLE_RATE, AudioError, AudioStream
from serdemo.checkpoint import CheckpointError
from serdemo.export import EXPORT_PREFIX, remove_old_exports
from serdemo.live import MAX_CHUNK_S, LiveTimeline
from serdemo.plots import analysis_figure, db_per_unit, live_figure, mel_band_hz, timeline_figure
from serdemo.store import StoreError, as_stored
from serdemo.timeline import ADAPT_VOICE, Timeline, Window, analyze, max_timeline_s, open_recording
from serdemo.uikit import user_error
from serdemo.vad import MIN_TOTAL_SPEECH_S

SEGMENT_ALPHA = 1.1  # the VTLP view of a selected segment (as the Analyse tab's default)


@dataclass
class Loaded:
    """A session's current timeline and the audio it came from (a file: spans are read from it)."""

    timeline: Timeline
    path: str
    folder: str = ""  # where its exports are written (rewritten after a relabel)


@dataclass
class Picked:
    """The selected segment: its 16 kHz samples (as the store keeps them) and the model's view of it."""

    index: int
    wave: np.ndarray
    offset_s: float
    predicted: str
    confidence: float
    checkpoint: str


@dataclass
class TimelineView:
    """What the tab shows for an analysed recording."""

    figure: go.Figure
    rows: list[list]  # SEGMENT_HEADERS: segment (from 1), start (s), end (s), model's label, confidence, human label
    summary: str  # Markdown
    csv: str  # paths of the three exports
    json: str
    labels: str
    loaded: Loaded


@dataclass
class SegmentView:
    """One picked segment: the timeline with it outlined, its own three-panel view and probabilities."""

    timeline_figure: go.Figure
    figure: go.Figure
    probabilities: dict[str, float]
    classes: list[str]
    label: str  # the timeline's label, preselected
    picked: Picked
    status: str


@dataclass
class LiveUpdate:
    """A streamed chunk's effect: None where nothing new is shown yet."""

    live: LiveTimeline
    probabilities: dict[str, float] | None = None
    figure: go.Figure | None = None
    text: str | None = None


@dataclass
class Stopped:
    """A finished live recording: the kept wav, its timeline (None when it could not be made) and why."""

    recording: str
    view: TimelineView | None
    text: str


SEGMENT_HEADERS = ["segment", "start (s)", "end (s)", "model says", "confidence", "human label"]


def segment_rows(tl: Timeline) -> list[list]:
    return [[s.number, round(s.start_s, 2), round(s.end_s, 2), s.label(), round(s.confidence(), 3),
             f"{s.human_label} ({s.annotator})" if s.human_label else ""] for s in tl.segments]


def summary(tl: Timeline) -> str:
    counts: dict[str, float] = {}
    for s in tl.segments:
        counts[s.label()] = counts.get(s.label(), 0.0) + s.duration_s
    speech = sum(counts.values())
    mix = ", ".join(f"{k} {v / speech:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    n = len(tl.segments)
    return (f"**{n} segment{'s' if n != 1 else ''}**, {speech:.0f} s of speech in {tl.duration_s:.0f} s · "
            f"the model's label as a share of speech time (not a confidence): {mix} · "
            f"analysed in {tl.elapsed_s:.1f} s ({tl.duration_s / max(tl.elapsed_s, 1e-6):.0f}× real time) · "
            f"{tl.voice_note()}. Pick a segment in the table to see what the model heard and to relabel it.")


def fail(problem, source=None):
    """A user error that stays on screen until dismissed (a timeline takes a while to read)."""
    return user_error(problem, source, duration=None)


class TimelineDesk:
    """The Timeline tab's actions on the app's :class:`~serdemo.workbench.Workbench` (its predictors and store)."""

    def __init__(self, bench):
        self.bench = bench

    def analyse(self, audio, model_name, source=None, progress=None, adapt_voice: bool = ADAPT_VOICE) -> TimelineView:
        """Emotion over time for a recording (a path): figure, segments table, summary and the three exports.
        ``adapt_voice``: read every window relative to the recording's voice (models that adapt)."""
        if not audio:
            raise fail("No audio was given: upload a recording (or speak into the microphone) first.")
        step = progress or (lambda *a, **k: None)
        try:
            predictor = self.bench.predictor(model_name)
            tl = analyze(audio, predictor, progress=lambda f, d: step(f, desc=d), name=Path(audio).name,
                         adapt_voice=bool(adapt_voice))
        except (AudioError, CheckpointError) as exc:
            raise fail(exc, source) from None
        remove_old_exports()  # served more than an hour ago: Gradio has its own copy
        folder = Path(tempfile.mkdtemp(prefix=f"{EXPORT_PREFIX}timeline-"))
        return self.view(Loaded(tl, str(audio), str(folder)))

    @staticmethod
    def view(loaded: Loaded, selected: int | None = None) -> TimelineView:
        """The tab's view of a timeline (its exports written again, so they hold every human label)."""
        tl = loaded.timeline
        paths = tl.export(loaded.folder, Path(tl.name).stem or "timeline")
        return TimelineView(timeline_figure(tl, selected=selected), segment_rows(tl), summary(tl), str(paths["csv"]),
                            str(paths["json"]), str(paths["labels"]), loaded)

    def pick(self, loaded: Loaded | None, number, model_name) -> SegmentView | None:
        """Segment ``number`` (as the table's first column shows it, from 1; never a row position) as one
        clip: its three-panel view and probabilities; None: no such segment."""
        try:
            row = int(number) - 1
        except (TypeError, ValueError):
            return None
        if loaded is None or not 0 <= row < len(loaded.timeline.segments):
            return None
        seg = loaded.timeline.segments[row]
        try:
            predictor = self.bench.predictor(model_name or loaded.timeline.checkpoint)
            wave = as_stored(open_recording(loaded.path).span(seg.start_s, seg.end_s))
            pred = predictor.predict(wave, alpha=SEGMENT_ALPHA, require_speech=False)
        except (AudioError, CheckpointError) as exc:
            raise fail(exc) from None
        fig = analysis_figure(pred.frame_times_s + seg.start_s, pred.logmel, pred.logmel_warped,
                              pred.attention_times_s + seg.start_s, pred.attention, pred.alpha,
                              title=f"segment {row + 1}: {seg.start_s:.2f}–{seg.end_s:.2f} s · "
                                    f"{pred.label()} ({pred.confidence():.0%}) as one clip",
                              speech_segments_s=[(a + seg.start_s, b + seg.start_s)
                                                 for a, b in pred.speech_segments_s],
                              band_hz=mel_band_hz(predictor.features), db_per_unit=db_per_unit(predictor.features))
        fig.update_xaxes(range=[seg.start_s, seg.end_s])
        status = (f"Segment {row + 1} ({seg.start_s:.2f}–{seg.end_s:.2f} s): the timeline says **{seg.label()}** "
                  f"({seg.confidence():.0%}); the segment as one clip: {pred.label()} ({pred.confidence():.0%}).")
        return SegmentView(timeline_figure(loaded.timeline, selected=row), fig, pred.probabilities["emotion"],
                           list(pred.probabilities["emotion"]), seg.label(),
                           Picked(row, wave, seg.start_s, pred.label(), pred.confidence(), predictor.name), status)

    def save(self, picked: Picked | None, loaded: Loaded | None, label, who: str) -> tuple[str, TimelineView]:
        """Store the picked segment as its own clip (linked to its recording and offset) with ``label``; the
        timeline keeps the human label beside the model's (table, figure, exports): the status and new view."""
        try:
            if picked is None or loaded is None:
                raise StoreError("pick a segment in the table first, then label it")
            tl = loaded.timeline
            sha = self.bench.store.add_clip(picked.wave, source_name=f"{tl.name} @ {picked.offset_s:.2f} s",
                                            predicted=picked.predicted, confidence=picked.confidence,
                                            checkpoint=picked.checkpoint, source_clip=tl.source_sha,
                                            offset_s=round(picked.offset_s, 3))
            event = self.bench.store.label_clip(sha, label, who)
        except StoreError as exc:
            raise fail(exc) from None
        tl.relabel(picked.index + 1, event.label, event.annotator)
        return (f"Saved segment {picked.index + 1} as clip `{sha[:12]}`: **{event.label}** by {event.annotator} "
                f"(the model said {event.predicted}); from `{tl.name}` at {picked.offset_s:.2f} s."), \
            self.view(loaded, picked.index)

    # ---------------------------------------------------------------- live microphone
    def live_start(self, model_name) -> str:
        """Recording started: the model is loaded now rather than on the first chunk."""
        try:
            self.bench.predictor(model_name)
        except CheckpointError as exc:
            raise fail(exc, MICROPHONE) from None
        return "Listening… the first prediction comes after a second of sound."

    def live_feed(self, live: LiveTimeline | None, chunk, model_name, adapt_voice: bool = True) -> LiveUpdate:
        """One streamed chunk, a file (as the page sends it) or a ``(rate, samples)`` pair: extend the recording;
        every second, classify the latest 3 s. A file is checked from its header (at most
        :data:`~serdemo.live.MAX_CHUNK_S`) and decoded by :class:`~serdemo.audio.AudioStream`. ``adapt_voice``
        (read when the recording starts): the windows adapt to the voice so far."""
        try:
            if live is None:
                live = LiveTimeline(self.bench.predictor(model_name), adapt_voice=bool(adapt_voice))
            if chunk is None:
                return LiveUpdate(live)
            if isinstance(chunk, (str, Path)):
                stream = AudioStream(chunk, max_duration_s=MAX_CHUNK_S, min_duration_s=0.0,
                                     what_limit="a streamed piece's limit")
                chunk = (stream.rate, np.concatenate(list(stream.source_blocks()) or [np.zeros(0, np.float32)]))
            if not (isinstance(chunk, tuple) and len(chunk) == 2):
                raise AudioError("The microphone sent something that is not audio: stop and record again.")
            rate, data = chunk
            win = live.feed(rate, data)
        except (AudioError, CheckpointError) as exc:
            raise fail(exc, MICROPHONE) from None
        if win is None:
            return LiveUpdate(live)
        return LiveUpdate(live, *self._live_view(live, win))

    @staticmethod
    def _live_view(live: LiveTimeline, win: Window) -> tuple[dict, go.Figure, str]:
        classes = list(live.predictor.heads["emotion"])
        fig = live_figure(live.windows, classes, live.duration_s, MIN_TOTAL_SPEECH_S)
        if live.has_speech(win):
            probs = win.probabilities["emotion"]
            n = win.voice_clips
            voice = (f" · adapted to your voice over {n} window{'s' if n != 1 else ''}" if n else
                     " · read on its own" + ("" if live.adapt_voice else " (this model does not adapt to a voice)"))
            text = (f"{live.duration_s:.0f} s recorded · now: **{win.label()}** "
                    f"({max(probs.values()):.0%}) over {win.start_s:.0f}–{win.end_s:.0f} s{voice}")
        else:
            probs = {"no speech": 1.0}
            text = f"{live.duration_s:.0f} s recorded · no speech in the latest {win.end_s - win.start_s:.0f} s"
        if live.truncated:
            text += f" · the limit of {max_timeline_s():.0f} s is reached: stop to analyse"
        return probs, fig, text

    def live_stop(self, live: LiveTimeline | None, model_name, progress=None,
                  adapt_voice: bool = ADAPT_VOICE) -> Stopped:
        """Recording stopped: keep it (a wav for playback) and analyse it as a timeline for relabelling; a
        recording that cannot be analysed (no speech) is still kept, with the reason."""
        if live is None or not live.samples:
            raise fail("Nothing reached the server yet: allow the microphone, speak for a few seconds, then stop.",
                       MICROPHONE)
        folder = Path(tempfile.mkdtemp(prefix="serdemo-live-"))
        path = folder / f"recording-{time.strftime('%Y%m%d-%H%M%S')}.wav"
        sf.write(path, live.finish(), SAMPLE_RATE, subtype="PCM_16")
        try:
            view = self.analyse(str(path), model_name, MICROPHONE, progress, adapt_voice)
        except gr.Error as exc:  # e.g. no speech: told in the status line, and the recording is kept
            return Stopped(str(path), None, f"Stopped after {live.duration_s:.0f} s. {exc.message} "
                                            "The recording is in the upload box.")
        return Stopped(str(path), view, f"Stopped after {live.duration_s:.0f} s: the recording is below as a "
                                        "timeline; pick a segment to relabel it.")
