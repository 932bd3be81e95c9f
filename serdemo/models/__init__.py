"""Model registry: every architecture shares one forward signature (see :class:`SERModel`)."""

from __future__ import annotations

from serdemo.models.attention import AttentionPooling
from serdemo.models.base import ModelOutput, SERModel
from serdemo.models.cnnlstm import CNNLSTM
from serdemo.models.ensemble import Ensemble
from serdemo.models.localatt import LocalAttention
from serdemo.models.multitask import MultiTask

ARCHITECTURES: dict[str, type[SERModel]] = {
    "localatt": LocalAttention,
    "cnnlstm": CNNLSTM,
    "multitask": MultiTask,
    "ensemble": Ensemble,
}


def build_model(architecture: str, n_mels: int, heads: dict[str, int], **hparams) -> SERModel:
    """Instantiate ``architecture`` with ``heads`` (name -> number of classes)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {architecture!r}; known: {sorted(ARCHITECTURES)}")
    return ARCHITECTURES[architecture](n_mels, heads, **hparams)


__all__ = ["ARCHITECTURES", "AttentionPooling", "CNNLSTM", "Ensemble", "LocalAttention", "ModelOutput",
           "MultiTask", "SERModel", "build_model"]
