"""Voice adaptation: a clip's statistics read relative to its speaker's voice.

Across speakers, corpora and languages much of what the encoder's statistics carry is the voice and the
recording set-up, not the emotion. The probe (:class:`serdemo.models.probe.LinearProbe` with ``voice`` set)
is trained with every training speaker's statistics centred on that speaker's own *voice offset*, and at
inference a clip is centred on the offset estimated from unlabelled clips of the same voice (a
:class:`VoiceProfile`: the clips analysed under one voice name, a timeline's recording, an archive's
speaker column).

The offset of a voice is the mean of its clips' statistics less the training voices' mean, **shrunk by clip
count** (``n / (n + tau)`` of the way: 3 clips move it a little, 100 nearly all the way) and, with
``posterior``, **less what the clips' emotions explain**: a real speaker's clips are skewed (a talk-show
guest is angry in most of them), and centring on their plain mean would remove the emotion itself. Each clip
is first classified, then the predicted emotion's typical offset (``class_offsets``, learnt in training) is
taken off before averaging, and the estimate is refined twice. In training the same offset is computed from
the true labels (``speaker_offsets(..., y=...)``).

Everything here is numpy (float64); the model, the training screen and the batch scorer call the same
functions, so they read the same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

VOICE_MODES = ("none", "mean", "meanvar")
POSTERIOR_ROUNDS = 5
MIN_SCALE = 0.5


@dataclass(frozen=True)
class VoiceRule:
    """How a voice is normalised: ``mode`` (none / mean / meanvar), ``tau`` (shrinkage by clip count) and
    ``posterior`` (discount each clip's predicted emotion from the voice's estimate)."""

    mode: str = "none"
    tau: float = 3.0
    posterior: bool = False

    def __post_init__(self):
        if self.mode not in VOICE_MODES:
            raise ValueError(f"voice must be one of {', '.join(VOICE_MODES)}, not {self.mode!r}")
        if not isinstance(self.tau, (int, float)) or not 0 <= self.tau <= 1000:
            raise ValueError(f"voice_tau must be a number within 0..1000, not {self.tau!r}")
        if not isinstance(self.posterior, bool):
            raise ValueError(f"voice_posterior must be true or false, not {self.posterior!r}")


@dataclass
class NormStats:
    """What training learnt of voices: the training voices' mean statistics, their typical within-voice
    variance (``meanvar``), and each emotion's typical offset within a voice ``(classes, dim)``."""

    global_mean: np.ndarray
    global_var: np.ndarray
    class_off: np.ndarray


def _groups(speaker: np.ndarray):
    speaker = np.asarray(speaker)
    for s in np.unique(speaker):
        yield np.flatnonzero(speaker == s)


def class_offsets(xa: np.ndarray, y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each class's mean of voice-normalised statistics ``(classes, dim)`` (0 for a class not present)."""
    out = np.zeros((n_classes, xa.shape[1]))
    for c in np.unique(y):
        out[int(c)] = xa[y == c].mean(0)
    return out


def speaker_offsets(x: np.ndarray, speaker: np.ndarray, global_mean: np.ndarray, y: np.ndarray | None = None,
                    n_classes: int = 0, meanvar: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training: each clip's voice offset and scale from all of its speaker's clips, and the voices' typical
    within-voice variance ``-> ((n, dim), (n, dim), (dim,))``.

    With labels ``y`` the offset is the mean of what the clips' emotions do not explain (alternating with the
    classes' offsets, three rounds): a speaker who recorded more of one emotion is not centred on it."""
    # per-clip arrays in float32 (the statistics' own precision: these are (clips x dim) and a retraining holds
    # several), every mean and variance computed in float64
    x = np.asarray(x)
    global_mean = np.asarray(global_mean, np.float64)
    groups = list(_groups(speaker))
    off = np.zeros(x.shape, np.float32)
    for idx in groups:
        off[idx] = x[idx].mean(0, dtype=np.float64) - global_mean
    if y is not None:
        for _ in range(3):
            delta = class_offsets(x - global_mean - off, y, n_classes)
            for idx in groups:
                off[idx] = (x[idx] - global_mean - delta[y[idx]]).mean(0)
    variances = [(x[idx] - global_mean - off[idx]).var(0, dtype=np.float64) for idx in groups]
    typical = np.mean(variances, axis=0) + 1e-8
    scale = np.ones(x.shape, np.float32)
    if meanvar:
        for idx, v in zip(groups, variances):
            scale[idx] = np.maximum(np.sqrt(v / typical), MIN_SCALE)
    return off, scale, typical


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def adapt_offsets(clips: np.ndarray, ns: NormStats, rule: VoiceRule, logits_fn) -> tuple[np.ndarray, np.ndarray]:
    """Inference: a voice's offset and scale ``((dim,), (dim,))`` from the raw statistics of its unlabelled
    clips ``(k, dim)``. ``logits_fn(normalised (k, dim)) -> (k, classes)``: the classifier (``posterior``)."""
    dim = ns.global_mean.shape[0]
    clips = np.asarray(clips, np.float64).reshape(-1, dim)
    k = len(clips)
    if rule.mode == "none" or k == 0:
        return np.zeros(dim), np.ones(dim)
    w = k / (k + rule.tau) if k + rule.tau > 0 else 0.0
    centred = clips - ns.global_mean
    off = w * centred.mean(0)
    if rule.posterior:
        # EM from the plain mean: each clip's emotion posterior under this voice's own emotion mix (a skewed
        # voice is explained by its mix, not by moving the voice), then the offset of what they leave
        n_classes = ns.class_off.shape[0]
        log_mix = np.zeros(n_classes)
        for _ in range(POSTERIOR_ROUNDS):
            p = softmax(logits_fn(centred - off) + log_mix)
            mix = (p.sum(0) + 1.0) / (k + n_classes)  # smoothed towards equal shares
            log_mix = np.log(mix)
            off = w * (centred - p @ ns.class_off).mean(0)
    scale = np.ones(dim)
    if rule.mode == "meanvar":
        var = (centred - off).var(0) / (ns.global_var + 1e-8)
        scale = np.maximum(np.sqrt(w * var + (1 - w)), MIN_SCALE)
    return off, scale


def normalise(x: np.ndarray, ns: NormStats, off: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Raw statistics ``(n, dim)`` -> voice-normalised statistics (what the standardisation reads next)."""
    return (np.asarray(x, np.float64) - ns.global_mean - off) / scale


@dataclass
class VoiceProfile:
    """Unlabelled clips of one voice, as the probe's raw statistics: what adaptation rests on.

    Accumulate with :meth:`add` (the app's Analyse tab under a voice name, the live microphone as the
    recording grows); ``layout`` names the statistics (encoder digest, layers, frame normalisation) so a
    profile built for one model is never applied to another's statistics. At most :data:`MAX_CLIPS` clips
    are kept (the latest), so a long-lived profile stays small (each clip is 3,072 numbers for the default).
    """

    name: str = ""
    layout: str = ""
    clips: list = field(default_factory=list)
    keys: list = field(default_factory=list)

    MAX_CLIPS = 500

    @property
    def n_clips(self) -> int:
        return len(self.clips)

    def statistics(self) -> np.ndarray:
        return np.stack(self.clips) if self.clips else np.zeros((0, 0))

    def add(self, stats: np.ndarray, layout: str, key: str | None = None) -> None:
        """Add clips' raw statistics ``(k, dim)``; ``key`` (e.g. a clip's content hash) keeps a clip analysed
        twice from counting twice."""
        if self.layout and layout != self.layout:
            raise ValueError("this voice profile was built for another model's statistics; start a new one")
        self.layout = layout
        for row in np.atleast_2d(np.asarray(stats, np.float32)):
            if key is not None and key in self.keys:
                continue
            self.clips.append(row)
            self.keys.append(key)
        del self.clips[:-self.MAX_CLIPS], self.keys[:-self.MAX_CLIPS]

    def copy(self) -> "VoiceProfile":
        return VoiceProfile(self.name, self.layout, list(self.clips), list(self.keys))


__all__ = ["NormStats", "VOICE_MODES", "VoiceProfile", "VoiceRule", "adapt_offsets", "class_offsets",
           "normalise", "speaker_offsets"]
