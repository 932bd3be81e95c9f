"""Mirsamadi, Barsoum & Zhang (ICASSP 2017): frame-wise dense layers, BLSTM, local attention pooling.

The paper feeds 32 low-level descriptors per 10 ms frame; here the frames are the pretrained Whisper
encoder's states (a learned mix of its layers, 40 ms per frame), which carry what a model trained on
31 speakers cannot learn: voices, languages and recording conditions it never heard.
"""

from __future__ import annotations

from serdemo.models.base import MaskedBLSTM
from serdemo.models.encoder import Dense, EncoderModel, attention_heads


class LocalAttention(EncoderModel):
    architecture = "localatt"

    def __init__(self, n_mels: int, heads: dict[str, int], n_layers: int | None = None, dropout: float = 0.2,
                 dense: int = 256, hidden: int = 128, rnn: bool = True, head_hidden: int = 0, stats: bool = False,
                 tune_layers: int = 0, frame_norm: bool = False, encoder=None):
        super().__init__(n_mels, heads, n_layers, dropout, stats, tune_layers, frame_norm, encoder)
        self.frontend = Dense([self.width, dense, dense], dropout)
        self.rnn = MaskedBLSTM(dense, hidden) if rnn else None
        self.out_dim = self.rnn.out_dim if rnn else dense
        attention_heads(self, self.out_dim, head_hidden, dropout)

    def trunk(self, x, lengths):
        y = self.frontend(x)
        return self.rnn(y, lengths) if self.rnn is not None else y
