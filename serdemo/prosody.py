"""Frame-level prosody on the log-mel frame grid: pitch, voicing and energy, batched in torch.

Pitch is the lag of the highest normalised autocorrelation peak in a 40 ms Hann window, corrected
for the window's own autocorrelation (Boersma 1993); voicing is that peak's height. Frames are
centred at ``i * hop_length`` like :class:`serdemo.features.LogMel`, so frame ``i`` here and there
describe the same instant and zero padding never changes a clip's values.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

F0_MIN_HZ = 60.0
F0_MAX_HZ = 500.0
WINDOW_S = 0.04
VOICING_THRESHOLD = 0.5  # normalised autocorrelation peak above which a frame is voiced
CHANNELS = ("f0_semitones", "voicing", "energy_db")


class Prosody(torch.nn.Module):
    """``forward(wave (batch, samples)) -> (batch, 3, frames)``: f0 in semitones re 100 Hz (0 where
    unvoiced), voicing strength in [0, 1], frame energy in dB (re full scale)."""

    def __init__(self, sample_rate: int = 16000, hop_length: int = 160):
        super().__init__()
        self.sample_rate, self.hop_length = sample_rate, hop_length
        self.win = int(round(WINDOW_S * sample_rate))
        self.n_fft = 1 << (2 * self.win - 1).bit_length()
        self.lag_min = int(sample_rate / F0_MAX_HZ)
        self.lag_max = int(sample_rate / F0_MIN_HZ)
        window = torch.hann_window(self.win, periodic=False)
        self.register_buffer("window", window, persistent=False)
        w_ac = torch.fft.irfft(torch.fft.rfft(window, self.n_fft).abs().square(), self.n_fft)[: self.lag_max + 2]
        self.register_buffer("window_ac", (w_ac / w_ac[0]).clamp_min(1e-3), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        wave = wave.float()
        half = self.win // 2
        frames = F.pad(wave, (half, half)).unfold(1, self.win, self.hop_length)  # (b, t, win)
        frames = frames - frames.mean(-1, keepdim=True)
        energy = frames.square().mean(-1)
        x = frames * self.window
        ac = torch.fft.irfft(torch.fft.rfft(x, self.n_fft).abs().square(), self.n_fft)[..., : self.lag_max + 2]
        nacf = ac / ac[..., :1].clamp_min(1e-12) / self.window_ac
        search = nacf[..., self.lag_min: self.lag_max + 1]
        best = search.amax(-1, keepdim=True)
        # the shortest lag with a local peak close to the best one: multiples of the period
        # correlate almost as well, and taking them would halve the pitch
        local = (search >= F.pad(search, (1, 0), value=-1.0)[..., :-1]) & \
                (search >= F.pad(search, (0, 1), value=-1.0)[..., 1:])
        good = local & (search >= 0.9 * best)
        idx = good.float().argmax(-1)
        peak = search.gather(-1, idx[..., None])[..., 0]
        lag = (idx + self.lag_min).float()
        # parabolic refinement of the peak lag
        i = (idx + self.lag_min).clamp(1, nacf.shape[-1] - 2)
        left = nacf.gather(-1, (i - 1)[..., None])[..., 0]
        mid = nacf.gather(-1, i[..., None])[..., 0]
        right = nacf.gather(-1, (i + 1)[..., None])[..., 0]
        denom = left - 2 * mid + right
        shift = torch.where(denom.abs() > 1e-6, 0.5 * (left - right) / denom, torch.zeros_like(denom))
        lag = lag + shift.clamp(-1, 1)
        energy_db = 10 * torch.log10(energy + 1e-10)
        loud = energy_db > energy_db.amax(-1, keepdim=True) - 40.0
        voicing = peak.clamp(0, 1) * loud
        f0 = self.sample_rate / lag.clamp_min(1.0)
        semitones = 12 * torch.log2(f0 / 100.0)
        semitones = torch.where(voicing >= VOICING_THRESHOLD, semitones, torch.zeros_like(semitones))
        return torch.stack([semitones, voicing, energy_db.clamp_min(-100.0)], dim=1)
