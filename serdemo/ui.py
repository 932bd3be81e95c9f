"""The Gradio app: layout and wiring in :func:`build_app`; every callback is a :class:`Workbench` method
with a named result, so the app's behaviour can be tested without a browser. No model math, no SQL here.

Named API endpoints (``gradio_client``): ``/analyze``, ``/warp``, ``/relabel``, ``/confirm``,
``/history``, ``/queue``, ``/labels``, ``/agreement``, ``/export``, ``/models``, ``/model_card``,
``/model_metrics``, ``/retrain``, ``/retrain_status`` (Markdown), ``/retrain_progress`` (a dict).
"""

from __future__ import annotations

import html
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import torch

from serdemo import agreement as agreement_mod
from serdemo.audio import MAX_DURATION_S, MICROPHONE, AudioError
from serdemo.checkpoint import CheckpointError, list_checkpoints, read_card
from serdemo.inference import Predictor
from serdemo.labels import ANNOTATION_LABELS
from serdemo.plots import VTLP_VIEWS, analysis_figure, confusion_figure, warp_figure
from serdemo.retrain import COMPARISON_FILE, RetrainBusy, Retrainer
from serdemo.store import Store, StoreError, as_stored
from serdemo.timeline_ui import timeline_tab
from serdemo.vtlp import F_HI_HZ, warp_power

ALPHA_MIN, ALPHA_MAX = 0.8, 1.2
SPACES_STORAGE = Path("/data")  # a Hugging Face Space's persistent storage, when the Space has it
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
                   default_data_dir(),
                   float(os.environ.get("SERDEMO_MAX_DURATION_S", MAX_DURATION_S)),
                   os.environ.get("SERDEMO_DEVICE") or None,
                   tuple(c for c in corpora.split(",") if c) if corpora is not None else None,
                   int(os.environ.get("SERDEMO_RETRAIN_EPOCHS", "5")),
                   tuple(os.environ.get("SERDEMO_RETRAIN_ARGS", "").split()))


PICKER_INFO = "UA · WA: each model on its own test speakers (never trained on); more on the Models tab"
QUEUE_HEADERS = ["clip", "model guess", "conf.", "sec", "label", "source"]  # what matters first on a phone
HISTORY_HEADERS = ["when (UTC)", "label", "annotator", "model said", "confidence", "checkpoint"]
AGREEMENT_HEADERS = ["annotator", "clips", "shared", "agreement", "mean kappa", "Cohen's kappa with each other"]


# ---------------------------------------------------------------- named results of the callbacks
@dataclass
class Analysis:
    """What :meth:`Workbench.analyse` shows for one clip."""

    probabilities: dict[str, float]  # emotion -> probability
    aux_markdown: str
    figure: go.Figure
    warp: go.Figure
    clip_id: str
    info: str
    predicted: str


@dataclass
class Redraw:
    figure: go.Figure | None  # None: no clip to redraw yet
    warp: go.Figure
    seconds: float  # time the redraw took on the server


@dataclass
class Saved:
    status: str
    counts: list[list]
    history: list[list]


@dataclass
class QueueView:
    rows: list[list]  # QUEUE_HEADERS: short id, model guess, confidence, seconds, label, source
    clip_ids: list[str]  # the full id of each row


@dataclass
class AgreementView:
    summary: str  # Markdown
    clips: list[list]  # short id, then one label per annotator (blank: not labelled), agree
    clip_headers: list[str]
    annotators: list[list]  # name, clips labelled, shared, agreement, mean Cohen's kappa, kappa per other


@dataclass
class ModelView:
    summary: str  # Markdown: data, speakers held out, recipe, licence
    metrics: str  # Markdown table: every held-out evaluation, per corpus, reference rows
    confusion: go.Figure | None


@dataclass
class RetrainView:
    bar: str  # HTML progress bar
    status: str  # Markdown
    comparison: str  # HTML table: the previous and the new model on the same held-out clips
    choices: list | None  # the pickers' new choices once a run is done (None: unchanged)
    seen: str  # the finished run this page's pickers list


@dataclass
class ClipView:
    """What a redraw of one clip's figure needs, kept per (clip, model) so a slider move costs only
    the warp and the mel projection: the power spectrum ``(1, n_bins, frames)``, the original log-mel,
    the prediction's own attention and speech segments, and its title."""

    power: torch.Tensor
    logmel: np.ndarray
    frame_times_s: np.ndarray
    attention_times_s: np.ndarray
    attention: np.ndarray
    speech_segments_s: list = field(default_factory=list)
    title: str = ""


def default_data_dir() -> Path:
    """``SERDEMO_DATA``; else ``/data/serdemo`` on a Space with persistent storage; else ``./data``."""
    if os.environ.get("SERDEMO_DATA"):
        return Path(os.environ["SERDEMO_DATA"])
    if SPACES_STORAGE.is_dir() and os.access(SPACES_STORAGE, os.W_OK):
        return SPACES_STORAGE / "serdemo"
    return Path("data")


class Workbench:
    """App state shared by all sessions (the checkpoint catalogue, loaded predictors, the store, the
    redraw cache) and every callback of the page, each returning a named result."""

    CACHE_CLIPS = 8  # power spectra kept for redraws (a 60 s clip's is ~6 MB)

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
        self._views: OrderedDict[tuple[str, str], ClipView] = OrderedDict()
        self.catalogue: dict[str, Path] = {}
        self.cards: dict[str, dict] = {}
        self.broken: dict[Path, str] = {}  # checkpoint folder -> why it is skipped
        self.reload()

    # ------------------------------------------------------------ checkpoints
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
        return [(f"{name} · {headline(self.cards[name])}", name) for name in self.catalogue]

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

    # ------------------------------------------------------------ analyse and redraw
    def _remember(self, clip_id: str, model: str, view: ClipView) -> None:
        with self._lock:
            self._views[(clip_id, model)] = view
            self._views.move_to_end((clip_id, model))
            while len(self._views) > self.CACHE_CLIPS:
                self._views.popitem(last=False)

    def _clip_view(self, pred_model: Predictor, wave: np.ndarray, pred) -> ClipView:
        with torch.inference_mode():
            power = pred_model.frontend.power(torch.as_tensor(wave, device=pred_model.device)[None].float())
        return ClipView(power, pred.logmel, pred.frame_times_s, pred.attention_times_s, pred.attention,
                        pred.speech_segments_s, f"{pred.label()} ({pred.confidence():.0%}) — {pred_model.name}")

    def analyse(self, audio, model_name: str | None, alpha: float, view: str = "difference",
                source: str | None = None, progress=None) -> Analysis:
        """Analyse a clip: probabilities per head, the spectrogram + VTLP + attention figure, its clip id.

        ``source``: where ``audio`` came from (the microphone or an upload), for the wording of errors.
        """
        step = progress or (lambda *a, **k: None)
        t0 = time.perf_counter()
        try:
            step(0.1, desc="decoding")
            pred_model = self.predictor(model_name)
            # analyse exactly what the store keeps, so later views and retraining see the same clip
            wave = as_stored(pred_model.load(audio, max_duration_s=self.settings.max_duration_s))
            step(0.4, desc="running the model")
            pred = pred_model.predict(wave, alpha=None)
            step(0.8, desc="saving the clip")
            name = Path(audio).name if isinstance(audio, (str, os.PathLike)) else "recording"
            sha = self.store.add_clip(wave, source_name=name, predicted=pred.label(),
                                      confidence=pred.confidence(), checkpoint=pred_model.name)
        except (AudioError, CheckpointError, StoreError) as exc:
            raise user_error(exc, source, duration=None) from None
        clip = self._clip_view(pred_model, wave, pred)
        self._remember(sha, pred_model.name, clip)
        figure = self._figure(pred_model, clip, float(alpha), view)
        aux = {h: p for h, p in pred.probabilities.items() if h != "emotion"}
        aux_md = "\n".join(f"**{h}**: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
                           for h, p in aux.items()) or "_this model has no auxiliary heads_"
        info = (f"clip `{sha[:12]}` · {pred.duration_s:.2f} s · analysed in "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms on {pred_model.device}")
        return Analysis(pred.probabilities["emotion"], aux_md, figure, warp_figure(float(alpha)), sha, info,
                        pred.label())

    def _figure(self, pred_model: Predictor, clip: ClipView, alpha: float, view: str) -> go.Figure:
        """The analysis figure at ``alpha`` from the cached power spectrum: only the warp and the mel run."""
        cfg = pred_model.features
        with torch.inference_mode():
            warped = warp_power(clip.power, alpha, cfg.sample_rate, F_HI_HZ) if alpha != 1.0 else clip.power
            logmel_warped = pred_model.frontend.mel(warped)[0].float().cpu().numpy()
        return analysis_figure(clip.frame_times_s, clip.logmel, logmel_warped, clip.attention_times_s,
                               clip.attention, alpha, title=clip.title, speech_segments_s=clip.speech_segments_s,
                               band_hz=mel_band_hz(cfg), view=view if view in VTLP_VIEWS else "difference")

    def redraw(self, alpha: float, clip_id: str | None, model_name: str | None,
               view: str = "difference") -> Redraw:
        """Re-draw the VTLP view for a new alpha without running the model (once after a restart)."""
        t0 = time.perf_counter()
        alpha = float(alpha)
        if not (ALPHA_MIN <= alpha <= ALPHA_MAX):
            raise user_error(f"VTLP alpha must be between {ALPHA_MIN} and {ALPHA_MAX}, not {alpha:g}")
        if not clip_id:
            return Redraw(None, warp_figure(alpha), time.perf_counter() - t0)
        try:
            pred_model = self.predictor(model_name)
            clip = self._views.get((clip_id, pred_model.name))
            if clip is None:  # analysed before a restart or with another model: this once, run the model
                wave = pred_model.load(str(self.store.clip_path(clip_id)), max_duration_s=self.settings.max_duration_s)
                pred = pred_model.predict(wave, alpha=None, require_speech=False)
                clip = self._clip_view(pred_model, wave, pred)
                self._remember(clip_id, pred_model.name, clip)
        except (AudioError, CheckpointError, StoreError) as exc:
            raise user_error(exc) from None
        figure = self._figure(pred_model, clip, alpha, view)
        return Redraw(figure, warp_figure(alpha), time.perf_counter() - t0)

    # ------------------------------------------------------------ labels
    def save_label(self, clip_id: str | None, label: str | None, annotator: str) -> Saved:
        """Append a label (``None``: confirm the model's prediction) for a stored clip; the model's
        prediction, confidence and checkpoint are recorded from the store, whoever calls."""
        who = (annotator or "").strip()
        try:
            if not clip_id:
                raise StoreError("analyse a clip (or pick one from the queue) first, then label it")
            if label is not None and label not in ANNOTATION_LABELS:
                raise StoreError(f"'{label}' is not one of the labels ({', '.join(ANNOTATION_LABELS)})")
            if label is None:
                predicted = self.store.clip_info(clip_id).get("predicted")
                if predicted and predicted not in ANNOTATION_LABELS:
                    raise StoreError(f"the model said '{predicted}', which is not one of the labels "
                                     f"({', '.join(ANNOTATION_LABELS)}): pick the right one and save it")
            event = self.store.label_clip(clip_id, label, who)
        except StoreError as exc:
            raise user_error(exc) from None
        n = len(self.store.history(clip_id))
        if event.predicted == event.label:
            verdict = f"confirmed as **{event.label}**"
        elif event.predicted:
            verdict = f"corrected to **{event.label}** (the model said {event.predicted})"
        else:
            verdict = f"labelled **{event.label}**"
        return Saved(f"Saved: clip `{clip_id[:12]}` {verdict} by {who} (label #{n} for this clip).",
                     self.counts(), self.history(clip_id))

    def history(self, clip_id: str | None) -> list[list]:
        """A clip's label history, oldest first."""
        if not clip_id:
            return []
        return [[e.created_utc.replace("T", " ").rstrip("Z"), e.label, e.annotator, e.predicted or "",
                 "" if e.confidence is None else f"{e.confidence:.0%}", e.checkpoint or ""]
                for e in self.store.history(clip_id)]

    def queue_entries(self, limit: int = 50, show: str = "all") -> list[dict]:
        """The queue for API callers: full clip ids, numbers unrounded."""
        entries = self.store.queue(max(1, int(limit or 50)), unlabelled_only=show == "unlabelled")
        return [{k: q[k] for k in ("clip", "source_name", "duration_s", "predicted", "confidence", "label",
                                   "annotator")} for q in entries]

    def queue(self, limit: int = 50, show: str = "unlabelled") -> QueueView:
        """Stored clips, least confident model prediction first; ``show``: "unlabelled" or "all"."""
        entries = self.store.queue(max(1, int(limit or 50)), unlabelled_only=show == "unlabelled")
        rows = [[q["clip"][:8], q["predicted"] or "", "" if q["confidence"] is None else f"{q['confidence']:.0%}",
                 f"{q['duration_s']:.1f}", q["label"] or "", (q["source_name"] or "")[:28]] for q in entries]
        return QueueView(rows, [q["clip"] for q in entries])

    def counts(self) -> list[list]:
        c = self.store.counts()
        return [["label", k, v] for k, v in c["label"].items()] + [["annotator", k, v] for k, v in c["annotator"].items()]

    def agreement(self) -> AgreementView:
        """Per clip every annotator's label and whether they agree; per annotator counts and kappas."""
        result = agreement_mod.compute(self.store)
        names = [a.annotator for a in result.annotators]
        multi = [c for c in result.clips if len(c.labels) > 1]
        clips = [[c.clip[:8], *[c.labels.get(n, "") for n in names],
                  {True: "yes", False: "no", None: "—"}[c.agree]] for c in sorted(multi, key=lambda c: c.agree is not False)]
        annotators = []
        for a in result.annotators:
            kappas = [k for k in a.kappa.values() if k is not None]
            annotators.append([a.annotator, a.n_labelled, a.n_shared,
                               "—" if a.agreement is None else f"{a.agreement:.0%}",
                               "—" if not kappas else f"{np.mean(kappas):.2f}",
                               ", ".join(f"{o} {k:.2f}" for o, k in a.kappa.items() if k is not None) or "—"])
        if result.fleiss_kappa is not None:
            fleiss = (f"Fleiss' kappa **{result.fleiss_kappa:.2f}** over {result.fleiss_clips} clips labelled by "
                      f"{result.fleiss_raters} annotators each")
        else:
            fleiss = "Fleiss' kappa needs at least two clips labelled by the same number (≥ 2) of annotators"
        agreed = sum(c.agree is True for c in multi)
        summary = (f"{len(result.clips)} labelled clips, {len(multi)} labelled by more than one annotator"
                   + (f", all agree on {agreed} ({agreed / len(multi):.0%})" if multi else "")
                   + f". {fleiss}. Kappas: scikit-learn (Cohen, per pair of annotators on their shared clips) "
                     "and statsmodels (Fleiss); 1 is perfect agreement, 0 is chance.")
        return AgreementView(summary, clips, ["clip", *names, "agree"], annotators)

    def export(self, kind: str) -> Path:
        """A zip of the labelled clips: "audiofolder" (``metadata.csv`` + ``audio/``, for the ``datasets``
        audiofolder builder) or "manifest" (the training manifest ``manifest.csv`` + ``audio/``)."""
        if not self.store.current_labels():
            raise user_error("nothing to export yet: label some clips first")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = f"serdemo-{'training-manifest' if kind == 'manifest' else 'audiofolder'}-{stamp}"
        work = Path(tempfile.mkdtemp(prefix="serdemo-export-"))
        try:
            folder = work / name
            if kind == "manifest":
                self.store.export_training_folder(folder)
            else:
                self.store.export_audiofolder(folder)
            archive = work / f"{name}.zip"
            with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
                for path in sorted(folder.rglob("*")):
                    if path.is_file():
                        z.write(path, f"{name}/{path.relative_to(folder).as_posix()}")
            shutil.rmtree(folder)
        except (OSError, StoreError) as exc:
            shutil.rmtree(work, ignore_errors=True)
            raise user_error(f"export failed: {getattr(exc, 'strerror', None) or exc.__class__.__name__}") from None
        return archive

    # ------------------------------------------------------------ models and retraining
    def model_view(self, name: str | None) -> ModelView:
        """A checkpoint's card as a readable summary, its held-out metrics and its test confusion."""
        if not name or name not in self.catalogue:
            return ModelView("_pick a checkpoint_", "", None)
        try:
            card = read_card(self.catalogue[name])
        except CheckpointError as exc:
            gr.Warning(str(exc))
            return ModelView(f"_{html.escape(str(exc))}_", "", None)
        try:
            m = card.get("metrics", {})
            fig = confusion_figure(m["test"]["overall"]["confusion"], m["test"]["overall"]["classes"],
                                   f"{name}: confusion, test speakers")
        except (AttributeError, KeyError, TypeError, ValueError):
            fig = None  # no (readable) held-out confusion in this card
        return ModelView(card_summary_markdown(name, card), metrics_markdown(card), fig)

    def retrain(self, model_name: str | None) -> str:
        """Fine-tune the selected checkpoint on the stored annotations in a background process."""
        settings = self.settings
        if not model_name or model_name not in self.catalogue:
            raise user_error("pick a checkpoint to fine-tune")
        if not self.store.current_labels():
            raise user_error("there are no labelled clips in the store yet: relabel some clips first")
        base = self.catalogue[model_name]
        try:
            card = read_card(base)
        except CheckpointError as exc:
            raise user_error(exc) from None
        corpora = settings.retrain_corpora
        if corpora is None:
            config = card.get("training", {}).get("config")
            corpora = tuple(config.get("corpora", [])) if isinstance(config, dict) else ()
        manifest = self.store.export_manifest(self.store.directory / "retrain" / "manifest.csv")
        self.retrainer.corpora = list(corpora)
        try:
            out = self.retrainer.start(base, card, manifest, list(settings.retrain_args))
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return f"Started fine-tuning **{model_name}** on {len(self.store.current_labels())} stored clips " \
               f"+ {len(corpora)} corpora → `{out.name}`"

    def _finished(self, st: dict) -> bool:
        """A done run's checkpoint joins the catalogue (one rescan, whichever page or caller asks first)."""
        if st["state"] == "done" and Path(st["out"]).name not in self.catalogue:
            self.reload()
        return st["state"] == "done"

    def _retrain_markdown(self, st: dict) -> str:
        if st["state"] == "idle":
            return "No retraining run yet."
        if st["state"] == "running":
            return (f"Training `{Path(st['out']).name}` ({duration_text(st['elapsed_s'])} so far)"
                    + (f"; dev UA after epoch {st['epoch']}: {st['dev_ua']:.3f}" if st["dev_ua"] is not None else ""))
        if st["state"] == "failed":
            return f"Retraining failed:\n```\n{st['tail']}\n```"
        return f"Done: `{Path(st['out']).name}` is in the model pickers.\n\n{self.retrainer.comparison()}"

    def retrain_status(self) -> str:
        """Progress of the background run as Markdown; when done, the two models' comparison."""
        st = self.retrainer.status()
        self._finished(st)
        return self._retrain_markdown(st)

    def retrain_view(self, seen: str = "") -> RetrainView:
        """The page's view of the run (polled, and on load, so a reload shows it)."""
        st = self.retrainer.status()
        fresh = self._finished(st) and st["out"] != seen
        table = ""
        if st["state"] == "done":
            path = Path(st["out"]) / COMPARISON_FILE
            if path.is_file():
                try:
                    table = comparison_html(json.loads(path.read_text()))
                except (OSError, ValueError):
                    table = ""
        status = self._retrain_markdown(st)
        if table:  # the table shows the comparison; the status keeps its first lines
            status = status.split("\n\n| set |")[0]
        return RetrainView(retrain_progress_html(st), status, table, self.choices() if fresh else None,
                           st["out"] if fresh else seen)


def headline(card: dict) -> str:
    """The picker's figure, the same kind for every model: UA / WA on the card's own test speakers
    (``metrics.test.overall``). Cross-validation and leave-one-corpus-out stay in the card view."""
    try:
        overall = card.get("metrics", {}).get("test", {}).get("overall")
        if not overall:
            return "no test-speaker metrics"
        speakers = (card.get("metrics", {}).get("test_speakers")
                    or card.get("training", {}).get("speakers", {}).get("test"))
        held_out = f" ({len(speakers)} spk)" if speakers else ""
        return f"UA {overall['ua']:.2f} · WA {overall['wa']:.2f}{held_out}"
    except (AttributeError, KeyError, TypeError, ValueError):
        return "metrics unreadable"


EVALUATIONS = (  # card metrics key -> what the figure is, in the card view
    ("test", "test speakers (never trained on)"),
    ("dev", "dev speakers (picked the epoch)"),
    ("cv", "cross-validated, pooled folds"),
    ("loco", "leave-one-corpus-out, pooled"),
)


def metrics_markdown(card: dict) -> str:
    """Every held-out evaluation of a card, one labelled row each (overall and per corpus)."""
    rows = ["| evaluation | set | UA | WA | macro-F1 | n |", "|---|---|---|---|---|---|"]
    for key, what in EVALUATIONS:
        block = card.get("metrics", {}).get(key)
        if not isinstance(block, dict):
            continue
        blocks = [(what, block)]
        if key in ("cv", "loco"):
            what = f"{block.get('scheme', what)}: {what}"
            blocks = [(what, block.get("pooled") or {})]
            ref = block.get("reference")
            if isinstance(ref, dict) and isinstance(ref.get("pooled"), dict):
                blocks.append((f"reference row ({ref.get('name', 'functionals + logistic regression')}), "
                               f"same folds", ref["pooled"]))
        for label, scores in blocks:
            for group, sc in scores.items():
                if isinstance(sc, dict) and "ua" in sc:
                    f1 = f"{sc['macro_f1']:.3f}" if sc.get("macro_f1") is not None else ""
                    rows.append(f"| {label} | {group} | {sc['ua']:.3f} | {sc['wa']:.3f} | {f1} | {sc.get('n', '')} |")
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


def mel_band_hz(cfg) -> np.ndarray:
    """Centre frequency (Hz) of each mel band of the front end (Slaney mel scale, as ``LogMel``'s filters)."""
    import librosa

    fmax = min(cfg.fmax_hz, cfg.sample_rate / 2)
    return librosa.mel_frequencies(cfg.n_mels + 2, fmin=cfg.fmin_hz, fmax=fmax, htk=False)[1:-1]


def _speakers(names) -> str:
    """``["emodb:03", "emodb:13", "nemo:EB0"]`` -> ``emodb 03, 13; nemo EB0``."""
    by_corpus: dict[str, list[str]] = {}
    for s in names or []:
        corpus, _, spk = str(s).partition(":")
        by_corpus.setdefault(corpus if spk else "", []).append(spk or corpus)
    return "; ".join(f"{c} {', '.join(v)}".strip() for c, v in by_corpus.items()) or "none recorded"


def card_summary_markdown(name: str, card: dict) -> str:
    """A checkpoint card as a short readable summary: model, data, speakers held out, recipe, licence."""
    t = card.get("training", {}) if isinstance(card.get("training"), dict) else {}
    cfg = t.get("config", {}) if isinstance(t.get("config"), dict) else {}
    model = card.get("model", {})
    label_set = card.get("label_set", {}) if isinstance(card.get("label_set"), dict) else {}
    lines = [f"### {name}",
             f"**Model**: `{model.get('architecture', '?')}`, "
             f"{card.get('weights', {}).get('parameters', 0):,} parameters, heads: "
             f"{', '.join(card.get('heads', {}))}; created {card.get('created_utc', '?')}."]
    corpora = [c for c in t.get("corpora", []) if isinstance(c, dict)]
    if corpora:
        data = ", ".join(f"{c.get('corpus')} ({c.get('utterances', '?')} clips)" for c in corpora)
        dropped = t.get("dropped_labels") or {}
        drop = f"; dropped: {', '.join(f'{k} ({v})' for k, v in dropped.items())}" if dropped else ""
        lines.append(f"**Data**: {data}; {t.get('n_train', '?')} train / {t.get('n_dev', '?')} dev / "
                     f"{t.get('n_test', '?')} test clips{drop}.")
    if label_set:
        lines.append(f"**Classes** ({label_set.get('name', '?')}): {', '.join(label_set.get('classes', []))}"
                     + (f" — {label_set['description']}" if label_set.get("description") else "") + ".")
    speakers = t.get("speakers", {}) if isinstance(t.get("speakers"), dict) else {}
    if speakers:
        lines.append(f"**Speakers held out** (never trained on): test {_speakers(speakers.get('test'))}; "
                     f"dev (picks the epoch) {_speakers(speakers.get('dev'))}.")
    if cfg:
        aug = [a for a, on in (("VTLP " + "–".join(str(cfg.get(k)) for k in ("vtlp_low", "vtlp_high")), cfg.get("vtlp")),
                               ("SpecAugment", cfg.get("specaug")), ("mixup", cfg.get("mixup"))) if on]
        aug += list(cfg.get("augment") or [])
        feats = cfg.get("features") or {}
        members = t.get("ensemble") if isinstance(t.get("ensemble"), list) else None
        best = (f"an ensemble of {len(members)} seeds, best epochs "
                + ", ".join(str(m.get("best_epoch", "?")) for m in members if isinstance(m, dict))) if members \
            else f"best: {card.get('metrics', {}).get('best_epoch', '?')}"
        lines.append(f"**Recipe**: {cfg.get('epochs', '?')} epochs ({best}), "
                     f"batch {cfg.get('batch_size', '?')}, lr {cfg.get('lr', '?')}, {cfg.get('norm', '?')} normalisation, "
                     f"split {cfg.get('split', '?')} fold {cfg.get('fold', '?')} of {cfg.get('n_folds', '?')}, "
                     f"seed {cfg.get('seed', '?')}; augmentation: {', '.join(aug) or 'none'}"
                     + (f"; features: {', '.join(k for k, v in feats.items() if v is True)}" if feats else "") + ".")
    if card.get("license"):
        lines.append(f"**Licence**: {card['license']}")
    return "\n\n".join(lines)


def comparison_html(result: dict) -> str:
    """A ``training.compare`` result as a full-width HTML table: both models on the same held-out clips."""
    scores = result.get("scores") or {}
    old, new = scores.get("previous", {}), scores.get("new", {})
    speakers = result.get("speakers", [])
    caption = (f"Previous vs new model on the same {result.get('n', 0)} clips of {len(speakers)} speakers "
               f"that neither trained on ({html.escape(', '.join(speakers)) or 'none'})")
    head = "".join(f"<th>{h}</th>" for h in ("set", "clips", "previous UA", "new UA", "Δ UA",
                                             "previous WA", "new WA", "Δ WA"))
    body = []
    for k in new:
        if k in old:
            o, n = old[k], new[k]
            body.append(f"<tr><td>{html.escape(str(k))}</td><td>{n.get('n', '')}</td>"
                        f"<td>{o['ua']:.3f}</td><td>{n['ua']:.3f}</td><td>{n['ua'] - o['ua']:+.3f}</td>"
                        f"<td>{o['wa']:.3f}</td><td>{n['wa']:.3f}</td><td>{n['wa'] - o['wa']:+.3f}</td></tr>")
    if not body:
        return f"<p>{caption}: no scores.</p>"
    note = f"<p>Note: {html.escape(str(result['note']))}.</p>" if result.get("note") else ""
    return (f'<table class="comparison" style="width:100%"><caption style="text-align:left">{caption}</caption>'
            f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>{note}")


def login_name(request: gr.Request | None) -> str | None:
    """Who is logged in: Gradio auth (``SERDEMO_AUTH``) or a Space's Hugging Face login; None otherwise."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return request.username
    try:
        info = request.session.get("oauth_info") or {}
    except (AttributeError, AssertionError, KeyError):  # no session middleware: no Space login
        return None
    return (info.get("userinfo") or {}).get("preferred_username") or None


def _annotator(name: str, request: gr.Request | None) -> str:
    """The login name where the app has one, else the name typed on the page."""
    return (login_name(request) or name or "").strip()


def annotator_field(remembered: str | None, request: gr.Request | None):
    """On load: a logged-in user annotates under the login name (fixed); otherwise the name typed once,
    which this browser remembers across reloads."""
    user = login_name(request)
    if user:
        return gr.update(value=user, interactive=False, info="your login name")
    return gr.update(value=remembered) if remembered else gr.skip()


CSS = """
#clip-id input, #q-clip input { font-family: monospace; text-overflow: ellipsis; }
#queue table td, #agreement-clips table td { white-space: nowrap; }
#model-metrics table { display: block; width: max-content; max-width: 100%; overflow-x: auto; white-space: nowrap; }
#model-metrics td:first-child { white-space: normal; min-width: 10em; }
.comparison th, .comparison td { padding: 4px 10px; text-align: right; }
.comparison th:first-child, .comparison td:first-child { text-align: left; }
.comparison thead th { border-bottom: 2px solid var(--border-color-primary); }
"""


class Endpoints:
    """What the page's events call: each adapts a :class:`Workbench` result to the components' outputs
    (or is a plain API endpoint). No logic of its own beyond that translation."""

    def __init__(self, bench: Workbench):
        self.bench = bench

    def warp(self, alpha, clip_id, model_name, view="difference"):
        """Re-draw the VTLP view for a new alpha (or panel view) without running the model."""
        r = self.bench.redraw(alpha, clip_id, model_name, view)
        return (gr.skip() if r.figure is None else r.figure), r.warp

    def relabel(self, clip_id: str, label: str, annotator_name: str = "",
                request: gr.Request = None) -> tuple[str, list[list]]:
        """Save a label for the stored clip ``clip_id`` (append-only; one of ``/labels``). The model's
        prediction, confidence and checkpoint are recorded from the store (the clip's latest analysis),
        whoever calls. Returns a status line and the counts (rows of by, name, count)."""
        s = self.bench.save_label(clip_id, label, _annotator(annotator_name, request))
        return s.status, s.counts

    def confirm(self, clip_id: str, annotator_name: str = "", request: gr.Request = None) -> tuple[str, list[list]]:
        """Confirm the model's prediction for the stored clip ``clip_id`` (its latest analysis).
        Returns a status line and the counts (rows of by, name, count)."""
        s = self.bench.save_label(clip_id, None, _annotator(annotator_name, request))
        return s.status, s.counts

    def save_on_tab(self, clip_id, label, annotator_name, request: gr.Request):
        """The Annotate tab's save: its status, the counts and the clip's history."""
        s = self.bench.save_label(clip_id, label, _annotator(annotator_name, request))
        return s.status, s.counts, s.history

    def confirm_on_tab(self, clip_id, annotator_name, request: gr.Request):
        return self.save_on_tab(clip_id, None, annotator_name, request)

    def labels(self) -> list[str]:
        """The labels a clip can be given, the same on every tab and through /relabel."""
        return list(ANNOTATION_LABELS)

    def queue(self, limit: int = 50, show: str = "all") -> list[dict]:
        """Stored clips, least confident model prediction first (``show``: "all" or "unlabelled"); each a
        dict with the full clip id, source_name, duration_s, predicted, confidence, label, annotator."""
        return self.bench.queue_entries(limit, show)

    def queue_view(self, limit, show):
        q = self.bench.queue(limit, show)
        return q.rows, q.clip_ids

    def pick(self, evt: gr.SelectData, ids):
        """A queue row clicked: its clip (found by the row's short id, so a table sorted on the page still
        picks the right clip), its playback, history, and a fresh label choice."""
        ids = ids or []
        short = str((getattr(evt, "row_value", None) or [""])[0])
        clip = next((c for c in ids if short and c.startswith(short)), None)
        if clip is None:
            row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
            if not isinstance(row, int) or not 0 <= row < len(ids):
                return gr.skip(), gr.skip(), gr.skip(), gr.skip()
            clip = ids[row]
        try:
            path = str(self.bench.store.clip_path(clip))
        except StoreError as exc:
            raise user_error(exc) from None
        return clip, path, self.bench.history(clip), gr.update(value=None)

    def agreement_view(self):
        a = self.bench.agreement()
        return a.summary, gr.update(value=a.clips, headers=a.clip_headers), a.annotators

    def agreement(self) -> dict:
        """Agreement between annotators: per clip (labels by annotator, agree) and per annotator."""
        a = self.bench.agreement()
        return {"summary": a.summary, "clips": [dict(zip(a.clip_headers, r)) for r in a.clips],
                "annotators": [dict(zip(AGREEMENT_HEADERS, r)) for r in a.annotators]}

    def export(self, kind):
        """A zip of the labelled clips ("audiofolder" or "manifest"), as a file to download."""
        return str(self.bench.export(kind))

    def models(self):
        """Reload the checkpoint folders; returns the model names with their headline metrics."""
        self.bench.reload()
        choices = self.bench.choices()
        return gr.update(choices=choices, value=self.bench.default_choice()), gr.update(choices=choices, value=self.bench.default_choice())

    def model_card(self, name):
        """A checkpoint's summary, held-out metrics, confusion on its test speakers and its raw card."""
        v = self.bench.model_view(name)
        return v.summary, v.metrics, v.confusion, self.bench.cards.get(name, {})

    def model_metrics(self, name: str) -> str:
        """A checkpoint's held-out evaluations as a Markdown table (test, dev, cross-validation,
        leave-one-corpus-out, with the reference row where the card has one)."""
        card = self.bench.cards.get(name)
        return metrics_markdown(card) if card else ""

    def retrain_view(self, seen):
        v = self.bench.retrain_view(seen)
        pickers = gr.skip() if v.choices is None else gr.update(choices=v.choices)
        return v.bar, v.status, v.comparison, pickers, pickers, v.seen

    def retrain_progress(self) -> dict:
        """The background run's status: state, phase, step, total_steps, epoch, loss, eta_s, dev_ua, out, ..."""
        return self.bench.retrainer.status()

    def clear_analysis(self):
        """Empty the results of the last analysis, so that a failed one leaves no clip to label by mistake."""
        return None, "", None, "", "", gr.update(choices=[], value=None)


def build_app(settings: Settings | None = None) -> gr.Blocks:
    """The page: layout, then wiring of each event to a :class:`Workbench` method."""
    bench = Workbench(settings or Settings.from_env())
    ep = Endpoints(bench)

    # the one GPU callback stays a plain function, decorated for ZeroGPU (spaces.GPU) as before
    @gpu
    def analyze(audio, model_name, alpha, view="difference", source=None, progress=gr.Progress()):
        """Analyse a clip: probabilities, auxiliary heads, the figure, the warp, its clip id and label choices."""
        a = bench.analyse(audio, model_name, alpha, view, source, progress)
        return (a.probabilities, a.aux_markdown, a.figure, a.warp, a.clip_id, a.info,
                gr.update(choices=list(ANNOTATION_LABELS), value=a.predicted if a.predicted in ANNOTATION_LABELS else None))

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
                    model = gr.Dropdown(bench.choices(), value=bench.default_choice(), label="Model", elem_id="model",
                                        info=PICKER_INFO)
                    run = gr.Button("Analyse", variant="primary", elem_id="analyse")
                    info = gr.Markdown(elem_id="analysis-info")
                with gr.Column(scale=2):
                    probs = gr.Label(label="Emotion", num_top_classes=8, elem_id="emotion-probs")
                    aux = gr.Markdown(label="Auxiliary heads", elem_id="aux-heads")
            figure = gr.Plot(label="What the model hears", show_label=False, elem_id="analysis-figure")
            with gr.Row():
                with gr.Column(scale=3):
                    with gr.Row():
                        alpha = gr.Slider(ALPHA_MIN, ALPHA_MAX, value=1.1, step=0.01, elem_id="alpha",
                                          label="VTLP alpha (warp factor): drag, type or use the arrow keys")
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
                        limit = gr.Number(50, label="At most", precision=0, minimum=1, maximum=1000, min_width=90)
                        refresh = gr.Button("Refresh queue", elem_id="queue-refresh", min_width=120, size="sm")
                    queue_df = gr.Dataframe(headers=QUEUE_HEADERS,
                                            interactive=False, elem_id="queue", wrap=False,
                                            label="Queue: least confident model guess first (click a row)")
                    queue_ids = gr.State([])  # the full clip id of each queue row
                with gr.Column(scale=2):
                    q_clip = gr.Textbox(label="Clip id", max_lines=1, elem_id="q-clip",
                                        placeholder="click a queue row, or paste an id and press Enter")
                    q_audio = gr.Audio(label="Playback", interactive=False, type="filepath", elem_id="q-audio")
                    q_label = gr.Radio(list(ANNOTATION_LABELS), label="Label (keys 1-9)", elem_id="q-label-choice")
                    with gr.Row():
                        q_confirm = gr.Button("Model is right (c)", elem_id="q-confirm")
                        q_save = gr.Button("Save label (s)", variant="primary", elem_id="q-save")
                    q_status = gr.Markdown(elem_id="q-status")
            q_hist = gr.Dataframe(headers=HISTORY_HEADERS, label="History of this clip", interactive=False,
                                  elem_id="q-history")
            counts = gr.Dataframe(headers=["by", "name", "count"], value=bench.counts, label="Counts",
                                  interactive=False, elem_id="counts")
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
        with gr.Tab("Models", elem_id="tab-models"):
            with gr.Row(equal_height=True):
                m_pick = gr.Dropdown(bench.choices(), value=bench.default_choice(), label="Checkpoint",
                                     elem_id="model-pick", scale=4, info="UA · WA: each model on its own test speakers (never trained on)")
                reload_btn = gr.Button("Reload checkpoints", scale=1, min_width=160, size="sm")
            with gr.Row():
                with gr.Column(scale=1, min_width=340):
                    m_summary = gr.Markdown(elem_id="model-summary")
                with gr.Column(scale=1, min_width=340):
                    m_conf = gr.Plot(label="Confusion matrix (test speakers)", show_label=False,
                                     elem_id="model-confusion")
            gr.Markdown("#### Held-out evaluations, per corpus")
            m_metrics = gr.Markdown(elem_id="model-metrics")
            with gr.Accordion("Raw card (JSON)", open=False):
                m_card = gr.JSON(label="Card")
            retrain_btn = gr.Button("Fine-tune the selected model on the stored annotations", elem_id="retrain")
            retrain_bar = gr.HTML(elem_id="retrain-progress")
            retrain_md = gr.Markdown(elem_id="retrain-status")
            retrain_table = gr.HTML(elem_id="retrain-comparison")
            seen_run = gr.State("")  # the finished run whose checkpoint this page's pickers already list
        # further tabs (the timeline) are added here
        timeline_tab(bench, annotator)

        # ---------------------------------------------------------------- wiring
        hidden = dict(api_visibility="private", show_progress="hidden")
        app.load(annotator_field, [remembered], annotator, **hidden)
        for typed in (annotator.blur, annotator.submit):
            typed(lambda name: (name or "").strip(), annotator, remembered, queue=False, **hidden)
        audio.stop_recording(lambda: MICROPHONE, None, source, queue=False, **hidden)
        audio.upload(lambda: "upload", None, source, queue=False, **hidden)
        # clear first: a failed analysis must leave no previous clip id, prediction or label choices behind;
        # progress and a failure show on the emotion panel only (the message in a toast), not on every panel
        run.click(ep.clear_analysis, None, [probs, aux, figure, clip_id, info, label_choice], queue=False, **hidden).then(
            analyze, [audio, model, alpha, vtlp_view, source],
            [probs, aux, figure, warp_plot, clip_id, info, label_choice], api_name="analyze",
            show_progress_on=probs)
        # every change of the slider (drag, arrow keys, a typed value) redraws; the latest value wins
        redraw = dict(fn=ep.warp, inputs=[alpha, clip_id, model, vtlp_view], outputs=[figure, warp_plot],
                      trigger_mode="always_last", show_progress="hidden")
        alpha.input(api_name="warp", **redraw)
        vtlp_view.input(api_visibility="private", **redraw)
        # the write endpoints take the clip id and plain strings: an API caller needs no session state
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
        q_save.click(ep.save_on_tab, [q_clip, q_label, annotator], [q_status, counts, q_hist],
                     show_progress_on=q_status, api_visibility="private").success(
            **queue_refresh).success(**agree_refresh)
        q_confirm.click(ep.confirm_on_tab, [q_clip, annotator], [q_status, counts, q_hist],
                        show_progress_on=q_status, api_visibility="private").success(
            **queue_refresh).success(**agree_refresh)
        for trigger in (refresh.click, show.input, limit.submit, app.load, annotate_tab.select):
            trigger(**queue_refresh)
        queue_df.select(ep.pick, [queue_ids], [q_clip, q_audio, q_hist, q_label], api_visibility="private")
        q_clip.submit(bench.history, [q_clip], [q_hist], api_name="history")
        agree_btn.click(**agree_refresh)
        agreement_tab.select(**agree_refresh)
        app.load(**agree_refresh)
        app.load(bench.counts, None, [counts], **hidden)
        export_btn.click(ep.export, [export_kind], [export_file], api_name="export").success(
            lambda: gr.update(visible=True), None, export_file, queue=False, **hidden)
        reload_btn.click(ep.models, None, [model, m_pick], api_name="models")
        m_pick.change(ep.model_card, [m_pick], [m_summary, m_metrics, m_conf, m_card], api_name="model_card")
        app.load(ep.model_card, [m_pick], [m_summary, m_metrics, m_conf, m_card], **hidden)
        gr.api(ep.model_metrics, api_name="model_metrics")
        # the run's progress comes from the retrainer, polled by every page (and read on load: a reload shows it)
        view = dict(fn=ep.retrain_view, inputs=[seen_run],
                    outputs=[retrain_bar, retrain_md, retrain_table, model, m_pick, seen_run], **hidden)
        retrain_btn.click(bench.retrain, [m_pick], [retrain_md], api_name="retrain", concurrency_limit=1).success(**view)
        gr.Timer(2.0).tick(queue=False, **view)
        app.load(**view)
        gr.api(bench.retrain_status, api_name="retrain_status")
        gr.api(ep.retrain_progress, api_name="retrain_progress")
    app.workbench = bench
    return app
