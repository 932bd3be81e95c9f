"""Whisper's log-mel front end, as a torch module that runs on whatever device the model is on.

This is the one front end of the project: the spectrogram the app shows is exactly what the pretrained
encoder (:mod:`serdemo.encoders`) hears, and VTLP warps its power spectrum before the mel filters.
Whisper's recipe: 16 kHz, Hann window of 400 samples, hop 160 (10 ms), ``|STFT|^2`` with reflect
padding of 200 samples at each end of the clip (its own end: padding a clip inside a batch does not
change its frames) and the last frame dropped, so a clip of ``n`` samples has ``n // 160`` frames;
80 Slaney mel filters up to 8 kHz; ``log10`` clamped at 1e-10, floored 8 decades (80 dB) below the
clip's maximum, then ``(x + 4) / 4``. One unit of that scale is 40 dB (:data:`DB_PER_UNIT`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np
import torch
import torch.nn.functional as F
import torchaudio.functional as AF

from serdemo.audio import SAMPLE_RATE

LOG_FLOOR = 1e-10  # power floor before the log10 (-100 dB)
TOP_DECADES = 8.0  # dynamic range kept below each clip's loudest mel bin (80 dB)
DB_PER_UNIT = 40.0  # one unit of (log10(power) + 4) / 4 is 40 dB


@dataclass(frozen=True)
class FeatureConfig:
    """Front-end parameters; travels inside every checkpoint card. The defaults are Whisper's."""

    sample_rate: int = SAMPLE_RATE  # Hz
    win_length: int = 400  # samples (25 ms)
    hop_length: int = 160  # samples (10 ms)
    n_fft: int = 400
    n_mels: int = 80
    fmin_hz: float = 0.0
    fmax_hz: float = 8000.0

    @property
    def input_rows(self) -> int:
        return self.n_mels

    @property
    def frame_rate_hz(self) -> float:
        return self.sample_rate / self.hop_length

    @property
    def db_per_unit(self) -> float:
        """dB per unit of the log-mel scale (Whisper's ``(log10(power) + 4) / 4``: 40 dB)."""
        return DB_PER_UNIT

    @property
    def n_bins(self) -> int:
        return self.n_fft // 2 + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown feature settings: {sorted(unknown)}")
        return cls(**data)

    def num_frames(self, num_samples):
        """Frames for a clip of ``num_samples`` (int, array or tensor): ``n // hop`` (Whisper drops the last)."""
        return num_samples // self.hop_length

    def frame_times_s(self, num_frames: int) -> np.ndarray:
        """Centre time in seconds of each of ``num_frames`` frames."""
        return np.arange(num_frames) * (self.hop_length / self.sample_rate)


class LogMel(torch.nn.Module):
    """Waveform -> power spectrum -> (optional VTLP warp) -> mel -> Whisper's log scale.

    ``forward(wave (batch, samples), lengths (batch,))`` returns ``(batch, n_mels, frames)`` and
    frame lengths ``(batch,)``. :meth:`power` and :meth:`mel` expose the two halves so a VTLP
    warp can sit between them.
    """

    def __init__(self, config: FeatureConfig = FeatureConfig()):
        super().__init__()
        self.config = config
        window = torch.hann_window(config.win_length, periodic=True)
        pad = config.n_fft - config.win_length
        window = F.pad(window, (pad // 2, pad - pad // 2))
        self.register_buffer("window", window, persistent=False)
        fbank = AF.melscale_fbanks(
            config.n_bins, config.fmin_hz, min(config.fmax_hz, config.sample_rate / 2),
            config.n_mels, config.sample_rate, norm="slaney", mel_scale="slaney",
        )  # (n_bins, n_mels)
        self.register_buffer("fbank", fbank, persistent=False)

    def frame_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return self.config.num_frames(lengths).clamp_min(1)

    def power(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, samples)`` (zero-padded, ``lengths`` real samples each) -> power ``(batch, n_bins, frames)``.

        Each clip is reflect-padded by ``n_fft // 2`` at its own start and end, as ``torch.stft(center=True)``
        does for a clip alone; ``frames = max(lengths) // hop``.
        """
        cfg = self.config
        b, n = wave.shape
        if lengths is None:
            lengths = torch.full((b,), n, dtype=torch.long, device=wave.device)
        half = cfg.n_fft // 2
        pos = torch.arange(-half, n + half, device=wave.device)[None, :].expand(b, -1)
        last = (lengths - 1).clamp_min(1)[:, None]
        idx = pos.abs()  # reflect at the start
        idx = torch.where(idx > last, 2 * last - idx, idx)  # reflect at each clip's own end
        inside = idx >= 0
        idx = idx.clamp(0, n - 1)
        padded = wave.gather(1, idx) * inside.to(wave.dtype)
        padded = padded * (pos < lengths[:, None] + half).to(wave.dtype)
        spec = torch.stft(padded, cfg.n_fft, cfg.hop_length, cfg.n_fft, self.window,
                          center=False, return_complex=True)
        frames = max(1, n // cfg.hop_length)
        spec = spec[..., :frames]
        return spec.real.square() + spec.imag.square()

    def mel(self, power: torch.Tensor, frames: torch.Tensor | None = None) -> torch.Tensor:
        """Power ``(batch, n_bins, T)`` -> log-mel ``(batch, n_mels, T)`` on Whisper's scale.

        The 80-dB floor is set by each clip's loudest bin within its ``frames`` real frames.
        """
        mel = torch.matmul(self.fbank.transpose(0, 1), power)
        logmel = torch.log10(mel.clamp_min(LOG_FLOOR))
        if frames is None:
            peak = logmel.amax(dim=(1, 2), keepdim=True)
        else:
            real = torch.arange(logmel.shape[2], device=logmel.device)[None, :] < frames[:, None]
            peak = logmel.masked_fill(~real[:, None, :], -torch.inf).amax(dim=(1, 2), keepdim=True)
        return (torch.maximum(logmel, peak - TOP_DECADES) + 4.0) / 4.0

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None, alpha=None, f_hi_hz: float | None = None):
        """``alpha``: VTLP warp factor, a float or one per example ``(batch,)``; None or 1: no warp.

        Always computed in float32 (under autocast too): fp16 power underflows in the log.
        """
        from serdemo.vtlp import F_HI_HZ, warp_power

        if wave.dim() == 1:
            wave = wave.unsqueeze(0)
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], dtype=torch.long, device=wave.device)
        frames = self.frame_lengths(lengths)
        with torch.autocast(wave.device.type, enabled=False):
            power = self.power(wave.float(), lengths)
            if alpha is not None and not (isinstance(alpha, (int, float)) and alpha == 1.0):
                power = warp_power(power, alpha, self.config.sample_rate, F_HI_HZ if f_hi_hz is None else f_hi_hz)
            return self.mel(power, frames), frames


PROSODY_SCALE = (1 / 12.0, 1.0, 1 / 20.0)  # semitones -> octaves, voicing, dB -> 20 dB units


def prosody_rows(prosody: torch.Tensor) -> torch.Tensor:
    """``(batch, 3, frames)`` prosody -> rows on a scale comparable to log-mel (natural log units)."""
    scale = torch.tensor(PROSODY_SCALE, dtype=prosody.dtype, device=prosody.device)
    return prosody * scale[None, :, None]


def crop_to_speech(feats: torch.Tensor, frames: torch.Tensor, speech: torch.Tensor):
    """Keep each clip's span from its first to its last speech frame.

    ``feats (batch, rows, T)``, ``frames (batch,)``, ``speech (batch, T)`` bool ->
    ``(feats', frames', speech', offsets)``; a clip without speech keeps all its frames; frame ``j``
    of a cropped clip is frame ``offsets[i] + j`` of the original.
    """
    b, t = speech.shape[0], feats.shape[2]
    real = length_mask(frames, t)
    sp = speech[:, :t] & real
    has = sp.any(1)
    idx = torch.arange(t, device=feats.device)[None, :].expand(b, t)
    first = torch.where(sp, idx, torch.full_like(idx, t)).amin(1)
    last = torch.where(sp, idx, torch.full_like(idx, -1)).amax(1)
    start = torch.where(has, first, torch.zeros_like(first))
    stop = torch.where(has, last + 1, frames)
    new_len = (stop - start).clamp_min(1)
    width = int(new_len.max())
    gather = (start[:, None] + torch.arange(width, device=feats.device)[None, :]).clamp_max(t - 1)
    keep = length_mask(new_len, width)
    out = feats.gather(2, gather[:, None, :].expand(-1, feats.shape[1], -1)) * keep[:, None, :].to(feats.dtype)
    out_speech = sp.gather(1, gather) & keep
    out_speech = torch.where(has[:, None], out_speech, keep)
    return out, new_len, out_speech, start


def pad_batch(waves: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """List of 1-D float32 arrays -> zero-padded ``(batch, samples)`` and lengths ``(batch,)``."""
    lengths = torch.tensor([len(w) for w in waves], dtype=torch.long)
    out = torch.zeros(len(waves), int(lengths.max()), dtype=torch.float32)
    for i, w in enumerate(waves):
        out[i, : len(w)] = torch.as_tensor(w)
    return out, lengths


def length_mask(lengths: torch.Tensor, max_len: int) -> torch.Tensor:
    """``(batch,)`` lengths -> ``(batch, max_len)`` bool, True on real frames."""
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
