"""The contract every pretrained speech encoder meets (what the rest of serdemo may know about one).

An encoder is a frozen ``torch.nn.Module`` with an :class:`EncoderInfo` (name, sample rate, frame rate,
width, number of layers, front end, licence and provenance: all readable without loading any weights)
and a ``digest`` (SHA-256 of its tensors: a checkpoint names the encoder it stands on by name + digest).
It turns a batch of clips into every layer's hidden states:

    encoder.states(waves (batch, samples), lengths (batch,), n_layers)  -> (states, frame_lengths)
    encoder(logmel, frames, n_layers)                                   -> (states, frame_lengths)

``states`` is a list of ``n_layers + 1`` tensors ``(batch, time, width)`` at ``info.frame_rate_hz`` (the
embedding first, then each layer's output); padding never changes a clip's states and padded frames are
zero. The second form reads the encoder's own front end's output (for Whisper, the log-mel): the app
shows that spectrogram and its VTLP warp, and encodes the warped one without computing it twice.
Encoders whose blocks a model may fine-tune (``tune_layers``) also expose ``blocks``, ``final_norm`` and
``info.new_block()``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from serdemo.features import FeatureConfig, LogMel


class EncoderError(RuntimeError):
    """The pretrained encoder's weights are missing, truncated, garbled or not the expected file."""


@dataclass(frozen=True)
class EncoderInfo:
    """What an encoder is, without its weights."""

    name: str  # the registry name a card and a recipe use
    title: str  # what a person reads ("openai/whisper-base (audio encoder only)")
    width: int  # dimensions of each hidden state
    n_layers: int  # blocks (the encoder returns n_layers + 1 states)
    frame_rate_hz: float  # hidden states per second
    features: FeatureConfig  # its front end (sample rate, window, hop, mel bands)
    license: str
    provenance: dict = field(default_factory=dict)  # where the weights come from: packages, file hash, format
    languages: str = "multilingual"
    new_block: Callable[[], nn.Module] | None = None  # an untrained block of this encoder (fine-tuned copies)

    @property
    def sample_rate(self) -> int:
        return self.features.sample_rate

    def card_block(self, digest: str) -> dict:
        """What a checkpoint's card says about the encoder under its model."""
        return {"name": self.name, "digest": digest, "model": self.title, "width": self.width,
                "n_layers": self.n_layers, "license": self.license, **self.provenance}


class SpeechEncoder(nn.Module):
    """Base class of the encoders: subclasses set :attr:`info`, build their layers, fill :attr:`digest`
    when loaded, and implement :meth:`forward` and :meth:`out_lengths`."""

    info: EncoderInfo
    digest: str = ""

    def forward(self, frontend_out: torch.Tensor, frames: torch.Tensor, n_layers: int | None = None):
        raise NotImplementedError  # pragma: no cover - abstract

    @staticmethod
    def out_lengths(frames: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError  # pragma: no cover - abstract

    @torch.inference_mode()
    def states(self, waves: torch.Tensor, lengths: torch.Tensor, n_layers: int | None = None):
        """Every layer's states of ``waves (batch, samples)`` at :attr:`EncoderInfo.sample_rate`."""
        logmel, frames = LogMel(self.info.features).to(waves.device)(waves, lengths)
        return self(logmel, frames, self.info.n_layers if n_layers is None else n_layers)

    def card_block(self) -> dict:
        return self.info.card_block(self.digest)


def cpu_bf16_default() -> bool:
    """Whether to run the encoder in bfloat16 on the CPU: where it has native bf16, unless
    ``SERDEMO_BF16=0``; ``SERDEMO_BF16=1`` forces it."""
    flag = os.environ.get("SERDEMO_BF16")
    if flag in ("0", "1"):
        return flag == "1"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
