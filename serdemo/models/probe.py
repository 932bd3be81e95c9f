"""The linear probe: per-layer mean and standard deviation of the encoder's states over the speech
frames, standardised with training-set statistics, then one linear layer (a logistic regression or a
shrinkage LDA, fitted by scikit-learn in :mod:`training.probe` and stored as ordinary weights).

``frame_norm``: each frame's state is layer-normalised (zero mean, unit variance over its 512 values, no
learned gain) before the statistics, as every encoder block normalises its input before reading it.
Whisper's residual stream carries a few dimensions hundreds of times larger than the rest, whose scale
follows the voice and the recording more than the emotion; normalising each frame keeps them from
dominating the statistics (chosen on dev folds; ``training/configs/default.yaml`` says by how much).

It has no attention of its own: every speech frame counts the same, so the weights it reports are
uniform over speech (and exactly that is what the app shows for it).
"""

from __future__ import annotations

import torch
from torch import nn

from serdemo.encoding import MODEL_FRAME_RATE_HZ
from serdemo.features import length_mask
from serdemo.models.base import ModelOutput
from serdemo.models.encoder import checked_frame_norm, speech_or_all, speech_statistics
from serdemo.whisper import D_MODEL, N_LAYERS


CLASSIFIERS = ("logistic", "lda")  # what fits the linear layer: logistic regression, or a shrinkage LDA


def checked_classifier(name) -> str:
    if name not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {', '.join(CLASSIFIERS)}, not {name!r}")
    return name


class LinearProbe(nn.Module):
    architecture = "probe"
    input_kind = "encoder"

    def __init__(self, n_mels: int, heads: dict[str, int], n_layers: int = N_LAYERS, layers: list | None = None,
                 frame_norm: bool = False, classifier: str = "logistic", **_ignored):
        super().__init__()
        checked_classifier(classifier)  # fitted in training.probe; checked here, before any statistics are read
        self.head_sizes = dict(heads)
        self.n_layers = n_layers
        self.frame_norm = checked_frame_norm(frame_norm)
        self.layers = list(layers) if layers else list(range(n_layers + 1))
        if max(self.layers) > n_layers or min(self.layers) < 0:
            raise ValueError(f"layers {self.layers} must lie within 0..{n_layers}")
        dim = len(self.layers) * 2 * D_MODEL
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in heads.items()})

    def features(self, states: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor | None) -> torch.Tensor:
        """The standardised statistics the linear heads read ``(batch, dim)``."""
        real = length_mask(lengths, states.shape[2])
        stats = speech_statistics(states[:, self.layers].float(), speech_or_all(speech, real), self.frame_norm)
        return (stats - self.mean) / self.std

    def forward(self, states, lengths, speech=None) -> ModelOutput:
        real = length_mask(lengths, states.shape[2])
        mask = speech_or_all(speech, real)
        z = self.features(states, lengths, speech)
        logits = {name: head(z) for name, head in self.heads.items()}
        weights = mask.float() / mask.float().sum(dim=1, keepdim=True).clamp_min(1.0)
        return ModelOutput(logits, weights, lengths, MODEL_FRAME_RATE_HZ)
