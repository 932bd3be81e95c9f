"""Etienne et al. (2018): convolution blocks over the log-mel spectrogram, then a normalised BLSTM.

The paper pools the BLSTM output at the last step; this version ends with attention pooling so its
weights can be shown. Padding is re-zeroed after every block, so a clip's output does not depend
on its batch companions.
"""

from __future__ import annotations

import torch
from torch import nn

from serdemo.features import length_mask
from serdemo.models.base import MaskedBLSTM, SERModel, downsampled_lengths


class _ConvBlock(nn.Module):
    def __init__(self, cin: int, cout: int, pool: tuple[int, int]):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        # per-channel affine + instance statistics are batch-independent; BatchNorm is not at train time
        self.norm = nn.GroupNorm(1, cout)
        self.pool = nn.MaxPool2d(pool, ceil_mode=True) if pool != (1, 1) else nn.Identity()
        self.time_factor = pool[1]

    def forward(self, x, lengths):
        mask = length_mask(lengths, x.shape[3])[:, None, None, :].to(x.dtype)
        x = torch.relu(self._masked_norm(self.conv(x * mask), mask))
        x = self.pool(x * mask)
        return x, downsampled_lengths(lengths, self.time_factor)

    def _masked_norm(self, x, mask):
        count = (mask.sum(dim=(2, 3), keepdim=True) * x.shape[2] * x.shape[1]).clamp_min(1.0)
        mean = (x * mask).sum(dim=(1, 2, 3), keepdim=True) / count
        var = ((x - mean).square() * mask).sum(dim=(1, 2, 3), keepdim=True) / count
        x = (x - mean) / (var + 1e-5).sqrt()
        return x * self.norm.weight[None, :, None, None] + self.norm.bias[None, :, None, None]


class CNNLSTM(SERModel):
    architecture = "cnnlstm"

    def __init__(self, n_mels: int, heads: dict[str, int], norm: str = "utterance",
                 input_frame_rate_hz: float = 100.0, dropout: float = 0.3, stats: bool = False,
                 channels: tuple[int, ...] = (8, 16, 24), hidden: int = 128):
        super().__init__(n_mels, heads, norm, input_frame_rate_hz, dropout, stats)
        pools = [(2, 2), (2, 2), (2, 1)] + [(2, 1)] * max(0, len(channels) - 3)
        blocks, cin, freq = [], 1, n_mels
        for cout, pool in zip(channels, pools):
            blocks.append(_ConvBlock(cin, cout, pool))
            cin, freq = cout, -(-freq // pool[0])
        self.blocks = nn.ModuleList(blocks)
        self.time_stride = 1
        for b in blocks:
            self.time_stride *= b.time_factor
        self.proj = nn.Sequential(nn.Linear(cin * freq, hidden * 2), nn.ReLU(), nn.Dropout(dropout))
        self.rnn = MaskedBLSTM(hidden * 2, hidden)
        self.rnn_norm = nn.LayerNorm(self.rnn.out_dim)
        self.out_dim = self.rnn.out_dim
        self.build_heads(self.out_dim)

    def encode(self, x, mask, lengths):
        h = x.unsqueeze(1)  # (batch, 1, n_mels, frames)
        for block in self.blocks:
            h, lengths = block(h, lengths)
        b, c, f, t = h.shape
        h = h.permute(0, 3, 1, 2).reshape(b, t, c * f)
        y = self.rnn_norm(self.rnn(self.proj(h), lengths))
        return y, lengths
