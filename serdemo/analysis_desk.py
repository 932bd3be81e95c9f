"""The Analyse tab's actions: a clip analysed (probabilities, the spectrogram + VTLP + attention figure, its
clip stored), a voice forgotten, the VTLP view redrawn from the cached power spectrum without running the
model. :class:`AnalysisDesk` is a part of :class:`serdemo.workbench.Workbench`, which re-exports every name here.
"""

from __future__ import annotations

import inspect
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import torch

from serdemo.audio import AudioError
from serdemo.checkpoint import CheckpointError
from serdemo.inference import Prediction, Predictor
from serdemo.plots import VTLP_VIEWS, analysis_figure, db_per_unit, mel_band_hz, warp_figure
from serdemo.store import StoreError, as_stored
from serdemo.uikit import text_arg, user_error
from serdemo.voicebook import Voice, shown_name, unusual_note, voice_name, voice_sentence
from serdemo.vtlp import F_HI_HZ, warp_power

ALPHA_MIN, ALPHA_MAX = 0.8, 1.2


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


class AnalysisDesk:
    """Analyse and redraw.

    Part of :class:`serdemo.workbench.Workbench` (a mixin: the state it reads, ``settings``, ``store``, ``_lock`` ...,
    is the workbench's, made in its ``__init__``).
    """

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


def _accepts(fn, name: str) -> bool:
    """Whether ``fn`` takes a keyword ``name`` (the predictor's API grows; older ones are still served)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
