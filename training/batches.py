"""Batches of cached encoder states: padding them into one tensor, SpecAugment's time masks on them, and
speech masks brought to their width."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def collate_states(items, n_states: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[(states float16 (7, T, 512), speech (T,))]`` -> ``(batch, n_states, T_max, 512)`` float32,
    lengths ``(batch,)``, speech ``(batch, T_max)``."""
    lengths = torch.tensor([s.shape[1] for s, _ in items], dtype=torch.long)
    width = int(lengths.max())
    x = torch.zeros(len(items), n_states, width, items[0][0].shape[2])
    speech = torch.zeros(len(items), width, dtype=torch.bool)
    for i, (s, m) in enumerate(items):
        x[i, :, : s.shape[1]] = torch.from_numpy(s[:n_states].astype(np.float32))
        speech[i, : len(m)] = torch.from_numpy(np.asarray(m, dtype=bool))
    return x.to(device), lengths.to(device), speech.to(device)


def time_masks(x: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator, max_fraction: float = 0.1,
               n_masks: int = 2) -> torch.Tensor:
    """SpecAugment's time masks on encoder states ``(batch, layers, time, dim)``: ``n_masks`` spans of up
    to ``max_fraction`` of each clip's real frames set to zero."""
    x = x.clone()
    for i, n in enumerate(lengths.tolist()):
        width = max(1, int(n * max_fraction))
        for _ in range(n_masks):
            w = int(torch.randint(0, width + 1, (1,), generator=gen))
            t0 = int(torch.randint(0, max(1, n - w + 1), (1,), generator=gen))
            x[i, :, t0:t0 + w] = 0
    return x


def pad_or_cut(mask: torch.Tensor, width: int) -> torch.Tensor:
    if mask.shape[1] >= width:
        return mask[:, :width]
    return F.pad(mask, (0, width - mask.shape[1]))
