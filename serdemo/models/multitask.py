"""Kim, Englebienne, Truong & Evers (Interspeech 2017): multi-task learning across aggregated corpora.

The local-attention trunk on the encoder (:class:`LocalAttention`) feeds an emotion head and
auxiliary heads, e.g. ``gender`` and ``naturalness`` (acted vs natural), each a small MLP of its own.
During training a head's loss counts only the examples that carry its label.
"""

from __future__ import annotations

from serdemo.models.localatt import LocalAttention


class MultiTask(LocalAttention):
    architecture = "multitask"

    def __init__(self, n_mels: int, heads: dict[str, int], n_layers: int | None = None, dropout: float = 0.2,
                 dense: int = 256, hidden: int = 128, rnn: bool = True, head_hidden: int = 64, stats: bool = False,
                 tune_layers: int = 0, frame_norm: bool = False, encoder=None):
        super().__init__(n_mels, heads, n_layers, dropout, dense, hidden, rnn, head_hidden, stats, tune_layers,
                         frame_norm, encoder)
