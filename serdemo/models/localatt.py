"""Mirsamadi, Barsoum & Zhang (ICASSP 2017): frame-wise dense layers, BLSTM, local attention.

The paper feeds 32 low-level descriptors per 10 ms frame; here the input is the log-mel
spectrogram, stacked ``stack`` frames at a time so the BLSTM runs at 80 ms steps (8x fewer
recurrent steps; that is what keeps a 4 s clip within a few milliseconds on one CPU thread).
"""

from __future__ import annotations

from torch import nn

from serdemo.models.base import MaskedBLSTM, SERModel, downsampled_lengths, stack_frames


class LocalAttention(SERModel):
    architecture = "localatt"

    def __init__(self, n_mels: int, heads: dict[str, int], norm: str = "utterance",
                 input_frame_rate_hz: float = 100.0, dropout: float = 0.3, stats: bool = False, ge2e: bool = False,
                 stack: int = 8, dense: int = 256, hidden: int = 128, rnn: bool = True):
        super().__init__(n_mels, heads, norm, input_frame_rate_hz, dropout, stats, ge2e)
        self.time_stride = stack
        self.frontend = nn.Sequential(
            nn.Linear(n_mels * stack, dense), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(dense, dense), nn.ReLU(), nn.Dropout(dropout),
        )
        # without its own BLSTM the model relies on a recurrent front end (the GE2E encoder's LSTM)
        self.rnn = MaskedBLSTM(dense, hidden) if rnn else None
        self.out_dim = self.rnn.out_dim if rnn else dense
        self.build_heads(self.out_dim)

    def encode(self, x, mask, lengths):
        frames = stack_frames(x.transpose(1, 2), self.time_stride)  # (batch, time', n_mels*stack)
        out_lengths = downsampled_lengths(lengths, self.time_stride)
        y = self.frontend(frames)
        if self.rnn is not None:
            y = self.rnn(y, out_lengths)
        return y, out_lengths
