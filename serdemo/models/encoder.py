"""What every model on the pretrained encoder shares: the layer mix, masks, pooling and heads.

Input: the encoder's hidden states ``(batch, layers + 1, time, width)`` on the 25-frames/s model grid
(:mod:`serdemo.encoding`), real lengths ``(batch,)`` and a speech mask ``(batch, time)``. A learned
softmax-weighted sum mixes the layers (each layer normalised first, so no layer wins by its scale);
attention and statistics use speech frames only (a clip without speech falls back to all frames).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from serdemo.encoding import MODEL_FRAME_RATE_HZ
from serdemo.features import length_mask
from serdemo.models.attention import AttentionPooling
from serdemo.models.base import ModelOutput
from serdemo import encoders
from serdemo.encoders import EncoderInfo, SpeechEncoder


def layer_statistics(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``states (batch, layers, time, dim)``, ``mask (batch, time)`` -> ``(batch, layers * 2 * dim)``:
    each layer's mean then standard deviation over the masked frames."""
    m = mask[:, None, :, None].to(states.dtype)
    n = m.sum(dim=2).clamp_min(1.0)
    mean = (states * m).sum(dim=2) / n
    var = ((states - mean[:, :, None]).square() * m).sum(dim=2) / n
    # sqrt's gradient at 0 is infinite: a clip with one speech frame has variance 0, and once the states carry
    # gradients (fine-tuned blocks) that turned every tuned weight into NaN. Same values, gradient 0 there.
    positive = var > 0
    std = torch.where(positive, var, torch.ones_like(var)).sqrt() * positive
    return torch.cat([mean, std], dim=2).flatten(1)


def checked_frame_norm(value) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"frame_norm must be true or false, not {value!r}")
    return value


def speech_statistics(states: torch.Tensor, mask: torch.Tensor, frame_norm: bool = False) -> torch.Tensor:
    """:func:`layer_statistics`, optionally of layer-normalised frames (``frame_norm``: each frame's state to
    zero mean and unit variance over its dimensions, no learned gain, as every encoder block normalises its
    input before reading it; Whisper's residual stream carries a few dimensions far larger than the rest,
    whose scale follows voice and recording set-up more than emotion)."""
    if frame_norm:
        states = F.layer_norm(states, states.shape[-1:])
    return layer_statistics(states, mask)


class LayerMix(nn.Module):
    """``(batch, layers, time, dim)`` -> ``(batch, time, dim)``: softmax(w) · LayerNorm(layer)."""

    def __init__(self, n_states: int):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(n_states))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(states, states.shape[-1:])
        return torch.einsum("l,bltd->btd", self.weights().to(x.dtype), x)


def speech_or_all(speech: torch.Tensor | None, real: torch.Tensor) -> torch.Tensor:
    """Speech frames within the real ones; all real frames for a clip without any speech."""
    if speech is None:
        return real
    sp = speech[:, : real.shape[1]] & real
    return torch.where(sp.any(dim=1, keepdim=True), sp, real)


def encoder_info(encoder: EncoderInfo | str | None) -> EncoderInfo:
    """The encoder a model is built for (its width and depth): an :class:`EncoderInfo`, a registry name, or
    None for the default encoder."""
    if isinstance(encoder, EncoderInfo):
        return encoder
    return encoders.info(encoder or encoders.DEFAULT)


def checked_layers(n_layers, enc: EncoderInfo) -> int:
    n_layers = enc.n_layers if n_layers is None else n_layers
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or not 1 <= n_layers <= enc.n_layers:
        raise ValueError(f"n_layers must be within 1..{enc.n_layers} ({enc.name} has {enc.n_layers} blocks), "
                         f"got {n_layers!r}")
    return n_layers


class EncoderModel(nn.Module):
    """Base of the models on the encoder (``input_kind = "encoder"``). ``encoder``: the encoder it reads
    (:class:`EncoderInfo` or registry name; its width and depth size the model); ``n_layers``: encoder blocks
    run (the model reads ``n_layers + 1`` states: the embedding and each block's output; default all)."""

    architecture = "encoder"
    input_kind = "encoder"

    def __init__(self, n_mels: int, heads: dict[str, int], n_layers: int | None = None, dropout: float = 0.2,
                 stats: bool = False, tune_layers: int = 0, frame_norm: bool = False,
                 encoder: EncoderInfo | str | None = None):
        super().__init__()
        enc = encoder_info(encoder)
        self.width = enc.width
        n_layers = checked_layers(n_layers, enc)
        self.use_stats = stats  # add each layer's mean and std over speech (the probe's features) to the pooled vector
        self.frame_norm = checked_frame_norm(frame_norm)  # those statistics of layer-normalised frames (speech_statistics)
        if "emotion" not in heads:
            raise ValueError("every model needs an 'emotion' head")
        if not 0 <= tune_layers <= n_layers:
            raise ValueError(f"tune_layers must be within 0..n_layers ({n_layers}), got {tune_layers}")
        self.head_sizes = dict(heads)
        self.n_layers = n_layers
        # Fine-tuning: the top ``tune_layers`` of the ``n_layers`` blocks are the model's own trainable copies
        # (:meth:`start_from` fills them from the pretrained encoder). The shared, frozen encoder runs only
        # the blocks below them (``encoder_layers``), so its cached states still feed training; the copies run
        # on those states at the model's 25 frames/s, in training and in the app alike.
        self.tune_layers = tune_layers
        self.encoder_layers = n_layers - tune_layers
        if tune_layers and enc.new_block is None:
            raise ValueError(f"tune_layers: the blocks of {enc.name} cannot be fine-tuned")
        self.tuned = nn.ModuleList(enc.new_block() for _ in range(tune_layers))
        self.tuned_post = nn.LayerNorm(enc.width) if tune_layers and n_layers == enc.n_layers else None
        self.mix = LayerMix(n_layers + 1)
        self.dropout = nn.Dropout(dropout)
        self.input_frame_rate_hz = MODEL_FRAME_RATE_HZ

    def trunk(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @torch.no_grad()
    def start_from(self, encoder: SpeechEncoder) -> None:
        """Fill the tuned blocks (and the final LayerNorm when the top block is among them) from ``encoder``."""
        for i, block in enumerate(self.tuned):
            block.load_state_dict(encoder.blocks[self.encoder_layers + i].state_dict())
        if self.tuned_post is not None:
            self.tuned_post.load_state_dict(encoder.final_norm.state_dict())

    def run_tuned(self, states: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        """``states (batch, encoder_layers + 1, time, dim)`` -> ``(batch, n_layers + 1, time, dim)``: the
        tuned blocks continue from the frozen encoder's last state; padding stays zero and is never attended."""
        keep = real[..., None].to(states.dtype)
        key_mask = None if bool(real.all()) else real[:, None, None, :]
        x, out = states[:, -1], [states]
        for i, block in enumerate(self.tuned):
            x = block(x, key_mask)
            last = self.tuned_post is not None and i == len(self.tuned) - 1
            out.append(((self.tuned_post(x) if last else x) * keep)[:, None])
            x = x * keep
        return torch.cat(out, dim=1)

    def forward(self, states: torch.Tensor, lengths: torch.Tensor, speech: torch.Tensor | None = None) -> ModelOutput:
        states = states[:, : self.encoder_layers + 1]
        real = length_mask(lengths, states.shape[2])
        if self.tune_layers:
            states = self.run_tuned(states, real)
        x = self.mix(states) * real[..., None].to(states.dtype)
        y = self.trunk(x, lengths)
        mask = speech_or_all(speech, real)
        pooled, weights = self.pool(y, mask)
        if self.use_stats:
            pooled = pooled + self.stats_proj(speech_statistics(states.float(), mask, self.frame_norm))
        pooled = self.dropout(pooled)
        logits = {name: head(pooled) for name, head in self.heads.items()}
        return ModelOutput(logits, weights, lengths, MODEL_FRAME_RATE_HZ)


class Dense(nn.Sequential):
    def __init__(self, dims: list[int], dropout: float):
        layers = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        super().__init__(*layers)


def attention_heads(model: EncoderModel, dim: int, head_hidden: int = 0, dropout: float = 0.2) -> None:
    """Attention pooling and one head per task (a linear layer, or a small MLP with ``head_hidden``)."""
    model.pool = AttentionPooling(dim)
    if model.use_stats:
        n = (model.n_layers + 1) * 2 * model.width
        model.stats_proj = nn.Sequential(nn.LayerNorm(n), nn.Dropout(dropout), nn.Linear(n, dim))
    if head_hidden:
        model.heads = nn.ModuleDict({name: nn.Sequential(nn.Linear(dim, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                                         nn.Linear(head_hidden, n))
                                     for name, n in model.head_sizes.items()})
    else:
        model.heads = nn.ModuleDict({name: nn.Linear(dim, n) for name, n in model.head_sizes.items()})

