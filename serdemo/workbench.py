"""The workbench: the app's state and every action of its page, as plain methods with named results.

:class:`Workbench` holds what all sessions share (the checkpoint catalogue, loaded predictors, the
annotation store, the redraw cache, the background retrainer); each page callback in ``serdemo.ui`` is
one of its methods, so the app's behaviour is testable without a browser. No layout here; user errors are
raised as ``gr.Error`` (:func:`serdemo.uikit.user_error`), worded for the person, without a path.

Voices (models that adapt to a speaker's voice, :attr:`serdemo.inference.Predictor.adapts`): the Analyse tab's
clips analysed under one voice name adapt together (:class:`VoiceBook`, per login, annotator or browser
session); the annotation queue reads the stored clips of one known corpus speaker relative to each other
(:meth:`Workbench.speaker_guesses`).
"""

from __future__ import annotations

import html
import inspect
import logging
import os
import threading
import time
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import numpy as np
import plotly.graph_objects as go
import soundfile as sf
import torch

from serdemo import agreement as agreement_mod
from serdemo.audio import MAX_DURATION_S, AudioError
from serdemo.cards import (METRIC_NOTES, calibration_text, card_summary_markdown, comparison_html, comparison_markdown,
                           expectation_line, headline, metrics_markdown, model_sentence)
from serdemo.checkpoint import CheckpointError, list_checkpoints, read_card, sha256_file, weights_path
from serdemo.export import export_rows, export_zip, origin_of, remove_old_exports, write_manifest
from serdemo.inference import Prediction, Predictor
from serdemo.labels import ANNOTATION_LABELS
from serdemo.plots import (VTLP_VIEWS, analysis_figure, confusion_figure, db_per_unit, mel_band_hz, reliability_figure,
                           warp_figure)
from serdemo.retrain import (FIRST_GUESS_S, WHY_SHORT, RetrainBusy, Retrainer, RetrainRefused, check_may_retrain,
                             human_duration, report_sentence, retrain_plan)
from serdemo.store import Store, StoreError, as_stored, default_data_dir, name_key
from serdemo.uikit import echo, require_retrain_login, requester, text_arg, user_error
from serdemo.voice import VoiceProfile
from serdemo.vtlp import F_HI_HZ, warp_power

ALPHA_MIN, ALPHA_MAX = 0.8, 1.2
MAX_QUEUE = 1000  # rows the annotation queue returns at most (the page's and the API's limit)
PLAN_ROWS = 20  # stored labels that would not train, listed by name before a retraining run
MAX_VOICES = 200  # Analyse-tab voice profiles kept (all users; the least recently used is forgotten first)
MAX_VOICE_NAME = 64  # characters of a voice name, after normalising
VOICE_CLIPS = 200  # clips one Analyse-tab voice keeps (its latest)
MAX_VOICE_CLIPS_TOTAL = 10_000  # clips all Analyse-tab voices keep together (~120 MB for the default probe)
QUEUE_MIN_VOICE_CLIPS = 2  # a known speaker's stored clips adapt together in the queue from this many on
QUEUE_VOICE_CLIPS = 40  # a known speaker's clips one queue voice rests on (more only when more are shown)
QUEUE_NEW_STATS = 64  # stored clips whose statistics one queue view computes at most (the rest: later views)
STATS_CACHE = 5000  # stored clips' statistics kept for the queue (~60 MB for the default probe)
log = logging.getLogger("serdemo.ui")


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


PICKER_INFO = ("Order: the default first, then by dev UA (never by the test figures). UA · WA: each model on its "
               "own test speakers (never trained on); more on the Models tab")
QUEUE_HEADERS = ["clip", "model guess", "conf.", "sec", "label", "source", "voice"]  # what matters first on a phone
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
    expectation: str = ""  # what accuracy to expect for a voice the model never heard, with chance
    voice: str = ""  # one sentence: adapted to which voice over how many clips, or read on its own
    voice_clips: int = 0  # how many clips the adaptation rests on (0: read on its own)


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
    rows: list[list]  # QUEUE_HEADERS: short id, model guess, confidence, seconds, label, source, voice
    clip_ids: list[str]  # the full id of each row


@dataclass
class SpeakerGuess:
    """A stored clip read relative to the voice of its known speaker's stored clips (the queue's guess)."""

    label: str
    confidence: float
    speaker: str  # as :func:`serdemo.export.origin_of` names it, e.g. "emodb:03"
    clips: int  # how many of that speaker's clips the adaptation rests on
    checkpoint: str


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
    sentence: str = ""  # one line: unseen speakers, unseen corpus/language, chance
    reliability: go.Figure | None = None  # the card's reliability bins
    calibration: str = ""  # temperature and ECE in a sentence


@dataclass
class RetrainView:
    bar: str  # HTML progress bar
    status: str  # Markdown
    comparison: str  # HTML table: the previous and the new model on the same held-out clips
    choices: list | None  # the pickers' new choices once a run's checkpoint is kept (None: unchanged)
    seen: str  # the kept run this page's pickers list
    decide: bool = False  # a done run waits to be kept or discarded: show the two buttons


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


def voice_name(name) -> str:
    """A voice name as it keys a profile: :func:`serdemo.store.name_key` (Unicode NFKC, case folded, inner
    whitespace collapsed, stripped, a leading ``@`` dropped, one alphabet), the same rule that makes two
    spellings of an annotator one person; "" for none. Refused (a user error) when not text, with control
    characters or over :data:`MAX_VOICE_NAME` characters."""
    if name is None:
        return ""
    if not isinstance(name, str):
        raise user_error("the voice name must be text")
    if len(name) > 16 * MAX_VOICE_NAME:  # not normalised at all: NFKC can grow a text many times
        raise user_error(f"a voice name has at most {MAX_VOICE_NAME} characters")
    try:
        text = name_key(name, "voice name")
    except StoreError as exc:
        raise user_error(exc) from None
    if any(unicodedata.category(ch).startswith("C") for ch in text):
        raise user_error("the voice name has control or invisible characters: type a plain name, e.g. alice")
    if len(text) > MAX_VOICE_NAME:
        raise user_error(f"a voice name has at most {MAX_VOICE_NAME} characters (this one has {len(text)})")
    return text


def shown_name(name: str) -> str:
    """A (normalised) voice name for Markdown: HTML and Markdown's own characters escaped."""
    text = html.escape(name, quote=False)
    return "".join("\\" + ch if ch in "\\`*_[]|~#" else ch for ch in text)


@dataclass
class Voice:
    """One Analyse-tab voice: its profile and the lock that keeps two analyses from mixing its clips."""

    profile: VoiceProfile
    lock: threading.Lock = field(default_factory=threading.Lock)


class VoiceBook:
    """The Analyse tab's voices: ``(scope, name, layout)`` -> :class:`Voice`, least recently used forgotten
    first beyond ``max_voices`` or beyond ``max_total`` clips in all (each voice keeps its latest
    ``max_clips``). ``scope`` is whose voices they are (a login, an annotator or a browser session, see
    :func:`serdemo.uikit.voice_scope`); ``layout`` the model's statistics (a profile never crosses models)."""

    def __init__(self, max_voices: int = MAX_VOICES, max_clips: int = VOICE_CLIPS,
                 max_total: int = MAX_VOICE_CLIPS_TOTAL):
        self.max_voices, self.max_clips, self.max_total = max_voices, max_clips, max_total
        self._voices: OrderedDict[tuple[str, str, str], Voice] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._voices)

    def get(self, scope: str, name: str, layout: str) -> Voice:
        """The voice (created empty when new), now the most recently used."""
        key = (scope, name, layout)
        with self._lock:
            voice = self._voices.get(key)
            if voice is None:
                profile = VoiceProfile(name)
                profile.MAX_CLIPS = self.max_clips
                voice = self._voices[key] = Voice(profile)
            self._voices.move_to_end(key)
            self._trim(keep=key)
            return voice

    def clips(self, scope: str, name: str) -> int:
        """Clips held under ``name`` in ``scope`` (the most of its models' profiles)."""
        with self._lock:
            return max((v.profile.n_clips for (s, n, _), v in self._voices.items() if (s, n) == (scope, name)),
                       default=0)

    def forget(self, scope: str, name: str) -> int:
        """Drop ``name``'s profiles in ``scope`` (every model's); returns the clips they held (the most of them)."""
        with self._lock:
            keys = [k for k in self._voices if k[:2] == (scope, name)]
            held = max((self._voices[k].profile.n_clips for k in keys), default=0)
            for k in keys:
                del self._voices[k]
            return held

    def trim(self) -> None:
        """Forget the least recently used voices while over the bounds (after a voice grew)."""
        with self._lock:
            self._trim()

    def _trim(self, keep=None) -> None:
        total = sum(v.profile.n_clips for v in self._voices.values())
        for key in list(self._voices):
            if len(self._voices) <= self.max_voices and total <= self.max_total:
                break
            if key == keep:
                continue
            total -= self._voices.pop(key).profile.n_clips


UNUSUAL_NOTE = ("This clip sounds unlike the recordings the model was trained on (another language, microphone or "
                "room?): trust its probabilities less than the figures above suggest.")


def unusual_note(pred) -> str:
    """The out-of-domain flag in words (empty when the clip looks like the training data or is not measured)."""
    return UNUSUAL_NOTE if getattr(pred, "unusual", False) else ""


def voice_sentence(name: str, clips: int, model: str, adapts: bool) -> str:
    """What the Analyse tab says of a result's voice."""
    if not name:
        return "Read on its own (no voice name)"
    if not adapts:
        return f"Read on its own: `{model}` does not adapt to a voice (voice '{shown_name(name)}' not used)"
    return f"Adapted to voice '{shown_name(name)}' over {clips} clip{'s' if clips != 1 else ''}"


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
        self._lock = threading.Lock()  # the catalogue, the loaded predictors and the redraw cache; held briefly
        self._loading: dict[str, threading.Lock] = {}  # checkpoint name -> held while that model loads
        self._views: OrderedDict[tuple[str, str], ClipView] = OrderedDict()
        self.catalogue: dict[str, Path] = {}
        self.cards: dict[str, dict] = {}
        self.broken: dict[Path, str] = {}  # checkpoint folder -> why it is skipped
        self._verified: set[tuple] = set()  # weights files whose hash matched their card: (path, size, mtime)
        self.voices = VoiceBook()  # the Analyse tab's voice names
        self._clip_stats: OrderedDict[tuple[str, str], np.ndarray | None] = OrderedDict()  # (clip, layout) -> stats
        self._clip_speaker: OrderedDict[str, str] = OrderedDict()  # clip -> known speaker ("" unknown)
        self._speaker_guesses: OrderedDict[str, SpeakerGuess] = OrderedDict()  # the latest queue guess per clip
        self._stats_lock = threading.Lock()  # one queue view computes statistics at a time
        self.reload()

    # ------------------------------------------------------------ checkpoints
    def reload(self) -> dict[str, Path]:
        """Rescan the checkpoint folders; a broken checkpoint is skipped with one warning (once per problem)."""
        found, cards, broken = {}, {}, {}
        for path in list_checkpoints(*self.settings.checkpoint_dirs):
            try:
                card = read_card(path)
                self._check_weights(path, card)
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

    def _check_weights(self, path: Path, card: dict) -> None:
        """The weights file is there with the size and SHA-256 its card states (hashed once per file version),
        so a checkpoint with broken weights is never offered; raises :class:`CheckpointError`."""
        weights = weights_path(path, card)
        try:
            st = weights.stat()
        except OSError:
            raise CheckpointError(f"checkpoint '{path.name}': its weights file is missing") from None
        key = (str(weights), st.st_size, st.st_mtime_ns)
        if key not in self._verified:
            if st.st_size != card["weights"].get("bytes", st.st_size) or \
                    sha256_file(weights) != card["weights"]["sha256"]:
                raise CheckpointError(f"checkpoint '{path.name}': its weights do not match its card (damaged or "
                                      "replaced); save the checkpoint again")
            self._verified.add(key)

    def choices(self) -> list[tuple[str, str]]:
        with self._lock:  # one catalogue: a reload swaps names and cards together
            catalogue, cards = self.catalogue, self.cards
        default = self.settings.default_model

        def dev_ua(name):
            try:
                return float(cards[name]["metrics"]["dev"]["overall"]["ua"])
            except (KeyError, TypeError, ValueError):
                return -1.0
        # the default first, then by dev UA (what recipes are chosen on), never by the test figures
        order = sorted(catalogue, key=lambda n: (n != default, -dev_ua(n), n))
        return [(f"{name} · {headline(cards[name])}", name) for name in order]

    def default_choice(self) -> str | None:
        catalogue = self.catalogue
        if self.settings.default_model in catalogue:
            return self.settings.default_model
        return next(iter(catalogue), None)

    def predictor(self, name: str | None) -> Predictor:
        """The loaded model of checkpoint ``name`` (loaded once). Loading (its hash check included) holds only
        that checkpoint's own lock: the catalogue, the pickers and the other models are not kept waiting."""
        name = name or self.default_choice()
        if name not in self.catalogue:
            self.reload()
        with self._lock:
            path, loaded = self.catalogue.get(name), self._predictors.get(name)
            if loaded is not None:
                return loaded
            if path is None:
                raise CheckpointError(f"no checkpoint named '{echo(name)}'; press 'Reload checkpoints' or pick another")
            loading = self._loading.setdefault(name, threading.Lock())
        with loading:  # one load per checkpoint, however many requests ask at once
            with self._lock:
                if name in self._predictors:
                    return self._predictors[name]
            pred = Predictor.from_checkpoint(path, self.settings.device)
            with self._lock:
                if self.catalogue.get(name) == path:  # a reload meanwhile may have dropped or replaced it
                    self._predictors[name] = pred
            return pred

    # ------------------------------------------------------------ analyse and redraw
    def _remember(self, clip_id: str, model: str, view: ClipView) -> None:
        with self._lock:
            self._views[(clip_id, model)] = view
            self._views.move_to_end((clip_id, model))
            while len(self._views) > self.CACHE_CLIPS:
                self._views.popitem(last=False)

    def _predict(self, pred_model: Predictor, wave: np.ndarray, require_speech: bool,
                 voice: Voice | None = None) -> tuple[Prediction, ClipView]:
        """One model run on a decoded clip and what its redraws need: the spectrum comes from that run
        (``keep_power``) where the predictor keeps it; otherwise the front end computes it once here.
        ``voice``: the clip joins that voice and is read relative to it, its earlier clips and itself
        (:meth:`Predictor.predict_voice`; the voice's lock is held, so two of its clips never interleave)."""
        if voice is not None:
            with voice.lock:
                pred = pred_model.predict_voice([wave], profile=voice.profile, require_speech=require_speech,
                                                keep_power=True, max_duration_s=self.settings.max_duration_s)[0]
            self.voices.trim()
            power = pred.power
        elif _accepts(pred_model.predict_batch, "keep_power"):
            limit = {"max_duration_s": self.settings.max_duration_s} \
                if _accepts(pred_model.predict_batch, "max_duration_s") else {}
            pred = pred_model.predict_batch([wave], alpha=None, require_speech=require_speech, keep_power=True,
                                            **limit)[0]
            power = pred.power
        else:
            pred = pred_model.predict(wave, alpha=None, require_speech=require_speech)
            power = None
        if power is None:
            with torch.inference_mode():
                power = pred_model.frontend.power(torch.as_tensor(wave, device=pred_model.device)[None].float())
        view = ClipView(power, pred.logmel, pred.frame_times_s, pred.attention_times_s, pred.attention,
                        pred.speech_segments_s, f"{pred.label()} ({pred.confidence():.0%}) — {pred_model.name}")
        return pred, view

    def analyse(self, audio, model_name: str | None, alpha: float, view: str = "difference",
                source: str | None = None, progress=None, voice: str | None = None, scope: str = "") -> Analysis:
        """Analyse a clip: probabilities per head, the spectrogram + VTLP + attention figure, its clip id.

        ``source``: where ``audio`` came from (the microphone or an upload), for the wording of errors.
        ``voice``: a voice name (normalised by :func:`voice_name`); the clips analysed under one name in one
        ``scope`` (whose voices: :func:`serdemo.uikit.voice_scope`) adapt together, each read relative to the
        earlier ones and itself, with a model that adapts. Without a name a clip is read on its own.
        """
        step = progress or (lambda *a, **k: None)
        t0 = time.perf_counter()
        alpha = checked_alpha(alpha)
        model_name = text_arg(model_name, "the model name", 256) or None
        voice_key = voice_name(voice)
        try:
            step(0.1, desc="decoding")
            pred_model = self.predictor(model_name)
            adapts = bool(getattr(pred_model, "adapts", False))
            # analyse exactly what the store keeps, so later views and retraining see the same clip
            wave = as_stored(pred_model.load(audio, max_duration_s=self.settings.max_duration_s))
            step(0.4, desc="running the model")
            entry = (self.voices.get(scope or "", voice_key, pred_model.voice_layout)
                     if voice_key and adapts else None)
            pred, clip = self._predict(pred_model, wave, require_speech=True, voice=entry)
            step(0.8, desc="saving the clip")
            name = Path(audio).name if isinstance(audio, (str, os.PathLike)) else "recording"
            sha = self.store.add_clip(wave, source_name=name, predicted=pred.label(),
                                      confidence=pred.confidence(), checkpoint=pred_model.name)
        except AudioError as exc:
            message = exc.for_source(source)
            if " lasts " in message and "limit" in message:  # too long for one clip: the Timeline tab takes it
                from serdemo.timeline import max_timeline_s
                message += (f" For a longer recording use the Timeline tab (up to {max_timeline_s() / 60:.0f} min): "
                            "it cuts the speech into segments and classifies each.")
            raise user_error(message, duration=None) from None
        except (CheckpointError, StoreError) as exc:
            raise user_error(exc, source, duration=None) from None
        self._remember(sha, pred_model.name, clip)
        figure = self._figure(pred_model, clip, alpha, view)
        aux = {h: p for h, p in pred.probabilities.items() if h != "emotion"}
        aux_md = "\n".join(f"**{h}**: " + ", ".join(f"{k} {v:.0%}" for k, v in sorted(p.items(), key=lambda kv: -kv[1]))
                           for h, p in aux.items()) or "_this model has no auxiliary heads_"
        info = (f"clip `{sha[:12]}` · {pred.duration_s:.2f} s · analysed in "
                f"{(time.perf_counter() - t0) * 1000:.0f} ms on {pred_model.device}")
        clips = int(getattr(pred, "voice_clips", 0) or 0)
        return Analysis(pred.probabilities["emotion"], aux_md, figure, warp_figure(alpha), sha, info,
                        pred.label(), self.expectation(pred_model.name),
                        " ".join(filter(None, [voice_sentence(voice_key, clips, pred_model.name, adapts),
                                               unusual_note(pred)])), clips)

    def forget_voice(self, voice: str | None, scope: str = "") -> str:
        """Forget the clips analysed under a voice name (in ``scope``): its next clip starts the voice anew."""
        name = voice_name(voice)
        if not name:
            return "Type the voice name to forget in the voice field first."
        held = self.voices.forget(scope or "", name)
        if not held:
            return f"No clips are held under voice '{shown_name(name)}'."
        return f"Forgot voice '{shown_name(name)}' ({held} clip{'s' if held != 1 else ''}): its next clip starts anew."

    def expectation(self, model_name: str | None) -> str:
        """What accuracy to expect for a voice the model never heard, read from its card, with chance level."""
        name = model_name or self.default_choice()
        with self._lock:
            card = self.cards.get(name)
        return expectation_line(card) if card else ""

    def _figure(self, pred_model: Predictor, clip: ClipView, alpha: float, view: str) -> go.Figure:
        """The analysis figure at ``alpha`` from the cached power spectrum: only the warp and the mel run."""
        cfg = pred_model.features
        if hasattr(pred_model, "logmel_from_power"):
            logmel_warped = np.asarray(pred_model.logmel_from_power(clip.power, alpha))
        else:
            with torch.inference_mode():
                warped = warp_power(clip.power, alpha, cfg.sample_rate, F_HI_HZ) if alpha != 1.0 else clip.power
                logmel_warped = pred_model.frontend.mel(warped)[0].float().cpu().numpy()
        return analysis_figure(clip.frame_times_s, clip.logmel, logmel_warped, clip.attention_times_s,
                               clip.attention, alpha, title=clip.title, speech_segments_s=clip.speech_segments_s,
                               band_hz=mel_band_hz(cfg), db_per_unit=db_per_unit(cfg), view=view if view in VTLP_VIEWS else "difference")

    def redraw(self, alpha: float, clip_id: str | None, model_name: str | None,
               view: str = "difference") -> Redraw:
        """Re-draw the VTLP view for a new alpha without running the model (once after a restart)."""
        t0 = time.perf_counter()
        alpha = checked_alpha(alpha)
        clip_id = text_arg(clip_id, "the clip id", 128)
        model_name = text_arg(model_name, "the model name", 256) or None
        if not clip_id:
            return Redraw(None, warp_figure(alpha), time.perf_counter() - t0)
        try:
            pred_model = self.predictor(model_name)
            clip = self._views.get((clip_id, pred_model.name))
            if clip is None:  # analysed before a restart or with another model: this once, run the model
                wave = pred_model.load(str(self.store.clip_path(clip_id)), max_duration_s=self.settings.max_duration_s)
                _, clip = self._predict(pred_model, wave, require_speech=False)
                self._remember(clip_id, pred_model.name, clip)
        except (AudioError, CheckpointError, StoreError) as exc:
            raise user_error(exc) from None
        figure = self._figure(pred_model, clip, alpha, view)
        return Redraw(figure, warp_figure(alpha), time.perf_counter() - t0)

    # ------------------------------------------------------------ labels
    def save_label(self, clip_id: str | None, label: str | None, annotator: str) -> Saved:
        """Append a label (``None``: confirm the model's prediction) for a stored clip; the model's
        prediction, confidence and checkpoint are recorded from the store, whoever calls."""
        clip_id = text_arg(clip_id, "the clip id", 128)
        label = None if label is None else text_arg(label, "the label", 256)
        who = text_arg(annotator, "the annotator name", 256).strip()
        try:
            if not clip_id:
                raise StoreError("analyse a clip (or pick one from the queue) first, then label it")
            if label is not None and label not in ANNOTATION_LABELS:
                raise StoreError(f"'{echo(label)}' is not one of the labels ({', '.join(ANNOTATION_LABELS)})")
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
        return Saved(f"Saved: clip `{clip_id[:12]}` {verdict} by {event.annotator} (label #{n} for this clip).",
                     self.counts(), self.history(clip_id))

    def history(self, clip_id: str | None) -> list[list]:
        """A clip's label history, oldest first."""
        clip_id = text_arg(clip_id, "the clip id", 128)
        if not clip_id:
            return []
        return [[e.created_utc.replace("T", " ").rstrip("Z"), e.label, e.annotator, e.predicted or "",
                 "" if e.confidence is None else f"{e.confidence:.0%}", e.checkpoint or ""]
                for e in self.store.history(clip_id)]

    def clip_audio(self, clip_id: str) -> tuple[int, np.ndarray]:
        """A stored clip for playback as ``(sample_rate, int16 samples)``: the page gets the samples, never the
        store's path (Gradio refuses to serve files outside its allowed folders, such as ``/data/serdemo``)."""
        path = self.store.clip_path(clip_id)
        try:
            data, rate = sf.read(str(path), dtype="int16")
        except (OSError, RuntimeError) as exc:
            raise StoreError(f"clip {clip_id[:12]} could not be read from the store") from exc
        return int(rate), data

    def queue_entries(self, limit: int = 50, show: str = "all") -> list[dict]:
        """The queue for API callers: full clip ids, numbers unrounded; ``voice``: the guess read relative to
        the clip's known speaker's stored clips (:meth:`speaker_guesses`), or None."""
        entries = self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
        guesses = self.speaker_guesses(entries)
        out = []
        for q in entries:
            row = {k: q[k] for k in ("clip", "source_name", "duration_s", "predicted", "confidence", "label",
                                     "annotator")}
            g = guesses.get(q["clip"])
            row["voice"] = None if g is None else {"speaker": g.speaker, "clips": g.clips, "predicted": g.label,
                                                   "confidence": g.confidence, "checkpoint": g.checkpoint}
            out.append(row)
        return out

    def queue(self, limit: int = 50, show: str = "unlabelled") -> QueueView:
        """Stored clips, least confident model prediction first; ``show``: "unlabelled" or "all". Where a clip's
        speaker is known and the store holds more of that speaker's clips, the guess and its confidence are
        read relative to that speaker's voice (:meth:`speaker_guesses`), and the voice column says over how
        many clips; the order stays the stored predictions'."""
        entries = self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
        guesses = self.speaker_guesses(entries)
        rows = []
        for q in entries:
            g = guesses.get(q["clip"])
            guess, conf = (g.label, g.confidence) if g is not None else (q["predicted"], q["confidence"])
            rows.append([q["clip"][:8], guess or "", "" if conf is None else f"{conf:.0%}", f"{q['duration_s']:.1f}",
                         q["label"] or "", (q["source_name"] or "")[:28],
                         "" if g is None else f"{g.speaker} ×{g.clips}"])
        return QueueView(rows, [q["clip"] for q in entries])

    # ------------------------------------------------------------ the queue's known speakers
    def _known_speaker(self, entry: dict) -> str:
        """The clip's speaker where known (its corpus file name or an entered speaker,
        :func:`serdemo.export.origin_of`), else ""; cached per clip (a stored clip's origin never changes)."""
        clip = entry["clip"]
        with self._lock:
            known = self._clip_speaker.get(clip)
        if known is not None:
            return known
        try:
            entered = self.store.clip_info(clip).get("speaker")
        except StoreError:
            entered = None
        known = origin_of(entry.get("source_name"), entered).speaker or ""
        with self._lock:
            self._clip_speaker[clip] = known
            while len(self._clip_speaker) > STATS_CACHE:
                self._clip_speaker.popitem(last=False)
        return known

    def _fill_statistics(self, pred_model: Predictor, clips: list[str], budget: int) -> None:
        """Compute (once; cached by clip id) the raw statistics of up to ``budget`` of ``clips`` that have
        none yet, in their order: the stored clip through :meth:`Predictor.predict_batch`."""
        layout = pred_model.voice_layout
        with self._stats_lock:
            with self._lock:
                todo = [c for c in dict.fromkeys(clips) if (c, layout) not in self._clip_stats][:budget]
            for start in range(0, len(todo), 8):
                part, waves = [], []
                for c in todo[start:start + 8]:
                    try:
                        waves.append(pred_model.load(str(self.store.clip_path(c)),
                                                     max_duration_s=self.settings.max_duration_s))
                        part.append(c)
                    except (AudioError, StoreError):
                        with self._lock:
                            self._clip_stats[(c, layout)] = None  # unreadable: not tried again
                stats = [p.statistics for p in pred_model.predict_batch(waves, alpha=None)] if waves else []
                with self._lock:
                    for c, st in zip(part, stats):
                        self._clip_stats[(c, layout)] = st
                    while len(self._clip_stats) > STATS_CACHE:
                        self._clip_stats.popitem(last=False)

    def speaker_guesses(self, entries: list[dict]) -> dict[str, SpeakerGuess]:
        """The queue's guesses for ``entries`` (store queue rows) whose speaker is known: each clip read by the
        default model relative to the voice of that speaker's stored clips (all those shown, then others up
        to :data:`QUEUE_VOICE_CLIPS` in all; at least :data:`QUEUE_MIN_VOICE_CLIPS`). Statistics are computed lazily
        (at most :data:`QUEUE_NEW_STATS` clips per call, the shown ones first) and cached by clip id, so the
        first view of a large store adapts over fewer clips than later ones. Empty when the default model does
        not adapt."""
        shown = {q["clip"]: self._known_speaker(q) for q in entries}
        wanted = {spk for spk in shown.values() if spk}
        if not wanted:
            return {}
        try:
            pred_model = self.predictor(None)
        except CheckpointError:
            return {}
        if not getattr(pred_model, "adapts", False):
            return {}
        members: dict[str, list[str]] = {spk: [c for c, k in shown.items() if k == spk] for spk in wanted}
        for q in self.store.queue(MAX_QUEUE, unlabelled_only=False):  # the same speakers' other stored clips
            spk = self._known_speaker(q) if q["clip"] not in shown else ""
            if spk in members and len(members[spk]) < QUEUE_VOICE_CLIPS:
                members[spk].append(q["clip"])
        order = [c for c in shown if shown[c] in wanted] + [c for m in members.values() for c in m if c not in shown]
        try:
            self._fill_statistics(pred_model, order, QUEUE_NEW_STATS)
        except (AudioError, RuntimeError, ValueError) as exc:  # the queue still shows the stored guesses
            log.warning("queue: statistics of stored clips could not be computed: %s", exc)
        layout = pred_model.voice_layout
        with self._lock:
            stats = {c: self._clip_stats.get((c, layout)) for m in members.values() for c in m}
        out: dict[str, SpeakerGuess] = {}
        for spk, clips in members.items():
            have = [c for c in clips if stats.get(c) is not None]
            targets = [c for c in have if c in shown]
            if len(have) < QUEUE_MIN_VOICE_CLIPS or not targets:
                continue
            voice = np.stack([stats[c] for c in have])
            probs = pred_model.predict_from_statistics(np.stack([stats[c] for c in targets]), voice_stats=voice)
            for c, p in zip(targets, probs):
                label = max(p, key=p.get)
                out[c] = SpeakerGuess(label, float(p[label]), spk, len(have), pred_model.name)
        with self._lock:
            self._speaker_guesses.update(out)
            for c in out:
                self._speaker_guesses.move_to_end(c)
            while len(self._speaker_guesses) > STATS_CACHE:
                self._speaker_guesses.popitem(last=False)
        return out

    def counts(self) -> list[list]:
        """Clips per current label (each clip once), then save events per annotator (every save counted)."""
        c = self.store.counts()
        return [["clips", k, v] for k, v in c["label"].items()] + [["saves", k, v] for k, v in c["annotator"].items()]

    def clip_panel(self, clip_id: str | None) -> str:
        """What the Annotate panel says about its clip: source file, corpus, speaker, duration, model guess."""
        if not clip_id:
            return "_no clip selected: click a queue row_"
        try:
            info = self.store.clip_info(clip_id)
        except StoreError as exc:
            raise user_error(exc) from None
        source = info.get("source_name") or "recording"
        origin = origin_of(source, info.get("speaker"))  # what the file name tells, as the export reads it
        corpus = origin.corpus or "unknown"
        info["speaker"] = origin.speaker.partition(":")[2] or origin.speaker
        guess = info.get("predicted") or "?"
        conf = "" if info.get("confidence") is None else f" ({info['confidence']:.0%})"
        with self._lock:
            adapted = self._speaker_guesses.get(clip_id)
        voice = "" if adapted is None else (
            f" · read relative to speaker {html.escape(adapted.speaker)}'s voice over {adapted.clips} stored clips "
            f"(`{html.escape(adapted.checkpoint)}`): {html.escape(adapted.label)} ({adapted.confidence:.0%})")
        return (f"**{html.escape(source)}** · corpus {html.escape(str(corpus))} · speaker "
                f"{html.escape(str(info.get('speaker') or 'unknown'))} · {float(info.get('duration_s') or 0):.1f} s · "
                f"model guess {html.escape(guess)}{conf}{voice} · clip `{clip_id[:12]}`")

    def next_clip(self, after: str | None, limit: int = 50, show: str = "unlabelled") -> str | None:
        """The clip to load after saving ``after``: the queue's next clip after it (in the queue's order,
        whether or not ``after`` is still listed), else its first one; None when nothing else is queued."""
        ids = [q["clip"] for q in self.store.queue(queue_limit(limit), unlabelled_only=show == "unlabelled")
               if q["clip"] != after]
        if not ids:
            return None
        order = {q["clip"]: i for i, q in enumerate(self.store.queue(MAX_QUEUE, unlabelled_only=False))}
        here = order.get(after, -1)
        return next((c for c in ids if order.get(c, -1) > here), ids[0])

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
        audiofolder builder) or "manifest" (the training manifest ``manifest.csv`` + ``audio/``), made by
        :func:`serdemo.export.export_zip`; exports served more than an hour ago are deleted first. The zip is
        written into Gradio's cache folder, which Gradio serves from without copying it (a zip elsewhere was
        copied there: two copies of every export); the housekeeping sweep ages it out with the uploads."""
        from serdemo.housekeeping import gradio_cache_dir

        remove_old_exports()  # older exports, written to the temp folder
        remove_old_exports(gradio_cache_dir())
        kind = text_arg(kind, "the export kind", 256)
        try:  # nothing labelled is a StoreError too
            return export_zip(self.store, kind if kind in ("audiofolder", "manifest") else "audiofolder",
                              work_dir=gradio_cache_dir()).archive
        except StoreError as exc:
            raise user_error(exc) from None

    # ------------------------------------------------------------ models and retraining
    def model_view(self, name: str | None) -> ModelView:
        """A checkpoint's card as a readable summary, its held-out metrics and its test confusion."""
        name = text_arg(name, "the model name", 256)
        path = self.catalogue.get(name) if name else None  # one read: a reload may swap the catalogue
        if path is None:
            return ModelView("_pick a checkpoint_", "", None)
        try:
            card = read_card(path)
        except CheckpointError as exc:
            gr.Warning(str(exc))
            return ModelView(f"_{html.escape(str(exc))}_", "", None)
        try:
            m = card.get("metrics", {})
            fig = confusion_figure(m["test"]["overall"]["confusion"], m["test"]["overall"]["classes"],
                                   f"{name}: confusion, test speakers")
        except (AttributeError, KeyError, TypeError, ValueError):
            fig = None  # no (readable) held-out confusion in this card
        bins = (card.get("calibration") or {}).get("reliability", {}).get("bins") \
            if isinstance(card.get("calibration"), dict) else None
        reliability = reliability_figure(bins, f"{name}: reliability, test speakers (calibrated)") if bins else None
        notes = "\n".join(f"- {n}" for n in METRIC_NOTES)
        return ModelView(card_summary_markdown(name, card), f"{notes}\n\n{metrics_markdown(card)}", fig,
                         model_sentence(name, card), reliability, calibration_text(card))

    def models_overview(self) -> str:
        """One sentence per model (the pickers' order): unseen speakers, unseen corpus/language, chance."""
        with self._lock:
            cards = dict(self.cards)
        lines = [model_sentence(name, cards[name]) for _, name in self.choices() if name in cards]
        return ("#### What to expect from each model (listed default first, then by dev UA)\n\n"
                + "\n\n".join(lines)) if lines else "_no checkpoints found_"

    def _retrain_corpora(self, card: dict) -> tuple[str, ...]:
        """The corpora a fine-tuning run of ``card``'s checkpoint reads: the settings', else the recipe's own."""
        if self.settings.retrain_corpora is not None:
            return tuple(self.settings.retrain_corpora)
        config = card.get("training", {}).get("config")
        return tuple(config.get("corpora", [])) if isinstance(config, dict) else ()

    def retrain_plan(self, model_name: str | None) -> str:
        """Before a run: which stored labels fine-tuning ``model_name`` would train on and why the others would
        not (:func:`serdemo.retrain.retrain_plan`), and how long a run takes, as Markdown."""
        model_name = text_arg(model_name, "the model name", 256)
        base = self.catalogue.get(model_name) if model_name else None
        if base is None:
            return "_pick a checkpoint to see what fine-tuning it would train on_"
        try:
            card = read_card(base)
        except CheckpointError as exc:
            return f"_{html.escape(str(exc))}_"
        rows = export_rows(self.store)
        if not rows:
            return ("**Before you fine-tune:** no stored clip is labelled yet; label some on the Analyse or Annotate "
                    "tab first.")
        plan = retrain_plan(rows, card, self._retrain_corpora(card))
        model = str((card.get("training", {}).get("config") or {}).get("model", "?"))
        lines = [f"**Before you fine-tune `{model_name}`:** {report_sentence(plan)}"]
        skipped = [c for c in plan["clips"] if c["why"]]
        if skipped:
            shown = skipped[:PLAN_ROWS]
            lines += ["", "| source | label | why it does not train | clip |", "|---|---|---|---|"]
            lines += [f"| {_cell(c['source'] or 'recording')} | {c['label']} | "
                      f"{WHY_SHORT.get(c['why'], c['why'].replace('label not in the', 'not in'))} | `{c['clip'][:8]}` |"
                      for c in shown]
            if len(skipped) > len(shown):
                lines.append(f"\n_and {len(skipped) - len(shown)} more_")
        notes = ["held-out speakers as the base model's card lists them" + (
                 "" if plan["same_split"] else " (this run reads other corpora, so its own split may differ)"),
                 "a renamed copy of a corpus clip is found by the run itself"]
        if any(a.startswith("--limit-per-corpus") for a in self.settings.retrain_args):
            notes.append("this server trains on a sample of each corpus (--limit-per-corpus): a copy of a corpus "
                         "clip outside the sample trains")
        guess = FIRST_GUESS_S.get(model, 300.0)
        lines += ["", f"A run of this recipe (`{model}`) takes about **{human_duration(guess)}** on a 2-core CPU: "
                  "reading the corpora, preparing, training, then scoring the previous and the new model on the same "
                  "held-out speakers; each phase shows its own ETA. The run reports what it trains on once it has read "
                  f"its data. ({'; '.join(notes)}.)"]
        return "\n".join(lines)

    def retrain(self, model_name: str | None, user: str | None = None, owner: str = "") -> str:
        """Fine-tune the selected checkpoint on the stored annotations in a background process, for ``owner``
        (:func:`serdemo.uikit.requester`: only they or an admin may cancel, keep or discard the run; their own
        quota counts it). With ``SERDEMO_AUTH`` set only a logged-in ``user`` may start a run."""
        try:
            check_may_retrain(user)
        except RetrainRefused as exc:
            raise user_error(exc) from None
        model_name = text_arg(model_name, "the model name", 256)
        base = self.catalogue.get(model_name) if model_name else None  # one read: a reload may swap the catalogue
        if base is None:
            raise user_error("pick a checkpoint to fine-tune")
        if not self.store.current_labels():
            raise user_error("there are no labelled clips in the store yet: relabel some clips first")
        try:
            card = read_card(base)
        except CheckpointError as exc:
            raise user_error(exc) from None
        corpora = self._retrain_corpora(card)
        manifest = write_manifest(self.store, self.store.directory / "retrain" / "manifest.csv")
        self.retrainer.corpora = list(corpora)
        try:
            out = self.retrainer.start(base, card, manifest, list(self.settings.retrain_args), owner=owner)
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return f"Started fine-tuning **{model_name}** on {len(self.store.current_labels())} stored clips " \
               f"+ {len(corpora)} corpora → `{out.name}`"

    def _comparison(self, st: dict) -> dict | None:
        """A finished run's comparison (``training.compare``'s result) while it waits for a decision, or None."""
        return self.retrainer.comparison_result() if st.get("decision") == "waiting" else None

    def _retrain_markdown(self, st: dict) -> str:
        """The run's state in a line or two (the comparison itself is rendered from its data, apart)."""
        name = st.get("out", "")
        if st["state"] == "idle":
            return "No retraining run yet."
        if st["state"] == "running":
            text = f"Training `{name}` ({human_duration(st['elapsed_s'])} so far)" + (
                f"; dev UA after epoch {st['epoch']}: {st['dev_ua']:.3f}" if st["dev_ua"] is not None else "") + "."
            if st.get("store"):
                text += f"\n\nThe run has read its data: {report_sentence(st['store'])}"
            return text
        if st["state"] == "failed":
            return f"Retraining `{name}` failed: {st.get('reason') or 'the server log has the details'}."
        if st["state"] == "cancelled":
            return f"Retraining `{name}` was cancelled."
        if st.get("decision") == "kept":
            return f"Kept: `{name}` is in the model pickers."
        if st.get("decision") == "discarded":
            return f"Discarded: `{name}` was deleted; `{st.get('base') or 'the previous model'}` stays as it was."
        trained = f"\n\nIt trained on {report_sentence(st['store'])}" if st.get("store") else ""
        return (f"Done: `{name}` is trained. Below, it and `{st.get('base') or 'the previous model'}` are scored on the "
                "same clips of speakers neither trained on. **Keep** it to serve it (it joins the model pickers) or "
                f"**discard** it (its files are deleted); no other run starts until you choose.{trained}")

    # request first: the page wires these with no inputs (Gradio puts the request where its annotation is);
    # an annotator name, where wired, names the requester as it named the run's owner
    def retrain_cancel(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Stop the background run, if one runs: only its owner (who started it) or an admin may. With
        ``SERDEMO_AUTH`` set only a logged-in user may."""
        require_retrain_login(request)
        who = requester(request, text_arg(annotator_name, "the annotator name", 256))
        try:
            cancelled = self.retrainer.cancel(who)
        except RetrainBusy as exc:
            raise user_error(exc) from None
        return "Cancelled: the run was stopped." if cancelled else "No retraining run is in progress."

    def retrain_keep(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Keep the finished run's checkpoint: it joins the model pickers and can be served. Only its owner or
        an admin may (anyone once it has waited an hour). With ``SERDEMO_AUTH`` set only a logged-in user may."""
        name = self._decide(self.retrainer.keep, request, annotator_name)
        self.reload()
        return f"Kept: `{name}` is in the model pickers."

    def retrain_discard(self, request: gr.Request = None, annotator_name: str | None = None) -> str:
        """Delete the finished run's checkpoint. Only its owner or an admin may (anyone once it has waited an
        hour). With ``SERDEMO_AUTH`` set only a logged-in user may."""
        return f"Discarded: `{self._decide(self.retrainer.discard, request, annotator_name)}` was deleted."

    @staticmethod
    def _decide(action, request: gr.Request | None, annotator_name: str | None = None) -> str:
        """Keep or discard (``action``) the done run, for its owner or an admin; its name."""
        require_retrain_login(request)
        who = requester(request, text_arg(annotator_name, "the annotator name", 256))
        try:
            return action(who)
        except RetrainBusy as exc:
            raise user_error(exc) from None

    def retrain_status(self) -> str:
        """Progress of the background run as Markdown; when done, the two models' comparison."""
        st = self.retrainer.status()
        result = self._comparison(st)
        status = self._retrain_markdown(st)
        return f"{status}\n\n{comparison_markdown(result)}" if result is not None else status

    def retrain_view(self, seen: str = "") -> RetrainView:
        """The page's view of the run (polled, and on load, so a reload shows it): the status line, and the
        comparison as a table built from the same data as :meth:`retrain_status`'s Markdown; the keep and
        discard buttons show while a done run waits for the choice."""
        st = self.retrainer.status()
        fresh = st.get("decision") == "kept" and st["out"] != seen
        if fresh and st["out"] not in self.catalogue:  # kept by another page or an API caller
            self.reload()
        result = self._comparison(st)
        table = comparison_html(result) if result is not None else ""
        return RetrainView(retrain_progress_html(st), self._retrain_markdown(st), table,
                           self.choices() if fresh else None, st["out"] if fresh else seen,
                           st.get("decision") == "waiting")


def checked_alpha(alpha) -> float:
    """The VTLP alpha as a float in [ALPHA_MIN, ALPHA_MAX], or a user error saying what is allowed. The page's
    slider hands the value over unchecked (:func:`serdemo.uikit.checked_by_the_callback`): this is the one check."""
    try:
        value = float(alpha)
    except (TypeError, ValueError):
        value = float("nan")
    if not ALPHA_MIN <= value <= ALPHA_MAX:  # NaN fails too
        shown = f"{value:g}" if value == value else repr(str(alpha)[:20])
        raise user_error(f"VTLP alpha (the warp factor) must be a number between {ALPHA_MIN} and {ALPHA_MAX}, "
                         f"not {shown}")
    return value


def queue_limit(limit) -> int:
    """At most :data:`MAX_QUEUE` rows, whatever a caller asks for (the page offers up to that too)."""
    try:
        n = int(limit or 50)
    except (TypeError, ValueError):
        n = 50
    return min(MAX_QUEUE, max(1, n))


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (the predictor's API grows; older ones are still served)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _cell(text: str) -> str:
    """Text for a Markdown table cell: escaped, no pipes or line breaks, at most 40 characters."""
    text = " ".join(str(text).replace("|", "/").split())
    return html.escape(text if len(text) <= 40 else text[:39] + "…")


def eta_phrase(st: dict) -> str:
    """``ETA 1 min 05 s``; past the estimate, by how much; ``ETA unknown`` without one."""
    if st.get("overdue_s"):
        return f"taking {human_duration(st['overdue_s'])} longer than estimated"
    return f"ETA {human_duration(st.get('eta_s'))}"


def retrain_progress_html(st: dict) -> str:
    """A retraining run (:meth:`Retrainer.status`) as a progress bar: what runs now and its ETA, in every phase."""
    if st.get("state", "idle") == "idle":
        return ""
    step, total, phase = st.get("step", 0), st.get("total_steps", 0), st.get("phase", st["state"])
    activity = st.get("activity") or phase
    if phase == "done":
        value, text = (1, 1), {"kept": "kept: the new model is in the pickers", "discarded": "discarded"}.get(
            st.get("decision"), "done: keep or discard the new model (below)")
    elif phase == "cancelled":
        value, text = (step, total or 1), "cancelled"
    elif phase == "failed":
        value, text = (step, total or 1), "failed (see below)"
    elif phase == "comparing":
        value, text = (1, 1), f"trained; {activity} · {eta_phrase(st)}"
    elif phase == "preparing" or not total:
        value, text = None, f"{activity} · {eta_phrase(st)} (then scoring both models)"
    else:
        loss = f" · loss {st['loss']:.3f}" if st.get("loss") is not None else ""
        value = (step, total)
        text = (f"{step / total:.0%} · step {step}/{total} · epoch {st.get('current_epoch', 0)}/{st.get('of', 0)}"
                f"{loss} · {eta_phrase(st)} (then scoring both models)")
    bar = (f'<progress value="{value[0]}" max="{value[1]}"' if value else "<progress") + \
        ' style="width:100%;height:16px"></progress>'
    name = html.escape(Path(st.get("out", "")).name)
    return (f'<div class="retrain-progress" data-phase="{phase}"><div><b>{name}</b>: {html.escape(text)}</div>'
            f"{bar}</div>")


