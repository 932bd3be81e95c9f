"""A pretrained speaker encoder as a frozen frame-level front end (GE2E, Wan et al. 2018).

The layout is that of ``resemblyzer``'s voice encoder (Apache-2.0): a 40-band mel power
spectrogram (25 ms Hann window, 10 ms hop, 16 kHz), a three-layer LSTM of 256 units and a linear
layer with ReLU. Trained on thousands of speakers, its states describe voice quality, pitch
register and speaking style in a way no model trained on 31 speakers can; emotion models use its
per-frame outputs as features. The weights are converted once from the resemblyzer wheel
(``python -m training.pretrained``) and then travel inside each checkpoint's safetensors file.

Frames are centred at ``i * 160`` samples, like :class:`serdemo.features.LogMel`, so frame ``i``
of both describes the same instant and speech masks apply to both unchanged.
"""

from __future__ import annotations

import copy
import os
from functools import lru_cache

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import nn

N_FFT = 400
HOP = 160
N_MELS = 40
HIDDEN = 256
TARGET_DBFS = -30.0  # loudness the encoder was trained at (quieter clips are raised to it)
# bf16 rounding accumulates in the LSTM state: frame embeddings stay within cosine 0.999 of float32 over
# 4 s but drift to ~0.99 at 20 s and ~0.92 at 60 s, so longer spans run in float32
BF16_MAX_FRAMES = 2000  # 20 s


@lru_cache(maxsize=1)
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX); elsewhere bf16 is emulated
    and slower than float32. ``SERDEMO_GE2E_BF16=0|1`` overrides the detection."""
    forced = os.environ.get("SERDEMO_GE2E_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


class GE2EEncoder(nn.Module):
    """``forward(wave (batch, samples), lengths (batch,)) -> (batch, frames, 256)`` frame embeddings.

    Each frame's embedding is ``relu(linear(h_t))`` of the last LSTM layer, L2-normalised, as the
    utterance embedding is formed from the last state. Frozen: no gradients, always eval mode.
    """

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(N_MELS, HIDDEN, 3, batch_first=True)
        self.linear = nn.Linear(HIDDEN, HIDDEN)
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True), persistent=False)
        fb = AF.melscale_fbanks(N_FFT // 2 + 1, 0.0, 8000.0, N_MELS, 16000, norm="slaney", mel_scale="slaney")
        self.register_buffer("fbank", fb, persistent=False)
        for p in self.parameters():
            p.requires_grad_(False)
        self._fast_lstm: list[nn.LSTM] = []  # a bfloat16 copy for inference (not a submodule: not saved)

    def use_bfloat16(self, enabled: bool = True) -> "GE2EEncoder":
        """Run the LSTM in bfloat16 for spans up to ``BF16_MAX_FRAMES`` (inference on CPUs with native
        bf16: ~1.9x faster on one thread; frame embeddings within cosine 0.999 of float32 over a few
        seconds, longer spans run in float32); the mel front end stays float32. Call after moving the
        module to its device; training never uses it."""
        self._fast_lstm = [copy.deepcopy(self.lstm).to(torch.bfloat16)] if enabled else []
        return self

    def train(self, mode: bool = True):  # frozen: dropout-free eval behaviour always
        return super().train(False)

    def mel(self, wave: torch.Tensor, lengths: torch.Tensor, alpha=None) -> torch.Tensor:
        """``(batch, samples)`` -> mel power ``(batch, frames, 40)``, loudness-normalised per clip."""
        wave = wave.float()
        real = (torch.arange(wave.shape[1], device=wave.device)[None] < lengths[:, None]).float()
        rms = ((wave.square() * real).sum(1) / lengths.clamp_min(1)).sqrt().clamp_min(1e-6)
        gain_db = (TARGET_DBFS - 20 * torch.log10(rms)).clamp_min(0.0)  # raise quiet clips only
        wave = wave * (10 ** (gain_db / 20))[:, None]
        x = F.pad(wave, (N_FFT // 2, N_FFT // 2))
        spec = torch.stft(x, N_FFT, HOP, N_FFT, self.window, center=False, return_complex=True)
        power = spec.real.square() + spec.imag.square()
        if alpha is not None:
            from serdemo.vtlp import F_HI_HZ, warp_power

            power = warp_power(power, alpha, 16000, F_HI_HZ)
        return torch.matmul(self.fbank.transpose(0, 1), power).transpose(1, 2)

    @torch.no_grad()
    def forward(self, wave: torch.Tensor, lengths: torch.Tensor, alpha=None) -> torch.Tensor:
        """``alpha``: VTLP factor(s) applied to the encoder's own power spectrum (training only)."""
        with torch.autocast(wave.device.type, enabled=False):
            mel = self.mel(wave, lengths, alpha)
            if self._fast_lstm and mel.device.type == "cpu" and mel.shape[1] <= BF16_MAX_FRAMES:
                h = self._fast_lstm[0](mel.to(torch.bfloat16))[0].float()
            else:
                h, _ = self.lstm(mel)
            e = torch.relu(self.linear(h))
            return e / e.norm(dim=-1, keepdim=True).clamp_min(1e-6)
