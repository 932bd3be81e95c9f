"""The Gradio page: layout and wiring only. Every event calls a :class:`serdemo.workbench.Workbench`
method, through :class:`serdemo.endpoints.Endpoints` where a result must become component updates;
the Timeline tab is :func:`serdemo.timeline_ui.timeline_tab`. Nothing imports this module but ``app.py`` (and tests).

Named API endpoints (``gradio_client``): ``/analyze``, ``/warp``, ``/relabel``, ``/confirm``,
``/history``, ``/queue``, ``/labels``, ``/forget_voice``, ``/agreement``, ``/export``, ``/models``, ``/model_card``,
``/model_metrics``, ``/retrain_plan`` (what a run would train on, Markdown), ``/retrain``, ``/retrain_cancel``,
``/retrain_status`` (Markdown), ``/retrain_progress`` (a dict), ``/retrain_keep`` and ``/retrain_discard`` (a done
run's checkpoint), and the Timeline tab's ``/timeline``.
"""

from __future__ import annotations

import gradio as gr

from serdemo.audio import MICROPHONE
from serdemo.endpoints import Endpoints
from serdemo.labels import ANNOTATION_LABELS
from serdemo.plots import warp_figure
from serdemo.timeline_ui import timeline_tab
from serdemo.uikit import CSS, SHORTCUTS_JS, annotator_field, checked_by_the_callback, gpu, model_picker, voice_scope
from serdemo.workbench import (AGREEMENT_HEADERS, ALPHA_MAX, ALPHA_MIN, HISTORY_HEADERS, MAX_QUEUE, MAX_VOICE_NAME,
                               PICKER_INFO, QUEUE_HEADERS, Settings, Workbench)

__all__ = ["CSS", "SHORTCUTS_JS", "Settings", "Workbench", "build_app"]


def build_app(settings: Settings | None = None) -> gr.Blocks:
    """The page: layout, then wiring of each event to a :class:`Workbench` method."""
    bench = Workbench(settings or Settings.from_env())
    ep = Endpoints(bench)

    # the one GPU callback stays a plain function, decorated for ZeroGPU (spaces.GPU) as before
    @gpu
    def analyze(audio, model_name, alpha, view="difference", voice=None, annotator=None, source=None,
                request: gr.Request = None, progress=gr.Progress()):
        """Analyse a clip: probabilities, auxiliary heads, the figure, the warp, its clip id and label choices.
        ``voice`` (optional; None, so API callers may leave it and ``annotator`` out): clips analysed under one
        voice name (per login, annotator or session) adapt together; the info line says over how many clips."""
        return ep.analysis_outputs(bench.analyse(audio, model_name, alpha, view, source, progress, voice,
                                                 voice_scope(request, annotator)))

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="serdemo — what the model hears") as app:
        with gr.Row(equal_height=True):
            with gr.Column(scale=3, min_width=320):
                gr.Markdown("# serdemo\nRecord or upload speech; see its spectrogram, what VTLP changes, where "
                            "the model's attention falls and what it predicts. Correct it when it is wrong.")
            with gr.Column(scale=1, min_width=260):
                annotator = gr.Textbox(label="Annotator (you, for every tab)", max_lines=1, elem_id="annotator",
                                       placeholder="your name, set once for this session")
        remembered = gr.BrowserState("", storage_key="serdemo-annotator")  # the name, in this browser
        source = gr.State("upload")  # where the clip in `audio` came from: MICROPHONE or "upload"
        with gr.Tab("Analyse", elem_id="tab-analyse"):
            with gr.Row():
                with gr.Column(scale=3):
                    audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech")
                    model = model_picker(bench, elem_id="model", info=PICKER_INFO)
                    with gr.Row(elem_id="voice-row"):
                        voice = gr.Textbox(label="Voice name (optional)", max_lines=1, max_length=MAX_VOICE_NAME,
                                           elem_id="voice-name", scale=3, min_width=200, placeholder="e.g. alice",
                                           info="Clips analysed under one name adapt to that speaker's voice "
                                                "together; leave empty to read each clip on its own")
                        forget = gr.Button("Forget this voice", elem_id="voice-forget", size="sm", scale=1,
                                           min_width=130)
                    voice_status = gr.Markdown(elem_id="voice-status")
                    run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    info = gr.Markdown(elem_id="analysis-info")
                with gr.Column(scale=2):
                    probs = gr.Label(label="Emotion", num_top_classes=8, elem_id="emotion-probs")
                    aux = gr.Markdown(label="Auxiliary heads", elem_id="aux-heads")
            figure = gr.Plot(label="What the model hears", show_label=False, elem_id="analysis-figure")
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        # an API caller's word or NaN reaches checked_alpha, which names the range
                        alpha = checked_by_the_callback(gr.Slider(
                            ALPHA_MIN, ALPHA_MAX, value=1.1, step=0.01, elem_id="alpha",
                            label="VTLP alpha (warp factor): drag, type or use the arrow keys"))
                        vtlp_view = gr.Radio([("warped − original", "difference"), ("warped", "warped")],
                                             value="difference", label="VTLP panel shows", elem_id="vtlp-view")
                    warp_plot = gr.Plot(warp_figure(1.1), label="Warp function", elem_id="warp-plot")
                with gr.Column(scale=2):
                    clip_id = gr.Textbox(label="Clip id", interactive=False, max_lines=1, elem_id="clip-id")
                    label_choice = gr.Radio([], label="True label (keys 1-9)", elem_id="label-choice")
                    with gr.Row():
                        confirm_btn = gr.Button("Model is right (c)", elem_id="confirm-label")
                        save_btn = gr.Button("Save label (s)", variant="primary", elem_id="save-label")
                    status = gr.Markdown(elem_id="relabel-status")
        with gr.Tab("Annotate", elem_id="tab-annotate") as annotate_tab:
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        show = gr.Radio([("unlabelled only", "unlabelled"), ("all clips", "all")], value="unlabelled",
                                        label="Queue shows", elem_id="queue-show")
                        limit = gr.Number(50, label="At most", precision=0, minimum=1, maximum=MAX_QUEUE, min_width=90)
                        refresh = gr.Button("Refresh queue", elem_id="queue-refresh", min_width=120, size="sm")
                    queue_df = gr.Dataframe(headers=QUEUE_HEADERS,
                                            interactive=False, elem_id="queue", wrap=False,
                                            label="Queue: least confident model guess first (click a row)")
                    queue_ids = gr.State([])  # the full clip id of each queue row
                    q_saved = gr.State("")  # the clip the last save landed on
                with gr.Column(scale=2):
                    q_clip = gr.Textbox(label="Clip id", max_lines=1, elem_id="q-clip",
                                        placeholder="click a queue row, or paste an id and press Enter")
                    q_info = gr.Markdown("_no clip selected: click a queue row_", elem_id="q-info")
                    q_audio = gr.Audio(label="Playback", interactive=False, type="filepath", elem_id="q-audio")
                    q_label = gr.Radio(list(ANNOTATION_LABELS), label="Label (keys 1-9)", elem_id="q-label-choice")
                    with gr.Row():
                        q_confirm = gr.Button("Model is right (c)", elem_id="q-confirm")
                        q_save = gr.Button("Save label (s)", variant="primary", elem_id="q-save")
                    q_status = gr.Markdown(elem_id="q-status")
            q_hist = gr.Dataframe(headers=HISTORY_HEADERS, label="History of this clip", interactive=False,
                                  elem_id="q-history")
            counts = gr.Dataframe(headers=["count of", "label / annotator", "n"], value=bench.counts, interactive=False,
                                  label="Counts: clips per current label; save events per annotator", elem_id="counts")
        with gr.Tab("Agreement & export", elem_id="tab-agreement") as agreement_tab:
            agree_md = gr.Markdown(elem_id="agreement-summary")
            agree_btn = gr.Button("Refresh agreement", elem_id="agreement-refresh", size="sm")
            agree_annotators = gr.Dataframe(headers=AGREEMENT_HEADERS, interactive=False, elem_id="agreement-annotators",
                                            label="Per annotator: agreement with the others on shared clips")
            agree_clips = gr.Dataframe(headers=["clip", "agree"], interactive=False, elem_id="agreement-clips",
                                       label="Clips labelled by more than one annotator (disagreements first)")
            with gr.Row(equal_height=True):
                export_kind = gr.Radio([("audiofolder: metadata.csv + audio (Hugging Face datasets)", "audiofolder"),
                                        ("training manifest + audio (python -m training.fit)", "manifest")],
                                       value="audiofolder", label="Export the labelled clips as", elem_id="export-kind")
                export_btn = gr.Button("Export as zip", elem_id="export", scale=0, min_width=160, variant="primary")
            export_file = gr.File(label="Download the export", interactive=False, elem_id="export-file",
                                  visible=False)  # shown once there is a zip
        with gr.Tab("Models", elem_id="tab-models") as models_tab:
            with gr.Row(equal_height=True):
                m_pick = model_picker(bench, "Checkpoint", elem_id="model-pick", scale=4, info=PICKER_INFO)
                reload_btn = gr.Button("Reload checkpoints", scale=1, min_width=160, size="sm")
            m_overview = gr.Markdown(bench.models_overview, elem_id="models-overview")
            with gr.Row():
                with gr.Column(scale=1, min_width=340):
                    m_summary = gr.Markdown(elem_id="model-summary")
                    m_calibration = gr.Markdown(elem_id="model-calibration")
                    m_reliability = gr.Plot(label="Reliability", show_label=False, elem_id="model-reliability")
                with gr.Column(scale=1, min_width=340):
                    m_conf = gr.Plot(label="Confusion matrix (test speakers)", show_label=False,
                                     elem_id="model-confusion")
            gr.Markdown("#### Held-out evaluations, per corpus")
            m_metrics = gr.Markdown(elem_id="model-metrics")
            with gr.Accordion("Raw card (JSON)", open=False):
                m_card = gr.JSON(label="Card")
            with gr.Row():
                retrain_btn = gr.Button("Fine-tune the selected model on the stored annotations", elem_id="retrain",
                                        scale=4)
                cancel_btn = gr.Button("Cancel the run", elem_id="retrain-cancel", scale=1, min_width=140, size="sm")
            retrain_plan = gr.Markdown(elem_id="retrain-plan")  # before a run: what it would train on, how long
            retrain_bar = gr.HTML(elem_id="retrain-progress")
            retrain_md = gr.Markdown(elem_id="retrain-status")
            retrain_table = gr.HTML(elem_id="retrain-comparison")
            with gr.Row(visible=False) as decide_row:  # a done run: keep its checkpoint, or discard it
                keep_btn = gr.Button("Keep the new model (serve it)", variant="primary", elem_id="retrain-keep")
                discard_btn = gr.Button("Discard it (delete its files)", variant="stop", elem_id="retrain-discard")
            seen_run = gr.State("")  # the finished run whose checkpoint this page's pickers already list
        # further tabs (the timeline) are added here
        timeline_tab(bench, annotator)

        # ---------------------------------------------------------------- wiring
        hidden = dict(api_visibility="private", show_progress="hidden")
        app.load(annotator_field, [remembered], annotator, **hidden)
        for typed in (annotator.blur, annotator.submit):
            typed(lambda name: ((name or "").strip(), "", ""), annotator, [remembered, status, q_status], queue=False,
                  **hidden)  # a "Saved: ... by <old name>" line does not outlive the name
        audio.stop_recording(lambda: MICROPHONE, None, source, queue=False, **hidden)
        audio.upload(lambda: "upload", None, source, queue=False, **hidden)
        # clear first: a failed analysis must leave no previous clip id, prediction or label choices behind;
        # progress and a failure show on the emotion panel only (the message in a toast), not on every panel
        run.click(ep.clear_analysis, None, [probs, aux, figure, clip_id, info, label_choice, status], queue=False,
                  **hidden).then(
            analyze, [audio, model, alpha, vtlp_view, voice, annotator, source],
            [probs, aux, figure, warp_plot, clip_id, info, label_choice], api_name="analyze",
            show_progress_on=probs)
        # every change of the slider (drag, arrow keys, a typed value) redraws; the latest value wins
        redraw = dict(fn=ep.warp, inputs=[alpha, clip_id, model, vtlp_view], outputs=[figure, warp_plot],
                      trigger_mode="always_last", show_progress="hidden")
        alpha.input(api_name="warp", **redraw)
        vtlp_view.input(api_visibility="private", **redraw)
        # the write endpoints take the clip id and plain strings: an API caller needs no session state
        forget.click(ep.forget_voice, [voice, annotator], [voice_status], api_name="forget_voice",
                     show_progress="hidden")
        gr.api(ep.relabel, api_name="relabel")
        gr.api(ep.confirm, api_name="confirm")
        gr.api(ep.labels, api_name="labels")
        gr.api(ep.queue, api_name="queue")
        gr.api(ep.agreement, api_name="agreement")
        queue_refresh = dict(fn=ep.queue_view, inputs=[limit, show], outputs=[queue_df, queue_ids], **hidden)
        agree_refresh = dict(fn=ep.agreement_view, inputs=None, outputs=[agree_md, agree_clips, agree_annotators],
                             **hidden)
        # the Analyse tab's save leaves the Annotate tab's clip and its history alone
        save_btn.click(ep.relabel, [clip_id, label_choice, annotator], [status, counts],
                       show_progress_on=status, api_visibility="private").success(**queue_refresh)
        confirm_btn.click(ep.confirm, [clip_id, annotator], [status, counts],
                          show_progress_on=status, api_visibility="private").success(**queue_refresh)
        # the Annotate tab labels its own clip; its history, the queue and the agreement then follow
        panel = [q_clip, q_audio, q_hist, q_label, q_info]  # after a save the next clip loads (or none)
        for saving in (q_save.click(ep.save_on_tab, [q_clip, q_label, annotator], [q_status, counts, q_hist, q_saved],
                                    show_progress_on=q_status, api_visibility="private"),
                       q_confirm.click(ep.confirm_on_tab, [q_clip, annotator], [q_status, counts, q_hist, q_saved],
                                       show_progress_on=q_status, api_visibility="private")):
            saving.success(ep.advance, [q_clip, q_saved, limit, show], panel, **hidden)
            saving.success(**queue_refresh).success(**agree_refresh)
        for trigger in (refresh.click, show.input, limit.submit, app.load, annotate_tab.select):
            trigger(**queue_refresh)
        queue_df.select(ep.pick, [queue_ids], panel, api_visibility="private")
        q_clip.submit(bench.history, [q_clip], [q_hist], api_name="history")
        agree_btn.click(**agree_refresh)
        agreement_tab.select(**agree_refresh)
        app.load(**agree_refresh)
        app.load(bench.counts, None, [counts], **hidden)
        export_btn.click(ep.export, [export_kind], [export_file], api_name="export").success(
            lambda: gr.update(visible=True), None, export_file, queue=False, **hidden)
        reload_btn.click(ep.models_on_page, None, [model, m_pick, m_overview], api_visibility="private")
        gr.api(ep.models, api_name="models")
        m_pick.change(ep.model_card, [m_pick], [m_summary, m_metrics, m_conf, m_card], api_name="model_card")
        app.load(ep.model_card, [m_pick], [m_summary, m_metrics, m_conf, m_card], **hidden)
        for when in (m_pick.change, app.load):
            when(ep.model_extras, [m_pick], [m_calibration, m_reliability], **hidden)
        gr.api(ep.model_metrics, api_name="model_metrics")
        # the run's progress comes from the retrainer, polled by every page (and read on load: a reload shows it)
        view = dict(fn=ep.retrain_view, inputs=[seen_run],
                    outputs=[retrain_bar, retrain_md, retrain_table, model, m_pick, seen_run, decide_row], **hidden)
        gr.api(bench.retrain_plan, api_name="retrain_plan")  # named first: the page's own calls below are private
        plan = dict(fn=bench.retrain_plan, inputs=[m_pick], outputs=[retrain_plan], **hidden)
        for when in (m_pick.change, models_tab.select, app.load):
            when(**plan)
        # the annotator's name goes with each: without logins, a run is that annotator's (else this page's)
        retrain_btn.click(ep.retrain, [m_pick, annotator], [retrain_md], api_name="retrain",
                          concurrency_limit=1).success(**view)
        cancel_btn.click(bench.retrain_cancel, [annotator], [retrain_md], api_name="retrain_cancel").success(**view)
        keep_btn.click(bench.retrain_keep, [annotator], [retrain_md], api_name="retrain_keep").success(**view)
        discard_btn.click(bench.retrain_discard, [annotator], [retrain_md], api_name="retrain_discard").success(
            **view).success(**plan)
        gr.Timer(2.0).tick(queue=False, **view)
        app.load(**view)
        gr.api(bench.retrain_status, api_name="retrain_status")
        gr.api(ep.retrain_progress, api_name="retrain_progress")
    app.workbench = bench
    return app
