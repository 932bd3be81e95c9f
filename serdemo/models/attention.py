"""Masked attention pooling (Mirsamadi et al. 2017): alpha_t = softmax_t(u . y_t), z = sum_t alpha_t y_t."""

from __future__ import annotations

import torch
from torch import nn


class AttentionPooling(nn.Module):
    """Pools ``(batch, time, dim)`` to ``(batch, dim)`` and returns the weights ``(batch, time)``.

    Weights are exactly 0 on padded frames and sum to 1 over each utterance's real frames.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.u = nn.Parameter(torch.randn(dim) / dim ** 0.5)

    def forward(self, y: torch.Tensor, mask: torch.Tensor):
        scores = torch.matmul(y, self.u.to(y.dtype))  # (batch, time)
        scores = scores.float().masked_fill(~mask, float("-inf"))
        weights = torch.softmax(scores, dim=1)
        weights = weights.masked_fill(~mask, 0.0)
        pooled = torch.bmm(weights.to(y.dtype).unsqueeze(1), y).squeeze(1)
        return pooled, weights
