"""The Timeline tab: emotion over time for a long upload or a live microphone, and relabelling of segments.

``timeline_tab(bench, annotator)`` builds the tab inside ``build_app``'s Blocks (one call) and wires
it; ``bench`` is the app's Workbench (``predictor``, ``store``, ``choices``, ``settings``).
Named API endpoint: ``/timeline`` (audio file, model) -> figure, segments table, summary, CSV, JSON,
label track.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import gradio as gr
import numpy as np
import soundfile as sf

from serdemo.audio import MICROPHONE, SAMPLE_RATE, AudioError
from serdemo.checkpoint import CheckpointError
from serdemo.live import LiveTimeline
from serdemo.plots import analysis_figure, db_per_unit, live_figure, mel_band_hz, timeline_figure
from serdemo.store import StoreError, as_stored
from serdemo.timeline import Timeline, analyze, max_timeline_s, open_recording
from serdemo.uikit import gpu, resolve_annotator, user_error
from serdemo.vad import MIN_TOTAL_SPEECH_S

log = logging.getLogger(__name__)
SEGMENT_ALPHA = 1.1  # the VTLP view of a selected segment (as the Analyse tab's default)


# ------------------------------------------------------------------------------------- state
@dataclass
class Loaded:
    """A session's current timeline and the audio it came from (a file: read spans from it)."""

    timeline: Timeline
    path: str


@dataclass
class Picked:
    """The selected segment: its 16 kHz samples (as the store keeps them) and the model's view of it."""

    index: int
    wave: np.ndarray
    offset_s: float
    predicted: str
    confidence: float
    checkpoint: str


def segment_rows(tl: Timeline) -> list[list]:
    return [[s.index + 1, round(s.start_s, 2), round(s.end_s, 2), s.label(), round(s.confidence(), 3)]
            for s in tl.segments]


def summary(tl: Timeline) -> str:
    counts: dict[str, float] = {}
    for s in tl.segments:
        counts[s.label()] = counts.get(s.label(), 0.0) + s.duration_s
    speech = sum(counts.values())
    mix = ", ".join(f"{k} {v / speech:.0%}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    n = len(tl.segments)
    return (f"**{n} segment{'s' if n != 1 else ''}**, {speech:.0f} s of speech in {tl.duration_s:.0f} s · {mix} · "
            f"analysed in {tl.elapsed_s:.1f} s ({tl.duration_s / max(tl.elapsed_s, 1e-6):.0f}× real time). "
            "Pick a segment in the table to see what the model heard and to relabel it.")


def timeline_tab(bench, annotator: gr.Textbox | None = None) -> None:
    """The Timeline tab; call inside ``gr.Blocks`` next to the other tabs."""
    def fail(exc, source=None):
        return user_error(exc, source, duration=None)

    def exports(tl: Timeline) -> tuple[str, str, str]:
        folder = Path(tempfile.mkdtemp(prefix="serdemo-timeline-"))
        paths = tl.export(folder, Path(tl.name).stem or "timeline")
        return str(paths["csv"]), str(paths["json"]), str(paths["labels"])

    @gpu
    def run(audio, model_name, source=None, progress=gr.Progress()):
        """Emotion over time for a long recording: figure, segments table, summary, CSV, JSON, label track."""
        if not audio:
            raise fail("No audio was given: upload a recording (or speak into the microphone) first.")
        try:
            predictor = bench.predictor(model_name)
            name = Path(audio).name
            tl = analyze(audio, predictor, progress=lambda f, d: progress(f, desc=d), name=name)
        except (AudioError, CheckpointError) as exc:
            raise fail(exc, source) from None
        csv_path, json_path, labels_path = exports(tl)
        return (gr.update(value=timeline_figure(tl), visible=True), segment_rows(tl), summary(tl), csv_path,
                json_path, labels_path, Loaded(tl, str(audio)), None)

    @gpu
    def pick(evt: gr.SelectData, loaded: Loaded | None, model_name):
        """A segment picked in the table: its three-panel view, probabilities and the relabel choices."""
        if loaded is None:
            return (gr.skip(),) * 7
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not 0 <= row < len(loaded.timeline.segments):
            return (gr.skip(),) * 7
        seg = loaded.timeline.segments[row]
        try:
            predictor = bench.predictor(model_name or loaded.timeline.checkpoint)
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
        classes = list(pred.probabilities["emotion"])
        picked = Picked(row, wave, seg.start_s, pred.label(), pred.confidence(), predictor.name)
        return (timeline_figure(loaded.timeline, selected=row), fig, gr.update(visible=True),
                pred.probabilities["emotion"],
                gr.update(choices=classes, value=seg.label()), picked,
                f"Segment {row + 1} ({seg.start_s:.2f}–{seg.end_s:.2f} s): the timeline says **{seg.label()}** "
                f"({seg.confidence():.0%}); the segment as one clip: {pred.label()} ({pred.confidence():.0%}).")

    def save(picked: Picked | None, loaded: Loaded | None, label, typed_name="", request: gr.Request = None):
        """Store the picked segment as its own clip (linked to its recording and offset) with the label."""
        who = resolve_annotator(typed_name or "", request)
        try:
            if picked is None or loaded is None:
                raise StoreError("pick a segment in the table first, then label it")
            tl = loaded.timeline
            sha = bench.store.add_clip(picked.wave, source_name=f"{tl.name} @ {picked.offset_s:.2f} s",
                                       predicted=picked.predicted, confidence=picked.confidence,
                                       checkpoint=picked.checkpoint, source_clip=tl.source_sha,
                                       offset_s=round(picked.offset_s, 3))
            event = bench.store.label_clip(sha, label, who)
        except StoreError as exc:
            raise fail(exc) from None
        return (f"Saved segment {picked.index + 1} as clip `{sha[:12]}`: **{event.label}** by {event.annotator} "
                f"(the model said {event.predicted}); from `{tl.name}` at {picked.offset_s:.2f} s.")

    # ---------------------------------------------------------------- live microphone
    def live_start(model_name):
        """Recording started: the model is loaded now rather than on the first chunk. (The live state is
        not touched here: a chunk may already have started it; stopping resets it.)"""
        try:
            bench.predictor(model_name)
        except CheckpointError as exc:
            raise fail(exc, MICROPHONE) from None
        return None, "Listening… the first prediction comes after a second of sound.", gr.update(visible=True)

    @gpu
    def live_chunk(chunk, live: LiveTimeline | None, model_name):
        """One streamed chunk: extend the recording; every second, classify the latest 3 s."""
        if chunk is None:
            return gr.skip(), gr.skip(), live, gr.skip()
        try:
            if live is None:
                live = LiveTimeline(bench.predictor(model_name))
            rate, data = chunk
            win = live.feed(rate, data)
        except (AudioError, CheckpointError) as exc:
            raise fail(exc, MICROPHONE) from None
        if win is None:
            return gr.skip(), gr.skip(), live, gr.skip()
        classes = list(live.predictor.heads["emotion"])
        fig = live_figure(live.windows, classes, live.duration_s, MIN_TOTAL_SPEECH_S)
        if live.has_speech(win):
            probs = win.probabilities["emotion"]
            text = (f"{live.duration_s:.0f} s recorded · now: **{win.label()}** "
                    f"({max(probs.values()):.0%}) over {win.start_s:.0f}–{win.end_s:.0f} s")
        else:
            probs = {"no speech": 1.0}
            text = f"{live.duration_s:.0f} s recorded · no speech in the latest {win.end_s - win.start_s:.0f} s"
        if live.truncated:
            text += f" · the limit of {max_timeline_s():.0f} s is reached: stop to analyse"
        return probs, fig, live, text

    def live_stop(live: LiveTimeline | None, model_name, progress=gr.Progress()):
        """Recording stopped: keep it (a wav for playback) and analyse it as a timeline for relabelling."""
        if live is None or not live.samples:
            raise fail("Nothing reached the server yet: allow the microphone, speak for a few seconds, then stop.",
                       MICROPHONE)
        folder = Path(tempfile.mkdtemp(prefix="serdemo-live-"))
        path = folder / f"recording-{time.strftime('%Y%m%d-%H%M%S')}.wav"
        sf.write(path, live.finish(), SAMPLE_RATE, subtype="PCM_16")
        try:
            figure, rows, info, csv_path, json_path, labels_path, loaded, picked = run(
                str(path), model_name, MICROPHONE, progress)
        except gr.Error as exc:  # e.g. no speech: the recording is still kept for playback
            return (str(path), *(gr.skip(),) * 8,
                    f"Stopped after {live.duration_s:.0f} s. {exc.message} The recording is in the upload box.", None)
        return (str(path), figure, rows, info, csv_path, json_path, labels_path, loaded, picked,
                f"Stopped after {live.duration_s:.0f} s: the recording is below as a timeline; pick a segment to "
                "relabel it.", None)

    # ---------------------------------------------------------------- layout
    with gr.Tab("Timeline", elem_id="tab-timeline"):
        gr.Markdown(f"Emotion over time for a long recording (up to {max_timeline_s() / 60:.0f} min): speech is "
                    "cut into segments, long ones into overlapping 4 s windows, and each is classified.")
        loaded_state = gr.State(None)
        picked_state = gr.State(None)
        live_state = gr.State(None)
        with gr.Row():
            with gr.Column(scale=3):
                t_audio = gr.Audio(sources=["upload"], type="filepath", label="Long recording",
                                   elem_id="timeline-audio")
                with gr.Row(equal_height=True):
                    t_model = gr.Dropdown(bench.choices(), value=bench.default_choice(), label="Model",
                                          elem_id="timeline-model", scale=3)
                    t_run = gr.Button("Analyse over time", variant="primary", elem_id="timeline-run", scale=1)
            with gr.Column(scale=2):
                live_mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy",
                                    label="Or speak: live prediction every second", elem_id="live-mic")
                live_info = gr.Markdown(elem_id="live-info")
                live_probs = gr.Label(label="Now", num_top_classes=3, elem_id="live-probs")
        live_plot = gr.Plot(show_label=False, elem_id="live-figure", visible=False)
        t_info = gr.Markdown(elem_id="timeline-info")
        t_plot = gr.Plot(show_label=False, elem_id="timeline-figure", visible=False)
        with gr.Row():
            t_csv = gr.DownloadButton("CSV", elem_id="timeline-csv", size="sm")
            t_json = gr.DownloadButton("JSON", elem_id="timeline-json", size="sm")
            t_labels = gr.DownloadButton("Label track (Audacity / ELAN)", elem_id="timeline-labels", size="sm")
        t_table = gr.Dataframe(headers=["segment", "start (s)", "end (s)", "label", "confidence"],
                               interactive=False, label="Segments (pick one to see it and relabel it)",
                               elem_id="timeline-segments", max_height=300)
        with gr.Row(visible=False) as seg_row:  # shown once a segment is picked
            with gr.Column(scale=3):
                s_plot = gr.Plot(show_label=False, elem_id="timeline-segment-figure")
            with gr.Column(scale=1):
                s_probs = gr.Label(label="Segment as one clip", num_top_classes=7, elem_id="timeline-segment-probs")
                s_label = gr.Radio([], label="True label of this segment", elem_id="timeline-label-choice")
                s_save = gr.Button("Save label for this segment", variant="primary", elem_id="timeline-save")
                s_status = gr.Markdown(elem_id="timeline-status")

    # ---------------------------------------------------------------- wiring
    hidden = dict(api_visibility="private", show_progress="hidden")
    t_run.click(run, [t_audio, t_model], [t_plot, t_table, t_info, t_csv, t_json, t_labels, loaded_state, picked_state],
                api_name="timeline", show_progress_on=t_info, concurrency_limit=1)
    t_table.select(pick, [loaded_state, t_model], [t_plot, s_plot, seg_row, s_probs, s_label, picked_state, s_status],
                   api_visibility="private", show_progress_on=s_plot)
    s_save.click(save, [picked_state, loaded_state, s_label] + ([annotator] if annotator is not None else []),
                 [s_status], api_visibility="private", show_progress_on=s_status)
    live_mic.start_recording(live_start, [t_model], [live_probs, live_info, live_plot], **hidden)
    live_mic.stream(live_chunk, [live_mic, live_state, t_model], [live_probs, live_plot, live_state, live_info],
                    stream_every=0.5, time_limit=max_timeline_s(), concurrency_limit=None, **hidden)
    live_mic.stop_recording(live_stop, [live_state, t_model],
                            [t_audio, t_plot, t_table, t_info, t_csv, t_json, t_labels, loaded_state, picked_state,
                             live_info, live_state], api_visibility="private", show_progress_on=t_info)
