"""Training-time augmentation: VTLP alphas, SpecAugment, mixup and nlpaug waveform augmenters.

All the randomness of augmentation comes from one :class:`Augmenter` per process (per DDP rank),
seeded with the run's seed plus the rank, so ranks draw different alphas and masks while the data
order stays shared. Its generator states travel in the resume state (:mod:`training.state`).

Shapes: waves ``(batch, samples)``, power ``(batch, n_bins, frames)``, log-mel
``(batch, n_mels, frames)``, frame lengths ``(batch,)``.
"""

from __future__ import annotations

import numpy as np
import torch

from serdemo.features import length_mask
from serdemo.vtlp import sample_alpha
from training.config import WAVE_AUGMENTERS

SPEC_MAX_BANDS = 8  # widest frequency mask, in mel bands
SPEC_MAX_TIME_FRACTION = 0.1  # widest time mask, as a fraction of each clip's real frames
RANK_SEED_STRIDE = 1_000_003  # seed offset between DDP ranks (a prime, so rank seeds never collide with epochs)


def real_frame_mean(feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """Mean of each example over all bands and its real frames only: ``(batch, 1, 1)``."""
    frames = frames.to(feats.device)
    m = length_mask(frames, feats.shape[2])[:, None, :].to(feats.dtype)
    count = (frames.to(feats.dtype) * feats.shape[1]).clamp_min(1.0)
    return (feats * m).sum(dim=(1, 2)).div(count)[:, None, None]


def spec_augment(feats: torch.Tensor, frames: torch.Tensor, gen: torch.Generator | None = None,
                 max_bands: int = SPEC_MAX_BANDS, max_time_fraction: float = SPEC_MAX_TIME_FRACTION) -> torch.Tensor:
    """One frequency mask (<= ``max_bands`` bands) and one time mask (<= ``max_time_fraction`` of each
    clip, inside its real frames) per example, batched. Masked cells take the example's mean over its
    real frames, so padding never leaks into the fill value."""
    b, n_mels, t = feats.shape
    dev = feats.device
    frames = frames.to(dev)
    f_w = (torch.rand(b, generator=gen) * (max_bands + 1)).long().to(dev)
    f_0 = (torch.rand(b, generator=gen).to(dev) * (n_mels - f_w)).long()
    t_w = (torch.rand(b, generator=gen).to(dev) * max_time_fraction * frames.float()).long()
    t_0 = (torch.rand(b, generator=gen).to(dev) * (frames - t_w).clamp_min(1).float()).long()
    fi = torch.arange(n_mels, device=dev)[None, :]
    ti = torch.arange(t, device=dev)[None, :]
    fmask = (fi >= f_0[:, None]) & (fi < (f_0 + f_w)[:, None])
    tmask = (ti >= t_0[:, None]) & (ti < (t_0 + t_w)[:, None])
    real = length_mask(frames, t)
    masked = (fmask[:, :, None] | tmask[:, None, :]) & real[:, None, :]  # padding stays as it was
    return torch.where(masked, real_frame_mean(feats, frames), feats)


def mixup(feats: torch.Tensor, frames: torch.Tensor, perm: torch.Tensor, lam: float):
    """Blend each example with example ``perm[i]``: ``lam * x_i + (1 - lam) * x_perm[i]``.

    The blend covers the longer of the two clips (the shorter one contributes its padding, i.e. its
    silence floor). -> ``(feats, frames)``; the loss blends the two targets with the same ``lam``.
    """
    perm = perm.to(feats.device)
    mixed = lam * feats + (1.0 - lam) * feats[perm]
    return mixed, torch.maximum(frames, frames[perm.to(frames.device)])


class WaveAugment:
    """Optional waveform augmenters from nlpaug, each applied with probability ``p``."""

    NAMES = WAVE_AUGMENTERS

    def __init__(self, names: list[str], sample_rate: int, p: float = 0.5, seed: int = 0):
        unknown = set(names) - set(self.NAMES)
        if unknown:
            raise ValueError(f"unknown augmenters {sorted(unknown)}; choose from {self.NAMES}")
        import nlpaug.augmenter.audio as naa

        makers = {
            "noise": lambda: naa.NoiseAug(zone=(0.0, 1.0), coverage=1.0),
            "speed": lambda: naa.SpeedAug(zone=(0.0, 1.0), coverage=1.0, factor=(0.9, 1.1)),
            "loudness": lambda: naa.LoudnessAug(zone=(0.0, 1.0), coverage=1.0, factor=(0.5, 2.0)),
            "shift": lambda: naa.ShiftAug(sampling_rate=sample_rate, duration=0.2),
        }
        self.augmenters = [makers[n]() for n in names]
        self.p = p
        self.rng = np.random.default_rng(seed)  # whether each augmenter fires; nlpaug itself draws from np.random

    def __call__(self, wave: np.ndarray) -> np.ndarray:
        for aug in self.augmenters:
            if self.rng.random() < self.p:
                out = aug.augment(wave)
                out = out[0] if isinstance(out, list) else out
                wave = np.asarray(out, dtype=np.float32)
        return wave


class Augmenter:
    """Every augmentation of one run on one rank, with its own generators (see the module doc).

    ``cfg`` is a :class:`training.config.FitConfig`; ``seed`` already includes the rank.
    """

    def __init__(self, cfg, sample_rate: int, seed: int):
        self.cfg, self.sample_rate = cfg, sample_rate
        self.gen = torch.Generator().manual_seed(seed)  # alphas, masks, mixup pairs
        self.rng = np.random.default_rng(seed)  # mixup weights
        self.wave_augment = WaveAugment(cfg.augment, sample_rate, cfg.augment_p, seed) if cfg.augment else None

    def waves(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        return [self.wave_augment(w) for w in waves] if self.wave_augment is not None else waves

    def alphas(self, batch: int) -> torch.Tensor | None:
        """``(batch,)`` VTLP alphas ~ U(vtlp_low, vtlp_high), or None when VTLP is off."""
        if not self.cfg.vtlp:
            return None
        return sample_alpha(batch, self.cfg.vtlp_low, self.cfg.vtlp_high, self.gen)

    def spec(self, feats: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
        return spec_augment(feats, frames, self.gen) if self.cfg.specaug else feats

    def mix(self, feats: torch.Tensor, frames: torch.Tensor):
        """-> ``(feats, frames, perm, lam)``; ``perm`` is None when mixup is off."""
        if not self.cfg.mixup or feats.shape[0] < 2:
            return feats, frames, None, 1.0
        lam = float(self.rng.beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha))
        perm = torch.randperm(feats.shape[0], generator=self.gen)
        feats, frames = mixup(feats, frames, perm, lam)
        return feats, frames, perm, lam

    # ------------------------------------------------------------------ resume
    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """-> (tensors, JSON-able) generator states."""
        js = {"rng": self.rng.bit_generator.state}
        if self.wave_augment is not None:
            js["wave_rng"] = self.wave_augment.rng.bit_generator.state
        return {"augment_gen": self.gen.get_state()}, js

    def load_state(self, tensors: dict[str, torch.Tensor], js: dict) -> None:
        self.gen.set_state(tensors["augment_gen"])
        self.rng.bit_generator.state = js["rng"]
        if self.wave_augment is not None and "wave_rng" in js:
            self.wave_augment.rng.bit_generator.state = js["wave_rng"]
