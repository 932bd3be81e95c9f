"""Vocal-tract-length perturbation (Jaitly & Hinton 2013), as used by Etienne et al. (2018).

The warp maps frequency ``f`` (Hz) in ``[0, S/2]`` to

    f' = alpha * f                                              for f <= f0 = f_hi * min(alpha, 1) / alpha
    f' = S/2 - (S/2 - f_hi * min(alpha, 1)) / (S/2 - f0) * (S/2 - f)   above

so it is continuous, fixes 0 and the Nyquist frequency ``S/2``, and is the identity for alpha = 1.
A spectrum is warped by moving the content at ``f`` to ``f'``: each output bin ``g`` reads the input
at ``f = warp^-1(g)`` by linear interpolation, scaled by the Jacobian ``df/dg`` so that the total
power is preserved up to interpolation. All examples of a batch are warped at once with their own
alpha; there is no Python loop over bins or examples.
"""

from __future__ import annotations

import numpy as np
import torch

F_HI_HZ = 4800.0  # boundary frequency of the warp (Jaitly & Hinton)
ALPHA_RANGE = (0.9, 1.1)  # Etienne et al. 2018


def warp_frequency(freq_hz, alpha, sample_rate: int, f_hi_hz: float = F_HI_HZ):
    """The forward warp f -> f' (numpy or torch, broadcasting)."""
    lib = torch if isinstance(freq_hz, torch.Tensor) else np
    nyq = sample_rate / 2
    scale = lib.minimum(alpha, lib.ones_like(alpha)) if lib is torch else np.minimum(alpha, 1.0)
    f0 = f_hi_hz * scale / alpha
    upper = nyq - (nyq - f_hi_hz * scale) / (nyq - f0) * (nyq - freq_hz)
    return lib.where(freq_hz <= f0, alpha * freq_hz, upper)


def _inverse_positions(n_bins: int, alpha: torch.Tensor, sample_rate: int, f_hi_hz: float):
    """For each output bin, the fractional source bin and the Jacobian ``df/dg``.

    Works in bin units so alpha = 1 maps every bin exactly onto itself.
    ``alpha (batch,)`` -> positions and jacobian ``(batch, n_bins)``.
    """
    nyq = float(n_bins - 1)  # Nyquist in bins
    hi = f_hi_hz / (sample_rate / 2) * nyq
    a = alpha.to(torch.float64)[:, None]
    scale = torch.clamp(a, max=1.0)
    g0 = hi * scale  # knee in the warped axis
    f0 = g0 / a  # knee in the source axis
    g = torch.arange(n_bins, dtype=torch.float64, device=alpha.device)[None, :]
    upper_slope = (nyq - f0) / (nyq - g0)
    below = g <= g0
    pos = torch.where(below, g / a, nyq - (nyq - g) * upper_slope)
    jac = torch.where(below, 1.0 / a, upper_slope)
    return pos.clamp(0.0, nyq), jac


def warp_power(power: torch.Tensor, alpha, sample_rate: int, f_hi_hz: float = F_HI_HZ) -> torch.Tensor:
    """Warp power spectra ``(batch, n_bins, frames)`` with one alpha per example.

    ``alpha`` is a float or a ``(batch,)`` tensor. Returns a tensor of the same shape and dtype.
    """
    batch, n_bins, _ = power.shape
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=power.device).reshape(-1)
    if alpha.numel() == 1:
        alpha = alpha.expand(batch)
    if alpha.numel() != batch:
        raise ValueError(f"need one alpha per example: got {alpha.numel()} for a batch of {batch}")
    if bool((alpha <= 0).any()):
        raise ValueError("alpha must be positive")
    pos, jac = _inverse_positions(n_bins, alpha, sample_rate, f_hi_hz)
    lo = pos.floor().long().clamp(max=n_bins - 2)
    frac = (pos - lo).to(power.dtype)
    jac = jac.to(power.dtype)
    lo = lo[:, :, None].expand(-1, -1, power.shape[2])
    below = torch.gather(power, 1, lo)
    above = torch.gather(power, 1, lo + 1)
    frac = frac[:, :, None]
    warped = below * (1 - frac) + above * frac  # exact at frac 0 and 1
    return warped * jac[:, :, None]


def sample_alpha(batch: int, low: float = ALPHA_RANGE[0], high: float = ALPHA_RANGE[1],
                 generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """``(batch,)`` alphas drawn from U(low, high)."""
    u = torch.rand(batch, generator=generator)
    return (low + (high - low) * u).to(device)
