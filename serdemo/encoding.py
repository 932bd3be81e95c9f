"""Waveforms -> what every model reads: the log-mel and the pretrained encoder's hidden states.

This is the one front end of the app, the timeline, training, evaluation and the feature cache:

    waves (batch, samples) 16 kHz -> LogMel [VTLP warp] -> log-mel (batch, 80, frames) at 100 frames/s
        -> encoder (first ``n_layers`` blocks)   -> states (batch, n_layers + 1, time, width) at its rate (50/s)
        -> mean of each group of frames (masked) -> states (batch, n_layers + 1, time', width) at 25/s

The encoder is any :class:`serdemo.encoders.SpeechEncoder` (its width, depth and frame rate are its own).

Models read the states at :data:`MODEL_FRAME_RATE_HZ` (40 ms per frame: fine enough to see where in a
sentence the attention sits, and a quarter of the recurrent steps of the log-mel grid). Speech masks
come on the log-mel grid and are brought onto the model grid by :func:`speech_on_grid`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serdemo.features import FeatureConfig, LogMel
from serdemo.encoders import SpeechEncoder

POOL = 2  # encoder frames (50/s) averaged into one model frame
FRAMES_PER_MODEL_FRAME = 4  # log-mel frames (100/s) under one model frame (25/s)
MODEL_FRAME_RATE_HZ = 25.0


@dataclass
class Encoded:
    """``logmel (batch, 80, frames)`` with ``frames (batch,)``; ``states (batch, layers + 1, time, width)``
    on the model grid with ``lengths (batch,)`` (None when no encoder ran)."""

    logmel: torch.Tensor
    frames: torch.Tensor
    states: torch.Tensor | None = None
    lengths: torch.Tensor | None = None


def pool_time(x: torch.Tensor, lengths: torch.Tensor, factor: int = POOL):
    """``x (batch, ..., time, dim)`` -> mean of each ``factor`` consecutive real frames; a clip's last
    group may be partial (its mean is over its real frames only), so padding never leaks in."""
    t = x.shape[-2]
    pad = (-t) % factor
    real = (torch.arange(t + pad, device=x.device)[None] < lengths[:, None]).to(x.dtype)  # (batch, T)
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    shape = real.shape[:1] + (1,) * (x.dim() - 3) + (real.shape[1],)
    real = real.reshape(shape)[..., None]
    sums = (x * real).unflatten(-2, (-1, factor)).sum(-2)
    counts = real.unflatten(-2, (-1, factor)).sum(-2).clamp_min(1.0)
    new_lengths = torch.div(lengths + factor - 1, factor, rounding_mode="floor").clamp_min(1)
    return sums / counts, new_lengths


def model_lengths(encoder: SpeechEncoder, frames: torch.Tensor) -> torch.Tensor:
    """Model frames for clips of ``frames`` front-end frames (the encoder's own lengths, then pooled)."""
    pool = pool_factor(encoder)
    enc = encoder.out_lengths(frames)
    return torch.div(enc + pool - 1, pool, rounding_mode="floor").clamp_min(1)


def pool_factor(encoder: SpeechEncoder) -> int:
    """Encoder frames averaged into one model frame (the encoder's rate over :data:`MODEL_FRAME_RATE_HZ`)."""
    factor = encoder.info.frame_rate_hz / MODEL_FRAME_RATE_HZ
    if factor < 1 or abs(factor - round(factor)) > 1e-6:
        raise ValueError(f"encoder {encoder.info.name} runs at {encoder.info.frame_rate_hz} frames/s, not a whole "
                         f"multiple of the model grid's {MODEL_FRAME_RATE_HZ}")
    return int(round(factor))


def speech_on_grid(speech: torch.Tensor, width: int, factor: int = FRAMES_PER_MODEL_FRAME) -> torch.Tensor:
    """``(batch, frames)`` bool on the log-mel grid -> ``(batch, width)``: a model frame is speech when
    any log-mel frame under it is."""
    need = width * factor
    s = speech[:, :need]
    if s.shape[1] < need:
        s = torch.nn.functional.pad(s, (0, need - s.shape[1]))
    return s.reshape(s.shape[0], width, factor).any(dim=2)


class FrontEnd(torch.nn.Module):
    """Log-mel (always) and, when the model stands on it, the frozen encoder's states.

    The encoder is shared (one copy per process and name, :func:`serdemo.encoders.load`) and is not
    a submodule of any model: a checkpoint holds only its head and names the encoder (name and digest).
    """

    def __init__(self, features: FeatureConfig, encoder: SpeechEncoder | None = None, n_layers: int | None = None,
                 bf16: bool = False):
        super().__init__()
        self.features = features
        self.logmel = LogMel(features)
        self.encoder = encoder
        self.n_layers = (encoder.info.n_layers if encoder is not None else 0) if n_layers is None else n_layers
        self.bf16 = bf16

    def forward(self, waves: torch.Tensor, lengths: torch.Tensor, alpha=None, power: torch.Tensor | None = None) -> Encoded:
        """``power``: the waves' power spectrum when the caller already has it (then no STFT runs)."""
        if power is None:
            logmel, frames = self.logmel(waves, lengths, alpha=alpha)
        else:
            from serdemo.vtlp import F_HI_HZ, warp_power

            frames = self.logmel.frame_lengths(lengths)
            if alpha is not None and not (isinstance(alpha, (int, float)) and alpha == 1.0):
                power = warp_power(power, alpha, self.features.sample_rate, F_HI_HZ)
            logmel = self.logmel.mel(power, frames)
        if self.encoder is None:
            return Encoded(logmel, frames)
        return self.encode_logmel(logmel, frames)

    def encode_logmel(self, logmel: torch.Tensor, frames: torch.Tensor) -> Encoded:
        enc = self.encoder
        dev = logmel.device
        if next(enc.parameters()).device != dev:
            raise RuntimeError("the encoder and the log-mel are on different devices")
        use_bf16 = (self.bf16 and dev.type == "cpu") or dev.type == "cuda"
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            states, lengths = enc(logmel, frames, self.n_layers)
        stacked = torch.stack([s.float() for s in states], dim=1)  # (batch, layers + 1, time, width)
        pooled, model_len = pool_time(stacked, lengths, pool_factor(enc))
        return Encoded(logmel, frames, pooled, model_len)
