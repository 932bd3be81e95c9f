"""Kim, Englebienne, Truong & Evers (Interspeech 2017): multi-task learning across corpora.

A shared encoder (either seed architecture) and shared attention pooling feed an emotion head and
auxiliary heads, e.g. ``gender`` and ``naturalness`` (acted vs natural), each a small task-specific
layer. During training a head's loss counts only the examples that carry its label.
"""

from __future__ import annotations

from torch import nn

from serdemo.models.base import SERModel
from serdemo.models.cnnlstm import CNNLSTM
from serdemo.models.localatt import LocalAttention

ENCODERS = {"cnnlstm": CNNLSTM, "localatt": LocalAttention}


class MultiTask(SERModel):
    architecture = "multitask"

    def __init__(self, n_mels: int, heads: dict[str, int], norm: str = "utterance",
                 input_frame_rate_hz: float = 100.0, dropout: float = 0.3, stats: bool = False, ge2e: bool = False,
                 encoder: str = "localatt", head_hidden: int = 64, **encoder_hparams):
        super().__init__(n_mels, heads, norm, input_frame_rate_hz, dropout, stats, ge2e)
        if encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {sorted(ENCODERS)}, got {encoder!r}")
        inner = ENCODERS[encoder](n_mels, {"emotion": 1}, norm="none",
                                  input_frame_rate_hz=input_frame_rate_hz, dropout=dropout,
                                  **encoder_hparams)
        del inner.pool, inner.heads, inner.norm  # only its encoder is shared
        self.encoder = inner
        self.time_stride = inner.time_stride
        dim = inner.out_dim
        self.build_heads(dim)
        self.heads = nn.ModuleDict({
            name: nn.Sequential(nn.Linear(dim, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(head_hidden, n))
            for name, n in self.head_sizes.items()
        })

    def encode(self, x, mask, lengths):
        return self.encoder.encode(x, mask, lengths)
