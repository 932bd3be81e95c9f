"""The Timeline tab: layout and wiring. Its state and actions are :class:`serdemo.timeline_bench.TimelineDesk`
methods; the functions here only turn their named results into component updates.

``timeline_tab(bench, annotator)`` builds the tab inside ``build_app``'s Blocks (one call) and wires
it; ``bench`` is the app's Workbench. Named API endpoint: ``/timeline`` (audio file, model, and optionally
adapt_voice: read the windows relative to the recording's voice) -> figure, segments table, summary, CSV,
JSON, label track.
"""

from __future__ import annotations

import gradio as gr

from serdemo.audio import MICROPHONE, AudioError
from serdemo.checkpoint import CheckpointError
from serdemo.live import MAX_LIVE_SESSIONS, LiveTimeline, places_message, start_watcher
from serdemo.timeline import ADAPT_VOICE, max_timeline_s
from serdemo.timeline_bench import SEGMENT_HEADERS, Loaded, Picked, TimelineDesk, fail
from serdemo.uikit import (STREAMED, gpu, login_name, model_picker, request_client, resolve_annotator, stream_closer,
                           streamed_files)

# A live stream holds its place in this limit from its first chunk to its last: every recording the live
# sessions admit (serdemo.live.MAX_LIVE_SESSIONS) has one, so none waits in the queue, and two more places
# answer the streams refused meanwhile (all places taken, one user's share, too fast) with their message at
# once instead of leaving them waiting silently in Gradio's queue. The handler only appends audio (the chunks
# Gradio replaced included: serdemo.uikit.StreamedChunks); the model runs on serdemo.live's own classifier threads.
LIVE_CHUNKS_AT_ONCE = MAX_LIVE_SESSIONS + 2


def release_live(live) -> None:
    """A page session forgotten (or its state expired): its live recording lets its audio and its place go."""
    if live is not None and hasattr(live, "release"):
        live.release("session")


def live_owner(request) -> str | None:
    """Whose live recording this is: the login, else the page session."""
    user = login_name(request)
    if user:
        return f"login:{user}"
    session = getattr(request, "session_hash", None)
    return f"session:{session}" if session else None


def timeline_tab(bench, annotator: gr.Textbox | None = None) -> None:
    """The Timeline tab; call inside ``gr.Blocks`` next to the other tabs."""
    desk = TimelineDesk(bench)

    def shown(view):
        return view.figure, view.rows, view.summary, view.csv, view.json, view.labels, view.loaded, None

    @gpu
    def run(audio, model_name, adapt_voice=ADAPT_VOICE, source=None, progress=gr.Progress()):
        """Emotion over time for a long recording: figure, segments table, summary, CSV, JSON, label track.
        ``adapt_voice``: read every window relative to the recording's voice (models that adapt)."""
        return shown(desk.analyse(audio, model_name, source, progress, adapt_voice))

    @gpu
    def pick(evt: gr.SelectData, loaded: Loaded | None, model_name):
        """A segment picked in the table, by the number its row shows (never its position): its three-panel
        view, probabilities and the relabel choices."""
        v = desk.pick(loaded, (getattr(evt, "row_value", None) or [None])[0], model_name)
        if v is None:
            return (gr.skip(),) * 7
        return (v.timeline_figure, v.figure, gr.update(visible=True), v.probabilities,
                gr.update(choices=v.classes, value=v.label), v.picked, v.status)

    def save(picked: Picked | None, loaded: Loaded | None, label, typed_name="", request: gr.Request = None):
        """Store the picked segment as its own clip (linked to its recording and offset) with the label; the
        table, figure and exports then show the human label beside the model's."""
        status, v = desk.save(picked, loaded, label, resolve_annotator(typed_name or "", request))
        return status, v.figure, v.rows, v.csv, v.json, v.labels, v.loaded

    def forget_segment():
        """A new recording: the previous one's segment panel goes."""
        return gr.update(visible=False), "", None

    def live_start(model_name):
        """Recording started: load the model now, and say so at once when every live place is taken. (The
        live state is not touched here: a chunk may already have started it; stopping resets it.)"""
        full = places_message()
        if full:
            return None, full, gr.update(visible=False)
        return None, desk.live_start(model_name), gr.update(visible=True)

    def live_chunk(chunk, live: LiveTimeline | None, model_name, adapt_voice=ADAPT_VOICE, request: gr.Request = None):
        """Streamed chunks: extend the recording and return at once; every second the latest 3 s go to a
        classifier thread unless it is still busy, and a finished prediction shows with a later chunk. Gradio
        hands this handler only the latest chunk (one comes every 0.1 s); the ones posted meanwhile come from
        :func:`~serdemo.uikit.streamed_files`, so every second recorded is kept; predictions may be skipped."""
        first = live is None
        if first:  # the recording's first chunk (it came with the stream's start, not through its route)
            try:  # a place for this login (or page) and address, if one is free: else a message, at once
                live = LiveTimeline(bench.predictor(model_name), adapt_voice=bool(adapt_voice), background=True,
                                    owner=live_owner(request), address=request_client(request))
            except (AudioError, CheckpointError) as exc:
                raise fail(exc, MICROPHONE) from None
            start_watcher()  # idle or starved recordings are released within seconds
            live.on_release = stream_closer(request)  # released (idle, too long): its stream ends at once
        posted = streamed_files(request)
        chunks = [chunk] if posted is None else ([chunk] if first else []) + posted
        shown = None
        for piece in chunks:
            u = desk.live_feed(live, piece, model_name)
            shown = u if u.text is not None else shown
        if shown is None:
            return gr.skip(), gr.skip(), live, gr.skip()
        return shown.probabilities, shown.figure, live, shown.text

    def live_stop(live: LiveTimeline | None, model_name, adapt_voice=ADAPT_VOICE, progress=gr.Progress(),
                  request: gr.Request = None):
        """Recording stopped: keep it (a wav for playback) and analyse it as a timeline for relabelling. Chunks
        posted before the stop that the stream had not handled yet join the recording first."""
        for piece in (streamed_files(request) or []) if live is not None else []:
            try:
                desk.live_feed(live, piece, model_name)
            except gr.Error:  # a bad last chunk: the recording up to it is kept
                break
        STREAMED.forget(getattr(request, "session_hash", None))
        st = desk.live_stop(live, model_name, progress, adapt_voice)
        if st.view is None:
            return (st.recording, *(gr.skip(),) * 8, st.text, None, gr.update(visible=False))
        figure, *rest = shown(st.view)
        return (st.recording, gr.update(value=figure, visible=True), *rest, st.text, None, gr.update(visible=False))

    # ---------------------------------------------------------------- layout
    with gr.Tab("Timeline", elem_id="tab-timeline"):
        gr.Markdown(f"Emotion over time for a long recording (up to {max_timeline_s() / 60:.0f} min): speech is "
                    "cut into segments, long ones into overlapping 4 s windows, and each is classified.")
        loaded_state = gr.State(None)
        picked_state = gr.State(None)
        live_state = gr.State(None, delete_callback=release_live)  # a forgotten session lets its audio go
        with gr.Row():
            with gr.Column(scale=3):
                t_audio = gr.Audio(sources=["upload"], type="filepath", label="Long recording",
                                   elem_id="timeline-audio")
                with gr.Row(equal_height=True):
                    t_model = model_picker(bench, elem_id="timeline-model", scale=3)
                    t_run = gr.Button("Analyse over time", variant="primary", elem_id="timeline-run", scale=1)
                t_adapt = gr.Checkbox(ADAPT_VOICE, label="Adapt to the speaker's voice", elem_id="timeline-adapt",
                                      info="One recording, one voice: each window is read relative to the voice of the "
                                           "whole recording (or, live, of what was heard so far), which takes much of "
                                           "who is speaking out of the guess. Models that adapt only.")
            with gr.Column(scale=2):
                live_mic = gr.Audio(sources=["microphone"], streaming=True, type="filepath",
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
        t_table = gr.Dataframe(headers=SEGMENT_HEADERS,
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
    show_plot = dict(fn=lambda: gr.update(visible=True), inputs=None, outputs=t_plot, queue=False, **hidden)
    t_run.click(forget_segment, None, [seg_row, s_status, picked_state], queue=False, **hidden).then(
        run, [t_audio, t_model, t_adapt], [t_plot, t_table, t_info, t_csv, t_json, t_labels, loaded_state, picked_state],
        api_name="timeline", show_progress_on=t_info, concurrency_limit=1, concurrency_id="timeline").success(**show_plot)
    t_table.select(pick, [loaded_state, t_model], [t_plot, s_plot, seg_row, s_probs, s_label, picked_state, s_status],
                   api_visibility="private", show_progress_on=s_plot)
    s_save.click(save, [picked_state, loaded_state, s_label] + ([annotator] if annotator is not None else []),
                 [s_status, t_plot, t_table, t_csv, t_json, t_labels, loaded_state], api_visibility="private",
                 show_progress_on=s_status)
    live_mic.start_recording(live_start, [t_model], [live_probs, live_info, live_plot], **hidden)
    live_mic.stream(live_chunk, [live_mic, live_state, t_model, t_adapt], [live_probs, live_plot, live_state, live_info],
                    stream_every=0.5, time_limit=max_timeline_s(), concurrency_limit=LIVE_CHUNKS_AT_ONCE,
                    concurrency_id="live", **hidden)
    live_mic.stop_recording(live_stop, [live_state, t_model, t_adapt],
                            [t_audio, t_plot, t_table, t_info, t_csv, t_json, t_labels, loaded_state, picked_state,
                             live_info, live_state, seg_row], api_visibility="private", show_progress_on=t_info,
                            concurrency_id="timeline")  # a stopped recording is a timeline: one at a time
