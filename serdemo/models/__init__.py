"""Model registry: every architecture shares one forward signature,
``model(x, lengths, speech=None) -> ModelOutput``, where ``x`` is the encoder's states for models
with ``input_kind == "encoder"`` and the log-mel for ``"logmel"`` (cnnlstm, trained from scratch)."""

from __future__ import annotations

import difflib
import inspect

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
    check_settings(architecture, hparams)
    own = settings_of(cls)
    kwargs = {k: v for k, v in hparams.items() if k in own}  # fit-time options stay with the trainer
    if getattr(cls, "input_kind", "logmel") == "encoder":
        return cls(n_mels, heads, encoder=encoder, **kwargs)
    return cls(n_mels, heads, **kwargs)


# what every builder may pass whatever the architecture (a log-mel model reads it, one on the encoder does not)
BUILDER_KEYS = ("input_frame_rate_hz",)


def settings_of(cls) -> tuple[str, ...]:
    """An architecture's own settings: its constructor's keyword arguments (what sizes and shapes the model)."""
    params = inspect.signature(cls.__init__).parameters
    return tuple(n for n, p in params.items() if n not in ("self", "n_mels", "heads", "encoder")
                 and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


def check_settings(architecture: str, hparams: dict) -> None:
    """Refuses a setting ``architecture`` does not have (``tune_layer`` for ``tune_layers``), naming the known
    ones: in a recipe, on the command line and in a card alike."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    cls = ARCHITECTURES[architecture]
    own, fit = settings_of(cls), tuple(getattr(cls, "fit_options", ()))
    known = set(own) | set(fit) | set(BUILDER_KEYS)
    unknown = [k for k in hparams if k not in known]
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(k, sorted(known), 1))
                 else repr(k) for k in unknown]
        fit_text = f"; fit-time options: {', '.join(fit)}" if fit else ""
        raise ValueError(f"{architecture} has no setting {', '.join(hints)}; its settings: "
                         f"{', '.join(k for k in own if k not in BUILDER_KEYS)}{fit_text}")


def uses_encoder(model) -> bool:
    return getattr(model, "input_kind", "logmel") == "encoder"


def encoder_layers(model) -> int:
    """Blocks the shared, frozen encoder runs for ``model`` (the model reads that many + 1 states): its
    ``n_layers`` less the blocks it fine-tuned as its own copies; 0 for a log-mel model."""
    if not uses_encoder(model):
        return 0
    return getattr(model, "encoder_layers", model.n_layers)


__all__ = ["ARCHITECTURES", "AttentionPooling", "CNNLSTM", "LinearProbe", "LocalAttention", "ModelOutput",
           "MultiTask", "SERModel", "build_model", "check_settings", "encoder_layers", "settings_of", "uses_encoder"]
