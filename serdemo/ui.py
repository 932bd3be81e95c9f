"""The Gradio app: layout and thin callbacks. No model math and no SQL live here.

Named API endpoints (``gradio_client``): ``/analyze``, ``/warp``, ``/relabel``, ``/history``,
``/confirm``, ``/queue``, ``/export``, ``/models``, ``/model_card``, ``/model_metrics``, ``/retrain``,
``/retrain_status`` (Markdown), ``/retrain_progress`` (the run's status as a dict).
"""

from __future__ import annotations

import html
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from serdemo.audio import MAX_DURATION_S, MICROPHONE, AudioError
from serdemo.checkpoint import CheckpointError, list_checkpoints, read_card
from serdemo.inference import Predictor
from serdemo.plots import analysis_figure, confusion_figure, warp_figure
from serdemo.retrain import RetrainBusy, Retrainer
from serdemo.store import Store, StoreError, as_stored

ALPHA_MIN, ALPHA_MAX = 0.8, 1.2
log = logging.getLogger(__name__)

try:  # ZeroGPU on Hugging Face Spaces: GPU work runs inside spaces.GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

# Keyboard shortcuts act on the visible tab only, on that tab's own clip: keys 1-9 pick a label, "s"
# saves it, "c" confirms the model's prediction. Each key says what it did in a hint at the bottom of
# the page (the save itself answers in the tab's status line); on a tab without shortcuts it says so.
# Keys typed into a text field are left alone.
SHORTCUT_SCOPES = {  # tab elem_id -> its clip id box, label radio, save and confirm buttons
    "tab-analyse": {"clip": "#clip-id", "labels": "#label-choice", "save": "#save-label", "confirm": "#confirm-label"},
    "tab-annotate": {"clip": "#q-clip", "labels": "#q-label-choice", "save": "#q-save", "confirm": "#q-confirm"},
}
SHORTCUTS_JS = """
<script>
(() => {
const SCOPES = %s;
const visible = (el) => !!el && (el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null);
function hint(text) {
  let box = document.getElementById('shortcut-hint');
  if (!box) {
    box = document.createElement('div'); box.id = 'shortcut-hint'; box.setAttribute('role', 'status');
    box.style.cssText = 'position:fixed;bottom:16px;right:16px;z-index:1000;pointer-events:none;padding:8px 12px;'
      + 'border-radius:6px;background:#222;color:#fff;font:14px sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.3)';
    document.body.appendChild(box);
  }
  box.textContent = text; box.style.display = 'block';
  clearTimeout(box._timer); box._timer = setTimeout(() => { box.style.display = 'none'; }, 4000);
}
document.addEventListener('keydown', (e) => {
  const t = e.target;
  const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable || t.tagName === 'SELECT' ||
    (t.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(t.type)));
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !/^([1-9]|s|c)$/.test(e.key)) return;
  const tab = Object.keys(SCOPES).find((id) => visible(document.getElementById(id)));
  if (!tab) { hint('Shortcuts (1-9, s, c) work on the Analyse and Annotate tabs only'); return; }
  const s = SCOPES[tab], box = document.querySelector(`${s.clip} textarea, ${s.clip} input`);
  const clip = box && box.value ? `clip ${box.value.slice(0, 12)}` : 'no clip yet';
  const radios = document.querySelectorAll(`${s.labels} input[type=radio]`);
  const chosen = [...radios].find((r) => r.checked);
  e.preventDefault();
  if (/^[1-9]$/.test(e.key)) {
    if (radios.length < +e.key) { hint(`No label ${e.key} here (${radios.length} labels)`); return; }
    radios[+e.key - 1].click(); hint(`${e.key}: label ${radios[+e.key - 1].value} for ${clip}`);
  } else if (e.key === 's') {
    hint(`s: saving ${chosen ? chosen.value : 'no label'} for ${clip}`); document.querySelector(s.save)?.click();
  } else {
    hint(`c: confirming the model's prediction for ${clip}`); document.querySelector(s.confirm)?.click();
  }
});
})();
</script>
""" % json.dumps(SHORTCUT_SCOPES)


@dataclass
class Settings:
    checkpoint_dirs: tuple[Path, ...] = (Path("checkpoints"),)
    default_model: str = "default"
    data_dir: Path = Path("data")
    max_duration_s: float = MAX_DURATION_S
    device: str | None = None
    retrain_corpora: tuple[str, ...] | None = None  # None: the base checkpoint's own corpora
    retrain_epochs: int = 5
    retrain_args: tuple[str, ...] = ()

    @classmethod
    def from_env(cls) -> "Settings":
        dirs = [Path(os.environ.get("SERDEMO_CHECKPOINTS", "checkpoints"))]
        if os.environ.get("SERDEMO_EXTRA_CHECKPOINTS"):
            dirs.append(Path(os.environ["SERDEMO_EXTRA_CHECKPOINTS"]))
        corpora = os.environ.get("SERDEMO_RETRAIN_CORPORA")
        return cls(tuple(dirs), os.environ.get("SERDEMO_DEFAULT_MODEL", "default"),
                   Path(os.environ.get("SERDEMO_DATA", "data")),
                   float(os.environ.get("SERDEMO_MAX_DURATION_S", MAX_DURATION_S)),
                   os.environ.get("SERDEMO_DEVICE") or None,
                   tuple(c for c in corpora.split(",") if c) if corpora is not None else None,
                   int(os.environ.get("SERDEMO_RETRAIN_EPOCHS", "5")),
                   tuple(os.environ.get("SERDEMO_RETRAIN_ARGS", "").split()))


class Workbench:
    """App state shared by all sessions: the checkpoint catalogue, loaded predictors, the store."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.store = Store(settings.data_dir)
        # checkpoints trained from the app land beside the store and are listed like the others
        self.trained_dir = settings.data_dir / "checkpoints"
        if self.trained_dir not in settings.checkpoint_dirs:
            settings.checkpoint_dirs = (*settings.checkpoint_dirs, self.trained_dir)
        self.retrainer = Retrainer(settings.data_dir / "retrain", self.trained_dir, [], settings.retrain_epochs)
        self._predictors: dict[str, Predictor] = {}
        self._lock = threading.Lock()
        self.catalogue: dict[str, Path] = {}
        self.cards: dict[str, dict] = {}
        self.broken: dict[Path, str] = {}  # checkpoint folder -> why it is skipped
        self.reload()

    def reload(self) -> dict[str, Path]:
        """Rescan the checkpoint folders; a broken checkpoint is skipped with one warning (once per problem)."""
        found, cards, broken = {}, {}, {}
        for path in list_checkpoints(*self.settings.checkpoint_dirs):
            try:
                card = read_card(path)
            except CheckpointError as exc:
                broken[path] = str(exc)
                continue
            if path.name not in found:
                found[path.name], cards[path.name] = path, card
        for path, problem in broken.items():
            if self.broken.get(path) != problem:
                log.warning("skipping %s", problem)
        with self._lock:
            self.catalogue, self.cards, self.broken = found, cards, broken
            self._predictors = {k: v for k, v in self._predictors.items() if k in found}
        return found

    def choices(self) -> list[tuple[str, str]]:
        return [(f"{name} — {headline(self.cards[name])}", name) for name in self.catalogue]

    def default_choice(self) -> str | None:
        if self.settings.default_model in self.catalogue:
            return self.settings.default_model
        return next(iter(self.catalogue), None)

    def predictor(self, name: str | None) -> Predictor:
        name = name or self.default_choice()
        if name not in self.catalogue:
            self.reload()
        if name not in self.catalogue:
            raise CheckpointError(f"no checkpoint named {name!r}; press 'Reload checkpoints' or pick another")
        with self._lock:
            if name not in self._predictors:
                self._predictors[name] = Predictor.from_checkpoint(self.catalogue[name], self.settings.device)
            return self._predictors[name]


def headline(card: dict) -> str:
    """The picker's figure, the same kind for every model: UA / WA on the card's own test speakers
    (``metrics.test.overall``). Cross-validation and leave-one-corpus-out stay in the card view."""
    try:
        overall = card.get("metrics", {}).get("test", {}).get("overall")
        if not overall:
            return "no test-speaker metrics"
        speakers = (card.get("metrics", {}).get("test_speakers")
                    or card.get("training", {}).get("speakers", {}).get("test"))
        held_out = f"{len(speakers)} " if speakers else ""
        return f"UA {overall['ua']:.2f} / WA {overall['wa']:.2f} on its {held_out}test speakers"
    except (AttributeError, KeyError, TypeError, ValueError):
        return "metrics unreadable"


EVALUATIONS = (  # card metrics key -> what the figure is, in the card view
    ("test", "its test speakers (never seen in training)"),
    ("dev", "its dev speakers (used to pick the epoch)"),
    ("cv", "cross-validated (pooled over speaker-independent folds)"),
    ("loco", "leave-one-corpus-out (pooled over corpora)"),
)


def metrics_markdown(card: dict) -> str:
    """Every held-out evaluation of a card, one labelled row each (overall and per corpus)."""
    rows = ["| evaluation | set | UA | WA | macro-F1 | n |", "|---|---|---|---|---|---|"]
    for key, what in EVALUATIONS:
        block = card.get("metrics", {}).get(key)
        if not isinstance(block, dict):
            continue
        if key in ("cv", "loco"):
            what = f"{block.get('scheme', what)}: {what}"
            block = block.get("pooled") or {}
        for group, sc in block.items():
            if isinstance(sc, dict) and "ua" in sc:
                f1 = f"{sc['macro_f1']:.3f}" if sc.get("macro_f1") is not None else ""
                rows.append(f"| {what} | {group} | {sc['ua']:.3f} | {sc['wa']:.3f} | {f1} | {sc.get('n', '')} |")
    if len(rows) == 2:
        return "_this card holds no held-out metrics_"
    speakers = card.get("metrics", {}).get("test_speakers")
    note = f"\n\nTest speakers: {', '.join(speakers)}." if speakers else ""
    return "\n".join(rows) + note


def duration_text(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``; ``unknown`` for None."""
    if seconds is None:
        return "unknown"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def retrain_progress_html(st: dict) -> str:
    """A retraining run (:meth:`Retrainer.status`) as a progress bar with its step count and ETA."""
    if st.get("state", "idle") == "idle":
        return ""
    step, total, phase = st.get("step", 0), st.get("total_steps", 0), st.get("phase", st["state"])
    if phase == "done":
        value, text = (1, 1), "done: the new model is in the pickers"
    elif phase == "failed":
        value, text = (step, total or 1), "failed (see below)"
    elif phase == "comparing":
        value, text = (1, 1), "trained; scoring the previous and the new model on the same held-out clips"
    elif phase == "preparing" or not total:
        value, text = None, "reading the corpora and the stored clips"
    else:
        loss = f" · loss {st['loss']:.3f}" if st.get("loss") is not None else ""
        value = (step, total)
        text = (f"{step / total:.0%} · step {step}/{total} · epoch {st.get('current_epoch', 0)}/{st.get('of', 0)}"
                f"{loss} · ETA {duration_text(st.get('eta_s'))}")
    bar = (f'<progress value="{value[0]}" max="{value[1]}"' if value else "<progress") + \
        ' style="width:100%;height:16px"></progress>'
    name = html.escape(Path(st.get("out", "")).name)
    return (f'<div class="retrain-progress" data-phase="{phase}"><div><b>{name}</b>: {html.escape(text)}</div>'
            f"{bar}</div>")


def user_error(problem: Exception | str, source: str | None = None, duration: float | None = 10) -> gr.Error:
    """A problem the user can fix, as a ``gr.Error`` to raise: one log line, no traceback, no path.

    An :class:`AudioError` is worded for ``source`` (the microphone or an upload).
    """
    message = problem.for_source(source) if isinstance(problem, AudioError) else str(problem)
    log.warning("refused: %s", " ".join(message.split()))
    return gr.Error(message, duration=duration, print_exception=False)


def _annotator(name: str, request: gr.Request | None) -> str:
    user = getattr(request, "username", None) if request is not None else None
    return (user or name or "").strip()


def build_app(settings: Settings | None = None) -> gr.Blocks:
    settings = settings or Settings.from_env()
    bench = Workbench(settings)

    # the last attention per clip (bounded), so the slider can redraw without running the model
    bench.last_attention = OrderedDict()

    def remember_attention(clip_id: str, pred) -> None:
        """Keep the prediction's own attention and speech segments (never read back from a figure)."""
        bench.last_attention[clip_id] = (pred.attention_times_s, pred.attention, pred.speech_segments_s)
        bench.last_attention.move_to_end(clip_id)
        while len(bench.last_attention) > 512:
            bench.last_attention.popitem(last=False)

    # ---------------------------------------------------------------- callbacks
    @gpu
    def analyze(audio, model_name, alpha, source=None, progress=gr.Progress()):
        """Analyse a clip: probabilities per head, spectrogram + VTLP + attention figure, clip id.

        ``source``: where ``audio`` came from (the microphone or an upload), for the wording of errors.
        """
        t0 = time.perf_counter()
        try:
            progress(0.1, desc="decoding")
            pred_model = bench.predictor(model_name)
            # analyse exactly what the store keeps, so later views and retraining see the same clip
            wave = as_stored(pred_model.load(audio, max_duration_s=settings.max_duration_s))
            progress(0.4, desc="running the model")
            pred = pred_model.predict(wave, alpha=float(alpha))
            progress(0.8, desc="saving the clip")
            name = Path(audio).name if isinstance(audio, (str, os.PathLike)) else "recording"
            sha = bench.store.add_clip(wave, source_name=name, predicted=pred.label(),
                                       confidence=pred.confidence(), checkpoint=pred_model.name)
        except (AudioError, CheckpointError, StoreError) as exc:
            raise user_error(exc, source, duration=None) from None
        remember_attention(sha, pred)
        fig = analysis_figure(pred.frame_times_s, pred.logmel, pred.logmel_warped, pred.attention_times_s,
                              pred.attention, pred.alpha,
                              title=f"{pred.label()} ({pred.confidence():.0%}) — {pred_model.name}",
                              speech_segments_s=pred.speech_segments_s)
        aux = {h: p for h, p in pred.probabilities.items() if h != "emotion"}
        aux_md = "\n".join(f"**{h}**: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
                           for h, p in aux.items()) or "_this model has no auxiliary heads_"
        info = (f"clip `{sha[:12]}` · {pred.duration_s:.2f} s · analysed in "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms on {pred_model.device}")
        return (pred.probabilities["emotion"], aux_md, fig, warp_figure(float(alpha)), sha, info,
                gr.update(choices=list(pred.probabilities["emotion"]), value=pred.label()))

    def warp_view(alpha, clip_id, model_name):
        """Re-draw the VTLP view for a new alpha without running the model."""
        if not clip_id:
            return gr.skip(), warp_figure(float(alpha))
        try:
            pred_model = bench.predictor(model_name)
            wave = pred_model.load(str(bench.store.clip_path(clip_id)), max_duration_s=settings.max_duration_s)
            logmel = pred_model.warped_logmel(wave, 1.0)
            warped = pred_model.warped_logmel(wave, float(alpha))
        except (AudioError, CheckpointError, StoreError) as exc:
            raise user_error(exc) from None
        times = pred_model.features.frame_times_s(logmel.shape[1])
        last = bench.last_attention.get(clip_id)
        if last is None:  # analysed before a restart: this once, run the model for its attention
            pred = pred_model.predict(wave, alpha=None, require_speech=False)
            last = bench.last_attention[clip_id] = (pred.attention_times_s, pred.attention, pred.speech_segments_s)
        att_t, att, segs = last
        return (analysis_figure(times, logmel, warped, att_t, att, float(alpha), speech_segments_s=segs),
                warp_figure(float(alpha)))

    def relabel(clip_id: str, label: str, annotator_name: str = "",
                request: gr.Request = None) -> tuple[str, list[list]]:
        """Save a label for the stored clip ``clip_id`` (append-only). The model's prediction, confidence
        and checkpoint are recorded from the store (the clip's latest analysis), whoever calls.
        Returns a status line and the counts (rows of by, name, count)."""
        return save_label(clip_id, label, annotator_name, request)

    def confirm(clip_id: str, annotator_name: str = "", request: gr.Request = None) -> tuple[str, list[list]]:
        """Confirm the model's prediction for the stored clip ``clip_id`` (its latest analysis).
        Returns a status line and the counts (rows of by, name, count)."""
        return save_label(clip_id, None, annotator_name, request)

    def save_label(clip_id, label, annotator_name, request):
        who = _annotator(annotator_name, request)
        try:
            if not clip_id:
                raise StoreError("analyse a clip (or pick one from the queue) first, then label it")
            event = bench.store.label_clip(clip_id, label, who)
        except StoreError as exc:
            raise user_error(exc) from None
        n = len(bench.store.history(clip_id))
        if event.predicted == event.label:
            verdict = f"confirmed as **{event.label}**"
        elif event.predicted:
            verdict = f"corrected to **{event.label}** (the model said {event.predicted})"
        else:
            verdict = f"labelled **{event.label}**"
        return f"Saved: clip `{clip_id[:12]}` {verdict} by {who} (label #{n} for this clip).", counts_table()

    def history(clip_id):
        """A clip's label history, oldest first."""
        if not clip_id:
            return []
        return [[e.created_utc, e.label, e.annotator, e.predicted or "", "" if e.confidence is None else round(e.confidence, 3),
                 e.checkpoint or ""] for e in bench.store.history(clip_id)]

    def queue(limit=50):
        """Stored clips, least confident model prediction first."""
        return [[q["clip"], q["source_name"] or "", round(q["duration_s"], 2), q["predicted"] or "",
                 "" if q["confidence"] is None else round(q["confidence"], 3), q["label"] or ""]
                for q in bench.store.queue(int(limit))]

    def counts_table():
        c = bench.store.counts()
        rows = [["label", k, v] for k, v in c["label"].items()] + [["annotator", k, v] for k, v in c["annotator"].items()]
        return rows

    def pick_from_queue(evt: gr.SelectData, rows):
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        try:
            clip = rows.iloc[row, 0] if hasattr(rows, "iloc") else rows[row][0]
        except (IndexError, KeyError):
            return gr.skip(), gr.skip(), gr.skip()
        return clip, str(bench.store.clip_path(clip)), history(clip)

    def export(kind):
        """Export the labelled clips: 'audiofolder' or 'manifest'. Returns the written path."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        out = bench.store.directory / "exports"
        try:
            if kind == "manifest":
                path = bench.store.export_manifest(out / f"manifest-{stamp}.csv")
            else:
                path = bench.store.export_audiofolder(out / f"audiofolder-{stamp}") / "metadata.csv"
        except (OSError, StoreError) as exc:
            raise user_error(f"export failed: {exc}") from None
        return str(path)

    def models():
        """Reload the checkpoint folders; returns the model names with their headline metrics."""
        bench.reload()
        choices = bench.choices()
        return gr.update(choices=choices, value=bench.default_choice()), gr.update(choices=choices, value=bench.default_choice())

    def model_card(name):
        """A checkpoint's card and its confusion matrix on its test speakers (the picker's figure)."""
        if not name or name not in bench.catalogue:
            return {}, None
        try:
            card = read_card(bench.catalogue[name])
        except CheckpointError as exc:
            gr.Warning(str(exc))
            return {}, None
        try:
            m = card.get("metrics", {})
            fig = confusion_figure(m["test"]["overall"]["confusion"], m["test"]["overall"]["classes"],
                                   f"{name}: confusion on its test speakers (rows: true)")
        except (AttributeError, KeyError, TypeError, ValueError):
            fig = None  # no (readable) held-out confusion in this card
        return card, fig

    def model_metrics(name: str) -> str:
        """A checkpoint's held-out evaluations as a Markdown table (test, dev, cross-validation,
        leave-one-corpus-out)."""
        card = bench.cards.get(name)
        return metrics_markdown(card) if card else ""

    def retrain(model_name):
        """Fine-tune the selected checkpoint on the stored annotations in a background process."""
        if not model_name or model_name not in bench.catalogue:
            raise user_error("pick a checkpoint to fine-tune")
        if not bench.store.current_labels():
            raise user_error("there are no labelled clips in the store yet: relabel some clips first")
        base = bench.catalogue[model_name]
        try:
            card = read_card(base)
        except CheckpointError as exc:
            raise user_error(exc) from None
        corpora = settings.retrain_corpora
        if corpora is None:
            config = card.get("training", {}).get("config")
            corpora = tuple(config.get("corpora", [])) if isinstance(config, dict) else ()
        manifest = bench.store.export_manifest(bench.store.directory / "retrain" / "manifest.csv")
        bench.retrainer.corpora = list(corpora)
        try:
            out = bench.retrainer.start(base, card, manifest, list(settings.retrain_args))
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return f"Started fine-tuning **{model_name}** on {len(bench.store.current_labels())} stored clips " \
               f"+ {len(corpora)} corpora → `{out.name}`"

    def retrain_markdown(st: dict) -> str:
        if st["state"] == "idle":
            return "No retraining run yet."
        if st["state"] == "running":
            return (f"Training `{Path(st['out']).name}` ({duration_text(st['elapsed_s'])} so far)"
                    + (f"; dev UA after epoch {st['epoch']}: {st['dev_ua']:.3f}" if st["dev_ua"] is not None else ""))
        if st["state"] == "failed":
            return f"Retraining failed:\n```\n{st['tail']}\n```"
        return f"Done: `{Path(st['out']).name}` is in the model pickers.\n\n{bench.retrainer.comparison()}"

    def finished_run(st: dict) -> bool:
        """A done run's checkpoint joins the catalogue (one rescan, whichever page or caller asks first)."""
        if st["state"] == "done" and Path(st["out"]).name not in bench.catalogue:
            bench.reload()
        return st["state"] == "done"

    def retrain_status() -> str:
        """Progress of the background run as Markdown; when done, the two models' comparison."""
        st = bench.retrainer.status()
        finished_run(st)
        return retrain_markdown(st)

    def retrain_progress() -> dict:
        """The background run's status: state, phase, step, total_steps, epoch, loss, eta_s, dev_ua, out, ..."""
        return bench.retrainer.status()

    def retrain_view(seen: str):
        """The page's view of the run (polled, and on load, so a reload shows it): the progress bar, the
        status, and once per finished run the pickers' choices with the new checkpoint in them."""
        st = bench.retrainer.status()
        fresh = finished_run(st) and st["out"] != seen
        pickers = gr.update(choices=bench.choices()) if fresh else gr.skip()
        return retrain_progress_html(st), retrain_markdown(st), pickers, pickers, st["out"] if fresh else seen

    def clear_analysis():
        """Empty the results of the last analysis, so that a failed one leaves no clip to label by mistake."""
        return None, "", None, "", "", gr.update(choices=[], value=None)

    def analyze_and_remember(audio, model_name, alpha, source=None, progress=gr.Progress()):
        return analyze(audio, model_name, alpha, source, progress)

    # ---------------------------------------------------------------- layout
    with gr.Blocks(title="serdemo — what the model hears") as app:
        gr.Markdown("# serdemo\nRecord or upload speech; see the log-mel spectrogram, its VTLP-warped "
                    "twin, where the model's attention falls, and what it predicts. Correct it when it is wrong.")
        source = gr.State("upload")  # where the clip in `audio` came from: MICROPHONE or "upload"
        annotator = gr.Textbox(label="Your name (annotator)", placeholder="used when no login is set", max_lines=1)
        with gr.Tab("Analyse", elem_id="tab-analyse"):
            with gr.Row():
                with gr.Column(scale=2):
                    audio = gr.Audio(sources=["microphone", "upload"], type="filepath", label="Speech")
                    model = gr.Dropdown(bench.choices(), value=bench.default_choice(), label="Model", elem_id="model")
                    alpha = gr.Slider(ALPHA_MIN, ALPHA_MAX, value=1.1, step=0.01, label="VTLP alpha (warp factor)")
                    run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    info = gr.Markdown()
                with gr.Column(scale=1):
                    probs = gr.Label(label="Emotion", num_top_classes=8, elem_id="emotion-probs")
                    aux = gr.Markdown(label="Auxiliary heads", elem_id="aux-heads")
                    warp_plot = gr.Plot(warp_figure(1.1), label="Warp function")
            figure = gr.Plot(label="What the model hears", elem_id="analysis-figure")
            clip_id = gr.Textbox(label="Clip id", interactive=False, elem_id="clip-id")
            label_choice = gr.Radio([], label="True label (keys 1-9)", elem_id="label-choice")
            with gr.Row():
                confirm_btn = gr.Button("Model is right (c)", elem_id="confirm-label")
                save_btn = gr.Button("Save label (s)", variant="primary", elem_id="save-label")
            status = gr.Markdown(elem_id="relabel-status")
        with gr.Tab("Annotate", elem_id="tab-annotate"):
            with gr.Row():
                refresh = gr.Button("Refresh queue")
                limit = gr.Number(50, label="Show", precision=0)
            queue_df = gr.Dataframe(headers=["clip", "source", "seconds", "predicted", "confidence", "label"],
                                    interactive=False, label="Queue: least confident first")
            with gr.Row():
                q_clip = gr.Textbox(label="Clip id", elem_id="q-clip")
                q_audio = gr.Audio(label="Playback", interactive=False, type="filepath")
            q_label = gr.Radio(["neutral", "happy", "sad", "angry", "fear", "disgust", "surprise", "calm", "boredom"],
                               label="Label (keys 1-9)", elem_id="q-label-choice")
            with gr.Row():
                q_confirm = gr.Button("Model is right (c)", elem_id="q-confirm")
                q_save = gr.Button("Save label (s)", variant="primary", elem_id="q-save")
            q_status = gr.Markdown(elem_id="q-status")
            q_hist = gr.Dataframe(headers=["when (UTC)", "label", "annotator", "model said", "confidence", "checkpoint"],
                                  label="History of this clip", interactive=False)
            counts = gr.Dataframe(headers=["by", "name", "count"], value=counts_table, label="Counts",
                                  interactive=False, elem_id="counts")
            with gr.Row():
                export_kind = gr.Radio(["audiofolder", "manifest"], value="manifest", label="Export as")
                export_btn = gr.Button("Export")
                export_path = gr.Textbox(label="Written to", interactive=False)
        with gr.Tab("Models"):
            with gr.Row():
                m_pick = gr.Dropdown(bench.choices(), value=bench.default_choice(), label="Checkpoint",
                                     elem_id="model-pick")
                reload_btn = gr.Button("Reload checkpoints")
            retrain_btn = gr.Button("Fine-tune the selected model on the stored annotations")
            retrain_bar = gr.HTML(elem_id="retrain-progress")
            retrain_md = gr.Markdown(elem_id="retrain-status")
            seen_run = gr.State("")  # the finished run whose checkpoint this page's pickers already list
            m_metrics = gr.Markdown(elem_id="model-metrics")
            m_conf = gr.Plot(label="Confusion matrix")
            m_card = gr.JSON(label="Card")

        # ---------------------------------------------------------------- wiring
        audio.stop_recording(lambda: MICROPHONE, None, source, queue=False, show_progress="hidden",
                             api_visibility="private")
        audio.upload(lambda: "upload", None, source, queue=False, show_progress="hidden", api_visibility="private")
        # clear first: a failed analysis must leave no previous clip id, prediction or label choices behind;
        # progress and a failure show on the emotion panel only (the message in a toast), not on every panel
        run.click(clear_analysis, None, [probs, aux, figure, clip_id, info, label_choice], queue=False,
                  show_progress="hidden", api_visibility="private").then(
            analyze_and_remember, [audio, model, alpha, source],
            [probs, aux, figure, warp_plot, clip_id, info, label_choice], api_name="analyze",
            show_progress_on=probs)
        alpha.release(warp_view, [alpha, clip_id, model], [figure, warp_plot], api_name="warp")
        # the write endpoints take the clip id and plain strings: an API caller needs no session state
        gr.api(relabel, api_name="relabel")
        gr.api(confirm, api_name="confirm")
        save_btn.click(relabel, [clip_id, label_choice, annotator], [status, counts], api_name="relabel_button",
                       api_visibility="private", show_progress_on=status)
        confirm_btn.click(confirm, [clip_id, annotator], [status, counts], api_name="confirm_button",
                          api_visibility="private", show_progress_on=status)
        refresh.click(queue, [limit], [queue_df], api_name="queue")
        queue_df.select(pick_from_queue, [queue_df], [q_clip, q_audio, q_hist], api_visibility="private")
        # the Annotate tab labels its own clip; the clip's history then shows the new label
        q_save.click(relabel, [q_clip, q_label, annotator], [q_status, counts], api_name="relabel_queued",
                     api_visibility="private", show_progress_on=q_status).success(
            history, [q_clip], [q_hist], api_name="history_after_save", api_visibility="private")
        q_confirm.click(confirm, [q_clip, annotator], [q_status, counts], api_name="confirm_queued",
                        api_visibility="private", show_progress_on=q_status).success(
            history, [q_clip], [q_hist], api_name="history_after_confirm", api_visibility="private")
        q_clip.submit(history, [q_clip], [q_hist], api_name="history")
        export_btn.click(export, [export_kind], [export_path], api_name="export")
        reload_btn.click(models, None, [model, m_pick], api_name="models")
        m_pick.change(model_card, [m_pick], [m_card, m_conf], api_name="model_card")
        m_pick.change(model_metrics, [m_pick], [m_metrics], api_name="model_metrics")
        app.load(model_metrics, [m_pick], [m_metrics], api_name="model_metrics_load", api_visibility="private")
        # the run's progress comes from the retrainer, polled by every page (and read on load: a reload shows it)
        view = dict(fn=retrain_view, inputs=[seen_run], outputs=[retrain_bar, retrain_md, model, m_pick, seen_run],
                    api_visibility="private", show_progress="hidden")
        retrain_btn.click(retrain, [m_pick], [retrain_md], api_name="retrain", concurrency_limit=1).success(
            api_name="retrain_started", **view)
        gr.Timer(2.0).tick(api_name="retrain_poll", queue=False, **view)
        app.load(api_name="retrain_load", **view)
        gr.api(retrain_status, api_name="retrain_status")
        gr.api(retrain_progress, api_name="retrain_progress")
        app.load(model_card, [m_pick], [m_card, m_conf], api_visibility="private")
        app.load(counts_table, None, [counts], api_visibility="private")
        app.load(queue, [limit], [queue_df], api_name="queue_load", api_visibility="private")
        save_btn.click(queue, [limit], [queue_df], api_name="queue_after_relabel", api_visibility="private")
    app.workbench = bench
    return app
