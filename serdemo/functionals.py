"""Utterance-level functionals of the front end, over speech frames only, batched in torch.

The classic reference pipeline (statistics of MFCCs, their deltas, energy and pitch contours,
then a linear classifier) and the statistics branch of the fusion models both use this one
function, so the reference row and the models read the same numbers.

    feats = functionals(logmel (b, n_mels, t), prosody (b, 3, t), speech (b, t))   # (b, DIM)
"""

from __future__ import annotations

import math

import torch

N_MFCC = 20
QUANTILES = (0.1, 0.5, 0.9)


def dct_matrix(n_mels: int, n_mfcc: int = N_MFCC) -> torch.Tensor:
    """Orthonormal DCT-II ``(n_mfcc, n_mels)``: MFCCs from log-mel."""
    n = torch.arange(n_mels, dtype=torch.float64)
    k = torch.arange(n_mfcc, dtype=torch.float64)[:, None]
    m = torch.cos(math.pi / n_mels * (n + 0.5) * k) * math.sqrt(2.0 / n_mels)
    m[0] /= math.sqrt(2.0)
    return m.float()


def delta(x: torch.Tensor) -> torch.Tensor:
    """First difference along time (last axis), same length (central, edges one-sided)."""
    padded = torch.cat([x[..., :1], x, x[..., -1:]], dim=-1)
    return (padded[..., 2:] - padded[..., :-2]) / 2


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor):
    """``x (b, c, t)``, ``mask (b, t)`` -> mean and std ``(b, c)`` over masked frames."""
    m = mask[:, None, :].to(x.dtype)
    n = m.sum(-1).clamp_min(1.0)
    mean = (x * m).sum(-1) / n
    var = ((x - mean[..., None]).square() * m).sum(-1) / n
    return mean, var.clamp_min(0).sqrt()


def masked_quantiles(x: torch.Tensor, mask: torch.Tensor, qs=QUANTILES) -> torch.Tensor:
    """``x (b, c, t)`` -> ``(b, c, len(qs))`` quantiles over masked frames (nearest rank); 0 if none."""
    big = torch.finfo(x.dtype).max
    filled = torch.where(mask[:, None, :], x, torch.full_like(x, big))
    ordered, _ = filled.sort(-1)
    count = mask.sum(-1)  # (b,)
    out = []
    for q in qs:
        idx = (q * (count - 1).clamp_min(0).to(x.dtype)).round().long()
        v = ordered.gather(-1, idx[:, None, None].expand(-1, x.shape[1], 1))[..., 0]
        out.append(torch.where(count[:, None] > 0, v, torch.zeros_like(v)))
    return torch.stack(out, -1)


def functionals(logmel: torch.Tensor, prosody: torch.Tensor, speech: torch.Tensor,
                dct: torch.Tensor | None = None) -> torch.Tensor:
    """Statistics over each clip's speech frames -> ``(batch, dim(n_mels))``.

    MFCC 0..19 and their deltas (mean, std); energy and its delta (mean, std, 10/50/90 %);
    pitch in semitones over voiced speech frames (mean, std, 10/50/90 %, 10-90 % range) and its
    delta's std; voiced fraction and mean voicing strength; voiced onsets per second.
    """
    if dct is None:
        dct = dct_matrix(logmel.shape[1]).to(logmel.device)
    speech = speech.bool()
    mfcc = torch.matmul(dct, logmel.float())
    d_mfcc = delta(mfcc)
    f0, voicing, energy = prosody[:, 0:1].float(), prosody[:, 1:2].float(), prosody[:, 2:3].float()
    voiced = speech & (prosody[:, 1] >= 0.5)
    parts = []
    for x in (mfcc, d_mfcc):
        parts += list(masked_mean_std(x, speech))
    e = torch.cat([energy, delta(energy)], 1)
    parts += list(masked_mean_std(e, speech))
    parts.append(masked_quantiles(energy, speech).flatten(1))
    f0_mean, f0_std = masked_mean_std(f0, voiced)
    f0_q = masked_quantiles(f0, voiced)[:, 0]
    both = voiced & torch.cat([voiced[:, :1], voiced[:, :-1]], 1)  # delta only within voiced runs
    _, df0_std = masked_mean_std(delta(f0), both)
    parts += [f0_mean, f0_std, f0_q, (f0_q[:, 2] - f0_q[:, 0])[:, None], df0_std]
    n_speech = speech.sum(-1, keepdim=True).clamp_min(1).float()
    voiced_frac = voiced.sum(-1, keepdim=True).float() / n_speech
    vmean, _ = masked_mean_std(voicing, speech)
    onsets = (voiced[:, 1:] & ~voiced[:, :-1]).sum(-1, keepdim=True).float()
    rate = onsets / (n_speech / 100.0)
    parts += [voiced_frac, vmean, rate]
    return torch.cat([p.reshape(p.shape[0], -1) for p in parts], dim=1)


def dim() -> int:
    """Length of the functional vector."""
    return 4 * N_MFCC + 4 + len(QUANTILES) + 2 + len(QUANTILES) + 1 + 1 + 3
