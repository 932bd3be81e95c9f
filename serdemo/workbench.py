"""The workbench: the app's state and every action of its page, as plain methods with named results.

:class:`Workbench` holds what all sessions share (the checkpoint catalogue, loaded predictors, the
annotation store, the redraw cache, the background retrainer); each page callback in ``serdemo.ui`` is
one of its methods, so the app's behaviour is testable without a browser. No layout here; user errors are
raised as ``gr.Error`` (:func:`serdemo.uikit.user_error`), worded for the person, without a path.

Voices (models that adapt to a speaker's voice, :attr:`serdemo.inference.Predictor.adapts`): the Analyse tab's
clips analysed under one voice name adapt together (:class:`VoiceBook`, per login, annotator or browser
session); the annotation queue reads the stored clips of one known corpus speaker relative to each other
(:meth:`Workbench.speaker_guesses`).

One module per job: the catalogue of checkpoints and loaded models (:mod:`serdemo.catalogue`), the Analyse
tab (:mod:`serdemo.analysis_desk`, its voices :mod:`serdemo.voicebook`), the Annotate tab
(:mod:`serdemo.annotation_desk`) and the Retrain tab (:mod:`serdemo.retrain_desk`) are each a part of
:class:`Workbench`; here are the settings, the state they share, and every name re-exported.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serdemo.analysis_desk import ALPHA_MAX, ALPHA_MIN, Analysis, AnalysisDesk, ClipView, Redraw, checked_alpha
from serdemo.annotation_desk import (AGREEMENT_HEADERS, HISTORY_HEADERS, MAX_QUEUE, QUEUE_HEADERS,
                                     QUEUE_MIN_VOICE_CLIPS, QUEUE_NEW_STATS, QUEUE_VOICE_CLIPS, STATS_CACHE,
                                     AgreementView, AnnotationDesk, QueueView, Saved, SpeakerGuess, queue_limit)
from serdemo.audio import MAX_DURATION_S
from serdemo.catalogue import PICKER_INFO, Catalogue, ModelView, log
from serdemo.inference import Prediction, Predictor
from serdemo.retrain import Retrainer
from serdemo.retrain_desk import PLAN_ROWS, RetrainDesk, RetrainView, eta_phrase, retrain_progress_html
from serdemo.store import Store, default_data_dir
from serdemo.voicebook import (MAX_VOICE_CLIPS_TOTAL, MAX_VOICE_NAME, MAX_VOICES, UNUSUAL_NOTE, VOICE_CLIPS, Voice,
                               VoiceBook, shown_name, unusual_note, voice_name, voice_sentence)

__all__ = [  # the names this module has always offered, most now made in the modules above
    "AGREEMENT_HEADERS", "ALPHA_MAX", "ALPHA_MIN", "Analysis", "AgreementView", "ClipView", "HISTORY_HEADERS",
    "MAX_QUEUE", "MAX_VOICES", "MAX_VOICE_CLIPS_TOTAL", "MAX_VOICE_NAME", "ModelView", "PICKER_INFO", "PLAN_ROWS",
    "Prediction", "Predictor", "QUEUE_HEADERS", "QUEUE_MIN_VOICE_CLIPS", "QUEUE_NEW_STATS", "QUEUE_VOICE_CLIPS",
    "QueueView", "Redraw", "RetrainView", "STATS_CACHE", "Saved", "Settings", "SpeakerGuess", "UNUSUAL_NOTE",
    "VOICE_CLIPS", "Voice", "VoiceBook", "Workbench", "checked_alpha", "eta_phrase", "log", "queue_limit",
    "retrain_progress_html", "shown_name", "unusual_note", "voice_name", "voice_sentence",
]


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


class Workbench(Catalogue, AnalysisDesk, AnnotationDesk, RetrainDesk):
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
