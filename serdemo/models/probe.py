"""The linear probe: per-layer mean and standard deviation of the encoder's states over the speech
frames, standardised with training-set statistics, then one linear layer (a logistic regression or a
shrinkage LDA, fitted by scikit-learn in :mod:`training.probe` and stored as ordinary weights).

``frame_norm``: each frame's state is layer-normalised (zero mean, unit variance over its values, no
learned gain) before the statistics, as every encoder block normalises its input before reading it.
Whisper's residual stream carries a few dimensions hundreds of times larger than the rest, whose scale
follows the voice and the recording more than the emotion; normalising each frame keeps them from
dominating the statistics (chosen on dev folds; ``training/configs/default.yaml`` says by how much).

``voice`` (``"mean"`` / ``"meanvar"``; ``"none"`` by default and for every older card): voice adaptation
(:mod:`serdemo.voice`). The model was trained on statistics centred on each training speaker's voice; a
clip is read relative to the voice offset estimated from unlabelled clips of its voice (``forward(...,
voice=(offset, scale))``, from :meth:`LinearProbe.voice_offsets`), or as it is when none is given.

It has no attention of its own: every speech frame counts the same, so the weights it reports are
uniform over speech (and exactly that is what the app shows for it).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from serdemo.encoding import MODEL_FRAME_RATE_HZ
from serdemo.features import length_mask
from serdemo.models.base import ModelOutput
from serdemo.models.encoder import (EncoderInfo, checked_frame_norm, checked_layers, encoder_info, speech_or_all,
                                    speech_statistics)
from serdemo.voice import NormStats, VoiceRule, adapt_offsets


CLASSIFIERS = ("logistic", "lda")  # what fits the linear layer: logistic regression, or a shrinkage LDA


def checked_classifier(name) -> str:
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not {name!r}")
    return name


class LinearProbe(nn.Module):
    architecture = "probe"
    input_kind = "encoder"
    closed_form = True  # fitted in one solve on per-clip statistics (training.probe_fit), not by gradient steps
    # recipe settings the fit reads and the model does not (training.probe): the regularisation and its grid,
    # refitting on train + dev, the calibration's data, the statistics' pooling, NAP, the class/corpus balance
    # and how each training voice is estimated
    fit_options = ("C", "shrinkage", "c_grid", "refit", "calibration", "pool", "nap", "balance", "voice_train")

    def __init__(self, n_mels: int, heads: dict[str, int], n_layers: int | None = None, layers: list | None = None,
                 frame_norm: bool = False, classifier: str = "logistic", voice: str = "none",
                 voice_tau: float = 3.0, voice_posterior: bool = False, ood_components: int = 0,
                 clip_head: bool = False, encoder: EncoderInfo | str | None = None):
        super().__init__()
        enc = encoder_info(encoder)
        self.width = enc.width
        n_layers = checked_layers(n_layers, enc)
        checked_classifier(classifier)  # fitted in training.probe; checked here, before any statistics are read
        self.head_sizes = dict(heads)
        self.n_layers = n_layers
        self.frame_norm = checked_frame_norm(frame_norm)
        self.layers = list(layers) if layers else list(range(n_layers + 1))
        if max(self.layers) > n_layers or min(self.layers) < 0:
            raise ValueError(f"layers {self.layers} must lie within 0..{n_layers}")
        dim = len(self.layers) * 2 * enc.width
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})
        self.voice_rule = VoiceRule(voice, voice_tau, voice_posterior)
        if self.adapts:  # what training learnt of voices (serdemo.voice.NormStats), stored with the weights
            self.register_buffer("voice_mean", torch.zeros(dim, dtype=torch.float64))
            self.register_buffer("voice_var", torch.ones(dim, dtype=torch.float64))
            self.register_buffer("class_offsets", torch.zeros(heads["emotion"], dim, dtype=torch.float64))
        if not isinstance(clip_head, bool):
            raise ValueError(f"clip_head must be true or false, not {clip_head!r}")
        if clip_head and not self.adapts:
            raise ValueError("clip_head needs voice adaptation (voice: mean or meanvar)")
        if clip_head:  # clips read on their own: a head trained on the statistics as they are
            self.register_buffer("clip_mean", torch.zeros(dim))
            self.register_buffer("clip_std", torch.ones(dim))
            self.clip_heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})
        if not isinstance(ood_components, int) or isinstance(ood_components, bool) or not 0 <= ood_components <= 256:
            raise ValueError(f"ood_components must be a whole number within 0..256, not {ood_components!r}")
        if ood_components:  # how unlike the training statistics a clip is (ood_score)
            self.register_buffer("ood_centre", torch.zeros(dim))
            self.register_buffer("ood_scale", torch.ones(dim))
            self.register_buffer("ood_basis", torch.zeros(ood_components, dim))
            self.register_buffer("ood_threshold", torch.ones(()))

    @property
    def adapts(self) -> bool:
        """Whether this probe was trained to read clips relative to their voice."""
        return self.voice_rule.mode != "none"

    def raw_statistics(self, states: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor | None) -> torch.Tensor:
        """Per-layer mean and std over speech, before any normalisation ``(batch, dim)``."""
        real = length_mask(lengths, states.shape[2])
        return speech_statistics(states[:, self.layers].float(), speech_or_all(speech, real), self.frame_norm)

    def standardised(self, stats: torch.Tensor, voice=None) -> torch.Tensor:
        """Raw statistics -> what the linear heads read: relative to the voice (``voice = (offset, scale)``,
        or the training voices' mean when None) for an adapting probe, then standardised (float64 inside)."""
        x = stats.double()
        if self.adapts:
            x = x - self.voice_mean
            if voice is not None:
                off, scale = (torch.as_tensor(v, dtype=torch.float64, device=x.device) for v in voice)
                x = (x - off) / scale
        return ((x - self.mean.double()) / self.std.double()).float()

    def features(self, states: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor | None, voice=None) -> torch.Tensor:
        """The standardised statistics the linear heads read ``(batch, dim)``."""
        return self.standardised(self.raw_statistics(states, lengths, speech), voice)

    @property
    def has_clip_head(self) -> bool:
        return hasattr(self, "clip_heads")

    def logits_from_statistics(self, stats: torch.Tensor, voice=None) -> dict[str, torch.Tensor]:
        """Every head's logits from raw statistics: relative to ``voice`` by the voice-normalised head; without
        a voice, by the clip head where the probe has one (trained on statistics as they are)."""
        if voice is None and self.has_clip_head:
            z = ((stats.double() - self.voice_mean - self.clip_mean.double()) / self.clip_std.double()).float()
            return {name: head(z) for name, head in self.clip_heads.items()}
        z = self.standardised(stats, voice)
        return {name: head(z) for name, head in self.heads.items()}

    def norm_stats(self) -> NormStats:
        return NormStats(self.voice_mean.cpu().numpy(), self.voice_var.cpu().numpy(),
                         self.class_offsets.cpu().numpy())

    @torch.no_grad()
    def voice_offsets(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A voice's ``(offset, scale)`` from the raw statistics of its unlabelled clips ``(k, dim)``."""
        if not self.adapts:
            raise ValueError("this model does not adapt to a voice (it was trained without voice normalisation)")
        head = self.heads["emotion"]
        w = head.weight.detach().double().cpu().numpy()
        b = head.bias.detach().double().cpu().numpy()
        mean, std = self.mean.double().cpu().numpy(), self.std.double().cpu().numpy()
        return adapt_offsets(clips, self.norm_stats(), self.voice_rule, lambda xa: ((xa - mean) / std) @ w.T + b)

    @property
    def has_ood(self) -> bool:
        return hasattr(self, "ood_basis")

    def ood_score(self, stats: torch.Tensor) -> torch.Tensor:
        """``(batch,)``: how unlike the training clips each clip's statistics are, as a multiple of the
        threshold set in training (> 1: unusual). The share of its standardised statistics that lies outside
        the training clips' main directions of variation (``ood_components`` principal directions): new
        corpora, languages and recording set-ups put most of their difference there (leave-one-corpus-out
        on dev told an unheard corpus from unheard speakers of known corpora with AUROC 0.97-0.99)."""
        z = (stats.float() - self.ood_centre) / self.ood_scale
        inside = z @ self.ood_basis.T
        resid = (z.square().sum(1) - inside.square().sum(1)) / (z.shape[1] - self.ood_basis.shape[0])
        return resid / self.ood_threshold

    def forward(self, states, lengths, speech=None, voice=None) -> ModelOutput:
        real = length_mask(lengths, states.shape[2])
        mask = speech_or_all(speech, real)
        stats = self.raw_statistics(states, lengths, speech)
        logits = self.logits_from_statistics(stats, voice)
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1.0)
        keep = self.adapts or self.has_ood
        return ModelOutput(logits, weights, lengths, MODEL_FRAME_RATE_HZ, statistics=stats if keep else None)
