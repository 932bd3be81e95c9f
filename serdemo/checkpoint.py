"""Checkpoints: ``model.safetensors`` (weights only) + ``card.json`` (everything else).

Loading validates the card, checks the weights' size and SHA-256 against it, and checks every
tensor name and shape against the architecture the card describes. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import serdemo
from serdemo.features import FeatureConfig
from serdemo.fsutil import atomic_write
from serdemo.models import SERModel, build_model

WEIGHTS = "model.safetensors"
CARD = "card.json"
FORMAT = "serdemo-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "features", "heads")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_card(model: SERModel, features: FeatureConfig, heads: dict[str, list[str]],
              hparams: dict, **extra) -> dict:
    """A card with the required fields; ``extra`` adds name, label_set, training, metrics, license."""
    for name, labels in heads.items():
        if model.head_sizes.get(name) != len(labels):
            raise ValueError(f"head {name!r}: model has {model.head_sizes.get(name)} outputs, "
                             f"{len(labels)} labels given")
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "serdemo_version": serdemo.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"architecture": model.architecture, "hparams": hparams},
        "features": features.to_dict(),
        "heads": {k: list(v) for k, v in heads.items()},
    }
    card.update(extra)
    return card


def save_checkpoint(directory, model: SERModel, card: dict) -> Path:
    """Write weights and card into ``directory`` (created), each atomically; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".model.", suffix=".safetensors")
    os.close(fd)
    try:
        save_file(state, tmp, metadata={"format": FORMAT})
        card = dict(card)
        card["weights"] = {"file": WEIGHTS, "sha256": sha256_file(Path(tmp)),
                           "bytes": Path(tmp).stat().st_size,
                           "parameters": sum(p.numel() for p in model.parameters())}
        os.replace(tmp, directory / WEIGHTS)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    data = json.dumps(card, indent=2, sort_keys=False).encode()
    atomic_write(directory / CARD, lambda f: f.write(data))
    return directory


def read_card(directory) -> dict:
    """Parse and validate ``card.json``; raises :class:`CheckpointError`."""
    directory = Path(directory)
    path = directory / CARD
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder {directory} does not exist")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: a checkpoint needs {CARD} beside {WEIGHTS}")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc}); the file is corrupt or truncated") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}")
    if card["format"] != FORMAT or card["format_version"] > FORMAT_VERSION:
        raise CheckpointError(f"{path}: format {card['format']!r} v{card['format_version']} is not "
                              f"{FORMAT!r} v<={FORMAT_VERSION}; upgrade serdemo")
    if "emotion" not in card["heads"]:
        raise CheckpointError(f"{path}: the card names no 'emotion' head")
    return card


def build_from_card(card: dict) -> SERModel:
    """The untrained model a card describes."""
    try:
        features = FeatureConfig.from_dict(card["features"])
        heads = {k: len(v) for k, v in card["heads"].items()}
        return build_model(card["model"]["architecture"], features.n_mels, heads,
                           input_frame_rate_hz=features.frame_rate_hz, **card["model"].get("hparams", {}))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"the card does not describe a buildable model: {exc}") from None


def load_checkpoint(directory, device: str | torch.device = "cpu") -> tuple[SERModel, dict]:
    """Load a checkpoint folder into an eval-mode model on ``device``; returns ``(model, card)``."""
    directory = Path(directory)
    card = read_card(directory)
    weights = directory / card.get("weights", {}).get("file", WEIGHTS)
    if not weights.is_file():
        raise CheckpointError(f"{weights} is missing")
    expected = card.get("weights", {})
    size = weights.stat().st_size
    if "bytes" in expected and size != expected["bytes"]:
        raise CheckpointError(f"{weights} has {size} bytes, the card says {expected['bytes']}: "
                              "the file is truncated or was replaced")
    if "sha256" in expected and sha256_file(weights) != expected["sha256"]:
        raise CheckpointError(f"{weights} does not match the SHA-256 in its card: the file is corrupt")
    try:
        state = load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights} is not a valid safetensors file ({exc})") from None
    model = build_from_card(card)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:5]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:5]}")
        if wrong:
            parts.append("shape mismatch " + ", ".join(
                f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong[:5]))
        raise CheckpointError(f"{weights} does not fit the model its card describes: " + "; ".join(parts))
    model.load_state_dict(state)
    return model.to(device).eval(), card


def list_checkpoints(*folders) -> list[Path]:
    """Checkpoint folders (those holding a card) directly under each of ``folders``, sorted by name."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if (p / CARD).is_file()]
    return found
