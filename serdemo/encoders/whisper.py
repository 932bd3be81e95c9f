"""OpenAI Whisper's audio encoder in plain torch, for any size, read from a CTranslate2 ``model.bin``.

Shapes: log-mel ``(batch, 80, frames)`` at 100 frames/s -> hidden states ``(batch, time, width)`` at 50
frames/s (conv2 has stride 2), one per layer: ``h[0]`` the convolutional embedding plus positions,
``h[i]`` the residual stream after block ``i``; the last block's output goes through the final
LayerNorm, as in Whisper. Padding never changes a clip's states (masked convolutions and attention).
Each size is its own module (:mod:`serdemo.encoders.whisper_base`, ...) naming its dimensions, where its
weights come from and their hash.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from serdemo.encoders.base import EncoderError, EncoderInfo, SpeechEncoder
from serdemo.encoders.ct2 import tensor_digest
from serdemo.features import FeatureConfig

MAX_FRAMES = 3000  # log-mel frames in one 30-s window (the positional table holds 1500 encoder frames)
FRAME_RATE_HZ = 50.0  # encoder frames per second
FEATURES = FeatureConfig()  # Whisper's front end: 16 kHz, n_fft 400, hop 160, 80 mels


@dataclass(frozen=True)
class WhisperDims:
    width: int
    heads: int
    layers: int
    ffn: int
    n_mels: int = 80


def whisper_info(name: str, title: str, dims: WhisperDims, license: str, provenance: dict,
                 languages: str = "multilingual") -> EncoderInfo:
    return EncoderInfo(name=name, title=title, width=dims.width, n_layers=dims.layers, frame_rate_hz=FRAME_RATE_HZ,
                       features=FEATURES, license=license, provenance=provenance, languages=languages,
                       new_block=lambda: EncoderBlock(dims))


class EncoderBlock(nn.Module):
    """One pre-LayerNorm transformer block of the encoder; ``key_mask (batch, 1, 1, time)`` bool, True
    where a key is real (None: no padding)."""

    def __init__(self, dims: WhisperDims):
        super().__init__()
        self.dims = dims
        w = dims.width
        self.ln1 = nn.LayerNorm(w)
        self.qkv = nn.Linear(w, 3 * w)
        self.out = nn.Linear(w, w)
        self.ln2 = nn.LayerNorm(w)
        self.fc1 = nn.Linear(w, dims.ffn)
        self.fc2 = nn.Linear(dims.ffn, w)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        h, w = self.dims.heads, self.dims.width
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, h, w // h).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, w))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class WhisperEncoder(SpeechEncoder):
    """A Whisper audio encoder of dimensions ``info``'s. ``forward(logmel (batch, 80, frames), frames
    (batch,), n_layers)`` returns ``(states, lengths)``: ``n_layers + 1`` hidden states ``(batch, time,
    width)`` and ``(batch,)`` encoder frames per clip. Runs ``n_layers`` blocks only (the rest cost
    nothing). Clips longer than 30 s are encoded window by window (30 s each) and joined."""

    def __init__(self, info: EncoderInfo, dims: WhisperDims):
        super().__init__()
        self.info, self.dims = info, dims
        w = dims.width
        self.conv1 = nn.Conv1d(dims.n_mels, w, 3, padding=1)
        self.conv2 = nn.Conv1d(w, w, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(MAX_FRAMES // 2, w))
        self.blocks = nn.ModuleList(EncoderBlock(dims) for _ in range(dims.layers))
        self.ln_post = nn.LayerNorm(w)
        self.digest = ""
        for p in self.parameters():
            p.requires_grad_(False)

    @property
    def final_norm(self) -> nn.Module:
        return self.ln_post

    @classmethod
    def from_ct2(cls, info: EncoderInfo, dims: WhisperDims, tensors: dict[str, torch.Tensor]) -> "WhisperEncoder":
        # every tensor is overwritten below: building the layers must not draw from the global generator, or
        # a training run would differ with whether its process had loaded the encoder before (a resumed or
        # cross-validated run would not repeat an uninterrupted one)
        with torch.random.fork_rng(devices=[]):
            enc = cls(info, dims)
        mapping = {"conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
                   "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
                   "positions": "encoder/position_encodings/encodings",
                   "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta"}
        for i in range(dims.layers):
            p = f"encoder/layer_{i}"
            mapping.update({
                f"blocks.{i}.ln1.weight": f"{p}/self_attention/layer_norm/gamma",
                f"blocks.{i}.ln1.bias": f"{p}/self_attention/layer_norm/beta",
                f"blocks.{i}.qkv.weight": f"{p}/self_attention/linear_0/weight",
                f"blocks.{i}.qkv.bias": f"{p}/self_attention/linear_0/bias",
                f"blocks.{i}.out.weight": f"{p}/self_attention/linear_1/weight",
                f"blocks.{i}.out.bias": f"{p}/self_attention/linear_1/bias",
                f"blocks.{i}.ln2.weight": f"{p}/ffn/layer_norm/gamma",
                f"blocks.{i}.ln2.bias": f"{p}/ffn/layer_norm/beta",
                f"blocks.{i}.fc1.weight": f"{p}/ffn/linear_0/weight",
                f"blocks.{i}.fc1.bias": f"{p}/ffn/linear_0/bias",
                f"blocks.{i}.fc2.weight": f"{p}/ffn/linear_1/weight",
                f"blocks.{i}.fc2.bias": f"{p}/ffn/linear_1/bias",
            })
        state = enc.state_dict()
        missing = sorted(v for v in mapping.values() if v not in tensors)
        if missing:
            raise EncoderError(f"model.bin lacks encoder tensors: {missing[:4]}{' …' if len(missing) > 4 else ''}")
        for ours, theirs in mapping.items():
            src = tensors[theirs]
            if tuple(src.shape) != tuple(state[ours].shape):
                raise EncoderError(f"model.bin's {theirs} has shape {tuple(src.shape)}, expected "
                                   f"{tuple(state[ours].shape)}: not {info.title}")
            state[ours] = src.float()
        enc.load_state_dict(state)
        enc.digest = tensor_digest({k: tensors[v] for k, v in mapping.items()})
        return enc.eval()

    @staticmethod
    def out_lengths(frames: torch.Tensor) -> torch.Tensor:
        return torch.div(frames + 1, 2, rounding_mode="floor")

    def forward(self, logmel: torch.Tensor, frames: torch.Tensor, n_layers: int | None = None):
        top = self.dims.layers
        n_layers = top if n_layers is None else n_layers
        if not 0 <= n_layers <= top:
            raise ValueError(f"n_layers must be within 0..{top}, got {n_layers}")
        if logmel.shape[2] > MAX_FRAMES:
            return self._windowed(logmel, frames, n_layers)
        t_in = logmel.shape[2]
        in_mask = (torch.arange(t_in, device=logmel.device)[None] < frames[:, None]).to(logmel.dtype)
        x = F.gelu(self.conv1(logmel * in_mask[:, None]))
        x = x * in_mask[:, None]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (batch, time, width)
        lengths = self.out_lengths(frames)
        t = x.shape[1]
        x = x + self.positions[:t].to(x.dtype)
        padded = bool((lengths < t).any())
        valid = torch.arange(t, device=x.device)[None] < lengths[:, None]
        key_mask = valid[:, None, None, :] if padded else None
        states = [x]
        for i in range(n_layers):
            x = self.blocks[i](x, key_mask)
            states.append(self.ln_post(x) if i == top - 1 else x)
        if padded:
            keep = valid[..., None].to(x.dtype)
            states = [s * keep for s in states]
        return states, lengths

    def _windowed(self, logmel, frames, n_layers):
        """Clips over 30 s: encode each 30-s window as its own clip and join the windows' states."""
        parts, part_lengths = [], []
        for start in range(0, logmel.shape[2], MAX_FRAMES):
            win = logmel[:, :, start:start + MAX_FRAMES]
            win_frames = (frames - start).clamp(min=0, max=win.shape[2])
            states, lengths = self.forward(win, win_frames.clamp_min(1), n_layers)
            lengths = torch.where(win_frames > 0, lengths, torch.zeros_like(lengths))
            parts.append(states)
            part_lengths.append(lengths)
        total = sum(part_lengths)
        width = int(total.max())
        out = [torch.zeros(logmel.shape[0], width, self.dims.width, dtype=logmel.dtype, device=logmel.device)
               for _ in range(n_layers + 1)]
        for b in range(logmel.shape[0]):
            pos = 0
            for states, lengths in zip(parts, part_lengths):
                n = int(lengths[b])
                for layer, s in enumerate(states):
                    out[layer][b, pos:pos + n] = s[b, :n]
                pos += n
        return out, total
