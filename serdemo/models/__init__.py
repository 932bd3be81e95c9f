"""Model registry: every architecture shares one forward signature,
``model(x, lengths, speech=None) -> ModelOutput``, where ``x`` is the encoder's states for models
with ``input_kind == "encoder"`` and the log-mel for ``"logmel"`` (cnnlstm, trained from scratch)."""

from __future__ import annotations

from serdemo.models.attention import AttentionPooling
from serdemo.models.base import ModelOutput, SERModel
from serdemo.models.cnnlstm import CNNLSTM
from serdemo.models.localatt import LocalAttention
from serdemo.models.multitask import MultiTask
from serdemo.models.probe import LinearProbe

ARCHITECTURES = {
    "probe": LinearProbe,
    "localatt": LocalAttention,
    "multitask": MultiTask,
    "cnnlstm": CNNLSTM,
}


def build_model(architecture: str, n_mels: int, heads: dict[str, int], encoder=None, **hparams):
    """Instantiate ``architecture`` with ``heads`` (name -> number of classes); ``encoder`` (an
    :class:`serdemo.encoders.EncoderInfo` or registry name; None: the default) sizes a model on the encoder."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture]
    if getattr(cls, "input_kind", "logmel") == "encoder":
        return cls(n_mels, heads, encoder=encoder, **hparams)
    return cls(n_mels, heads, **hparams)


def uses_encoder(model) -> bool:
    return getattr(model, "input_kind", "logmel") == "encoder"


def encoder_layers(model) -> int:
    """Blocks the shared, frozen encoder runs for ``model`` (the model reads that many + 1 states): its
    ``n_layers`` less the blocks it fine-tuned as its own copies; 0 for a log-mel model."""
    if not uses_encoder(model):
        return 0
    return getattr(model, "encoder_layers", model.n_layers)


__all__ = ["ARCHITECTURES", "AttentionPooling", "CNNLSTM", "LinearProbe", "LocalAttention", "ModelOutput",
           "MultiTask", "SERModel", "build_model", "encoder_layers", "uses_encoder"]
