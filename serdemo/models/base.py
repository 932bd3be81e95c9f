"""What every architecture shares: input normalisation, masked BLSTM, heads, the output type."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from serdemo.features import length_mask
from serdemo.models.attention import AttentionPooling

NORM_MODES = ("utterance", "global", "none")
STD_FLOOR = 0.1  # in input units; log-mel bands vary by 1-3 natural-log units


@dataclass
class ModelOutput:
    """``logits``: head -> ``(batch, classes)``; ``attention``: ``(batch, frames')`` summing to 1 over
    real frames; ``attention_lengths``: ``(batch,)``; ``frame_rate_hz``: frames' per second."""

    logits: dict[str, torch.Tensor]
    attention: torch.Tensor
    attention_lengths: torch.Tensor
    frame_rate_hz: float
    statistics: torch.Tensor | None = None  # (batch, dim): a voice-adapting model's raw per-clip statistics


class InputNorm(nn.Module):
    """Normalises log-mel ``(batch, n_mels, frames)`` per mel band.

    ``utterance``: mean and variance over each clip's real frames (robust to gain and microphone);
    ``global``: training-set statistics stored as buffers (set with :meth:`set_stats`), so they
    travel inside the checkpoint; ``none``: pass through (padding zeroed, as in every mode).
    """

    def __init__(self, n_mels: int, mode: str = "utterance"):
        super().__init__()
        if mode not in NORM_MODES:
            raise ValueError(f"norm must be one of {NORM_MODES}, got {mode!r}")
        self.mode = mode
        self.register_buffer("mean", torch.zeros(n_mels))
        self.register_buffer("std", torch.ones(n_mels))

    def set_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean.copy_(mean)
        # a floor: rows that are almost constant in training (ReLU embedding units, say) must not
        # turn a rare non-zero value at test time into a huge input
        self.std.copy_(std.clamp_min(STD_FLOOR))

    def forward(self, x: torch.Tensor, mask: torch.Tensor, stats_mask: torch.Tensor | None = None) -> torch.Tensor:
        """``stats_mask`` (default ``mask``): the frames per-utterance statistics come from (speech)."""
        if self.mode == "none":
            return x * mask[:, None, :].to(x.dtype)  # padding is zero in every mode: batch companions never leak in
        if self.mode == "global":
            out = (x - self.mean[None, :, None]) / self.std[None, :, None]
        else:
            m = (mask if stats_mask is None else stats_mask)[:, None, :].to(x.dtype)
            count = m.sum(dim=2, keepdim=True).clamp_min(1.0)
            mean = (x * m).sum(dim=2, keepdim=True) / count
            var = ((x - mean).square() * m).sum(dim=2, keepdim=True) / count
            out = (x - mean) / (var + 1e-5).sqrt()
        return out * mask[:, None, :].to(x.dtype)


class MaskedBLSTM(nn.Module):
    """Bidirectional LSTM over ``(batch, time, dim)`` that never reads padding (packed sequences)."""

    def __init__(self, input_dim: int, hidden: int, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.lstm = nn.LSTM(input_dim, hidden, num_layers=layers, batch_first=True,
                            bidirectional=True, dropout=dropout if layers > 1 else 0.0)
        self.out_dim = 2 * hidden

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        total = x.shape[1]
        if bool((lengths == total).all()):  # nothing padded: packing would only cost time
            return self.lstm(x)[0]
        packed = pack_padded_sequence(x, lengths.clamp_min(1).cpu(), batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=total)
        return out


def downsampled_lengths(lengths: torch.Tensor, factor: int) -> torch.Tensor:
    """Frames left after pooling time by ``factor`` with ceil mode."""
    return torch.div(lengths + factor - 1, factor, rounding_mode="floor").clamp_min(1)


def stack_frames(x: torch.Tensor, factor: int) -> torch.Tensor:
    """``(batch, time, dim)`` -> ``(batch, ceil(time/factor), dim*factor)``, zero-padding the tail."""
    if factor == 1:
        return x
    b, t, d = x.shape
    pad = (-t) % factor
    if pad:
        x = torch.nn.functional.pad(x, (0, 0, 0, pad))
    return x.reshape(b, (t + pad) // factor, d * factor)


class SERModel(nn.Module):
    """Base of the models that read the log-mel itself (``input_kind = "logmel"``): subclasses define
    ``encode(x, mask, lengths) -> (y (batch, time', dim), lengths')``.

    ``forward(features (batch, n_mels, frames), lengths (batch,), speech) -> ModelOutput``.
    """

    architecture = "base"
    input_kind = "logmel"
    time_stride = 1  # input frames per attention frame

    def __init__(self, n_mels: int, heads: dict[str, int], norm: str = "utterance",
                 input_frame_rate_hz: float = 100.0, dropout: float = 0.3, stats: bool = False):
        super().__init__()
        if "emotion" not in heads:
            raise ValueError("every model needs an 'emotion' head")
        self.n_mels = n_mels
        self.use_stats = stats  # append mean/std of the normalised input over speech frames
        self.head_sizes = dict(heads)
        self.input_frame_rate_hz = input_frame_rate_hz
        self.norm = InputNorm(n_mels, norm)
        self.dropout = nn.Dropout(dropout)

    def build_heads(self, dim: int) -> None:
        self.pool = AttentionPooling(dim)
        self.stats_dim = 2 * self.n_mels if self.use_stats else 0
        self.stats_proj = nn.Sequential(nn.Linear(self.stats_dim, dim), nn.ReLU()) if self.use_stats else None
        self.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in self.head_sizes.items()})

    def encode(self, x, mask, lengths):  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, features: torch.Tensor, lengths: torch.Tensor,
                speech: torch.Tensor | None = None) -> ModelOutput:
        """``speech`` ``(batch, frames)`` bool: the frames a voice-activity detector marked as speech.

        Per-utterance statistics and attention use speech frames only (attention frame ``j`` counts
        as speech when any input frame it covers is speech); a clip without any speech frame falls
        back to all of its frames.
        """
        mask = length_mask(lengths, features.shape[2])
        speech_mask = mask if speech is None else self._speech_or_all(speech[:, : mask.shape[1]] & mask, mask)
        x = self.norm(features, mask, speech_mask)
        y, out_lengths = self.encode(x, mask, lengths)
        out_mask = length_mask(out_lengths, y.shape[1])
        pool_mask = out_mask
        if speech is not None:
            pool_mask = self._speech_or_all(self._downsample_mask(speech_mask, y.shape[1]) & out_mask, out_mask)
        pooled, weights = self.pool(y, pool_mask)
        if self.stats_proj is not None:
            mean, std = _masked_moments(x, speech_mask)
            pooled = pooled + self.stats_proj(torch.cat([mean, std], dim=1).to(pooled.dtype))
        pooled = self.dropout(pooled)
        logits = {name: head(pooled) for name, head in self.heads.items()}
        return ModelOutput(logits, weights, out_lengths, self.input_frame_rate_hz / self.time_stride)

    @staticmethod
    def _speech_or_all(speech: torch.Tensor, fallback: torch.Tensor) -> torch.Tensor:
        has = speech.any(dim=1, keepdim=True)
        return torch.where(has, speech, fallback)

    def _downsample_mask(self, mask: torch.Tensor, out_len: int) -> torch.Tensor:
        """``(batch, frames)`` -> ``(batch, out_len)``: any True within each stride window."""
        s = self.time_stride
        pad = out_len * s - mask.shape[1]
        m = torch.nn.functional.pad(mask, (0, max(0, pad)))[:, : out_len * s]
        return m.reshape(mask.shape[0], out_len, s).any(dim=2)


def _masked_moments(x: torch.Tensor, mask: torch.Tensor):
    """``x (batch, feat, frames)`` -> mean, std ``(batch, feat)`` over ``mask``ed frames."""
    m = mask[:, None, :].to(x.dtype)
    n = m.sum(dim=2).clamp_min(1.0)
    mean = (x * m).sum(dim=2) / n
    var = ((x - mean[..., None]).square() * m).sum(dim=2) / n
    return mean, (var + 1e-5).sqrt()
