"""A third encoder, written only against the contract, to prove the seam: what a contributor adds is this file
and one registry line. Two fixed random projections of the log-mel (width 24, 2 layers, 50 frames/s)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serdemo.encoders.base import EncoderInfo, SpeechEncoder
from serdemo.features import FeatureConfig

INFO = EncoderInfo(name="toy", title="toy projections (tests)", width=24, n_layers=2, frame_rate_hz=50.0,
                   features=FeatureConfig(), license="CC0", provenance={"format": "seeded random"})


class ToyEncoder(SpeechEncoder):
    info = INFO

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.embed = nn.Parameter(torch.randn(INFO.width, 80, generator=g) * 0.1, requires_grad=False)
        self.layers = nn.ParameterList(nn.Parameter(torch.randn(INFO.width, INFO.width, generator=g) * 0.3,
                                                    requires_grad=False) for _ in range(INFO.n_layers))
        self.digest = "0" * 63 + "1"

    @staticmethod
    def out_lengths(frames):
        return torch.div(frames + 1, 2, rounding_mode="floor")

    def forward(self, logmel, frames, n_layers=None):
        n_layers = INFO.n_layers if n_layers is None else n_layers
        x = F.avg_pool1d(logmel, 2, ceil_mode=True).transpose(1, 2) @ self.embed.T  # (batch, time, width)
        lengths = self.out_lengths(frames)
        keep = (torch.arange(x.shape[1])[None] < lengths[:, None]).to(x.dtype)[..., None]
        states = [x * keep]
        for w in self.layers[:n_layers]:
            x = torch.tanh(x @ w) * keep
            states.append(x)
        return states, lengths


def load() -> ToyEncoder:
    return ToyEncoder()
