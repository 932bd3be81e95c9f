"""Checkpoints: ``model.safetensors`` (weights only) + ``card.json`` (everything else).

Loading validates the card, checks the weights' size and SHA-256 against it, and checks every
tensor name and shape against the architecture the card describes. Nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save as save_bytes

import serdemo
from serdemo.features import FeatureConfig
from serdemo.fsutil import atomic_write
from serdemo.models import ARCHITECTURES, SERModel, build_model, uses_encoder
from serdemo import encoders

WEIGHTS = "model.safetensors"
CARD = "card.json"
FORMAT = "serdemo-checkpoint"
FORMAT_VERSION = 1
REQUIRED = ("format", "format_version", "model", "features", "heads", "weights")
MAX_CARD_BYTES = 16 << 20
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# the feature settings every front end has: JSON type and a sane range (relations are checked after)
FEATURE_RANGES = {"sample_rate": (1_000, 192_000), "win_length": (1, 65_536), "hop_length": (1, 65_536),
                  "n_fft": (2, 65_536), "n_mels": (1, 1_024), "fmin_hz": (0, 96_000), "fmax_hz": (1, 96_000)}
MAX_HPARAM_VALUE = 65_536  # layer sizes, counts and rates all sit far below this
MAX_HPARAM_ITEMS = 64


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the checkpoint (never a path) and the problem."""


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
    if uses_encoder(model) and "encoder" not in extra:
        raise ValueError("a model on the pretrained encoder needs encoder=encoder_block(encoder) in its card")
    card = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "serdemo_version": serdemo.__version__,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        # how the architecture is fitted (what the Models tab says of its dev speakers and recipe): in one solve
        # on per-clip statistics, or by gradient steps with an epoch chosen on dev
        "model": {"architecture": model.architecture, "hparams": hparams,
                  "fit": "closed-form" if getattr(model, "closed_form", False) else "gradient"},
        "features": features.to_dict(),
        "heads": {k: list(v) for k, v in heads.items()},
    }
    card.update(extra)
    return card


def encoder_block(encoder) -> dict:
    """What a card says about the pretrained encoder under its model: its registry name, identity (digest of
    its tensors), size, where the weights come from, and the licence. The shared encoder's weights are never
    copied into a checkpoint; a model that fine-tunes its top blocks (``tune_layers``) holds only its own
    copies of those."""
    return encoder.card_block()


def save_checkpoint(directory, model: SERModel, card: dict) -> Path:
    """Write weights and card into ``directory`` (created), each atomically; returns the folder."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    weights = save_bytes(state, metadata={"format": FORMAT})
    card = dict(card)
    card["weights"] = {"file": WEIGHTS, "sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights),
                       "parameters": sum(p.numel() for p in model.parameters())}
    atomic_write(directory / WEIGHTS, lambda f: f.write(weights))
    data = json.dumps(card, indent=2, sort_keys=False).encode()
    atomic_write(directory / CARD, lambda f: f.write(data))
    return directory


def read_card(directory) -> dict:
    """Parse and validate ``card.json`` (types, ranges, the weights entry); raises :class:`CheckpointError`."""
    directory = Path(directory)
    card = _parse_card(directory)
    for check in (_check_format, _check_model, _check_features, _check_heads, _check_weights, _check_extras,
                  _check_encoder):
        problem = check(card)
        if problem:
            raise CheckpointError(f"checkpoint '{directory.name}': {CARD} {problem}; "
                                  "fix the card or save the checkpoint again")
    return card


def _parse_card(directory: Path) -> dict:
    path = directory / CARD
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint folder '{directory.name}' does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{directory.name}': {CARD} is missing: a checkpoint needs {CARD} "
                              f"beside {WEIGHTS}")
    if path.stat().st_size > MAX_CARD_BYTES:
        raise CheckpointError(f"checkpoint '{directory.name}': {CARD} is over {MAX_CARD_BYTES >> 20} MB; "
                              "it is not a card")
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"checkpoint '{directory.name}': {CARD} is not valid JSON ({exc}); "
                              "the file is corrupt or truncated") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"checkpoint '{directory.name}': {CARD} must hold a JSON object")
    missing = [k for k in REQUIRED if k not in card]
    if missing:
        raise CheckpointError(f"checkpoint '{directory.name}': {CARD} lacks {', '.join(missing)}")
    return card


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _shown(value) -> str:
    """A short description of a bad value: its repr (cut) and JSON type."""
    kinds = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    kind = kinds.get(type(value), "number")
    text = repr(value)
    return f"{text[:40]}{'...' if len(text) > 40 else ''} (a {kind})"


def _check_format(card: dict) -> str | None:
    if card["format"] != FORMAT:
        return f"says format {_shown(card['format'])}, not {FORMAT!r}"
    version = card["format_version"]
    if not _is_int(version) or version < 1:
        return f"format_version must be a whole number from 1, not {_shown(version)}"
    if version > FORMAT_VERSION:
        return f"is format version {version}; this serdemo reads up to {FORMAT_VERSION}: upgrade serdemo"
    return None


def _check_model(card: dict) -> str | None:
    model = card["model"]
    if not isinstance(model, dict) or not isinstance(model.get("architecture"), str):
        return f"'model' must be an object with an 'architecture' name, not {_shown(model)}"
    hparams = model.get("hparams", {})
    if not isinstance(hparams, dict):
        return f"'model.hparams' must be an object, not {_shown(hparams)}"
    bad = _bad_hparam(hparams)
    return None if bad is None else f"'model.hparams' holds {bad}"


def _bad_hparam(value, depth: int = 0) -> str | None:
    """The first value in ``hparams`` that no architecture takes: nesting, sizes and numbers are bounded."""
    if depth > 3:
        return "objects nested too deep"
    if isinstance(value, dict):
        return next((b for v in value.values() if (b := _bad_hparam(v, depth + 1))), None)
    if isinstance(value, list):
        if len(value) > MAX_HPARAM_ITEMS:
            return f"an array of {len(value)} items (at most {MAX_HPARAM_ITEMS})"
        return next((b for v in value if (b := _bad_hparam(v, depth + 1))), None)
    if isinstance(value, (str, bool)) or value is None:
        return None
    if not _is_number(value) or abs(value) > MAX_HPARAM_VALUE:
        return f"{_shown(value)}: numbers must be finite and at most {MAX_HPARAM_VALUE} in size"
    return None


def _check_features(card: dict) -> str | None:
    features = card["features"]
    if not isinstance(features, dict):
        return f"'features' must be an object, not {_shown(features)}"
    for key, (low, high) in FEATURE_RANGES.items():
        if key in features:
            value = features[key]
            whole = key not in ("fmin_hz", "fmax_hz")
            if not (_is_int(value) if whole else _is_number(value)) or not low <= value <= high:
                kind = "a whole number" if whole else "a number"
                return f"'features.{key}' must be {kind} in {low}..{high}, not {_shown(value)}"
    try:
        config = FeatureConfig.from_dict(features)
    except (TypeError, ValueError) as exc:
        return f"'features' is not a feature configuration ({exc})"
    if config.win_length > config.n_fft:
        return f"'features.win_length' ({config.win_length}) is longer than 'features.n_fft' ({config.n_fft})"
    if not config.fmin_hz < config.fmax_hz <= config.sample_rate / 2:
        return (f"'features' needs fmin_hz < fmax_hz <= sample_rate / 2, not {config.fmin_hz}, "
                f"{config.fmax_hz} at {config.sample_rate} Hz")
    return None


def _check_heads(card: dict) -> str | None:
    heads = card["heads"]
    if not isinstance(heads, dict):
        return f"'heads' must be an object (head name -> label names), not {_shown(heads)}"
    if "emotion" not in heads:
        return "names no 'emotion' head"
    for name, labels in heads.items():
        named = isinstance(labels, list) and len(labels) >= 2 and all(isinstance(x, str) and x for x in labels)
        if not named or len(set(labels)) != len(labels):
            return f"head '{name}' must list at least two distinct label names, not {_shown(labels)}"
    return None


def _check_weights(card: dict) -> str | None:
    weights = card.get("weights")
    if not isinstance(weights, dict):
        return f"needs a 'weights' object with file, sha256 and bytes, not {_shown(weights)}"
    name = weights.get("file")
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        return f"'weights.file' must name a file inside the checkpoint folder, not {_shown(name)}"
    sha = weights.get("sha256")
    if not isinstance(sha, str) or not SHA256_HEX.fullmatch(sha):
        return f"'weights.sha256' must be the 64 hex digits of the weights' SHA-256, not {_shown(sha)}"
    if not _is_int(weights.get("bytes")) or weights["bytes"] <= 0:
        return f"'weights.bytes' must be the weights' size in bytes, not {_shown(weights.get('bytes'))}"
    return None


def _check_extras(card: dict) -> str | None:
    """Optional fields the app reads: right type when present."""
    for key, kind in (("name", str), ("license", str), ("label_set", dict), ("metrics", dict), ("training", dict),
                      ("calibration", dict)):
        if key in card and not isinstance(card[key], kind):
            return f"'{key}' must be {'a string' if kind is str else 'an object'}, not {_shown(card[key])}"
    t = card.get("calibration", {}).get("temperature", 1.0)
    if not _is_number(t) or not 0.05 <= t <= 20:
        return f"'calibration.temperature' must be a number in 0.05..20, not {_shown(t)}"
    return None


def _check_encoder(card: dict) -> str | None:
    """A model on the pretrained encoder names it (digest, layers run) and uses exactly its front end."""
    arch = ARCHITECTURES.get(card["model"]["architecture"])
    if arch is None:
        return f"names architecture {_shown(card['model']['architecture'])}; known: {', '.join(sorted(ARCHITECTURES))}"
    if getattr(arch, "input_kind", "logmel") != "encoder":
        return None
    enc = card.get("encoder")
    if not isinstance(enc, dict) or not isinstance(enc.get("digest"), str) or not SHA256_HEX.fullmatch(enc["digest"]):
        return "needs an 'encoder' object with the 64-hex 'digest' of the pretrained encoder the model stands on"
    name = encoders.name_of(card)
    if name not in encoders.REGISTRY:
        return (f"'encoder.name' is {_shown(enc.get('name'))}, an encoder this installation does not know "
                f"(known: {', '.join(sorted(encoders.REGISTRY))})")
    info = encoders.info(name)
    layers = card["model"].get("hparams", {}).get("n_layers", info.n_layers)
    if not _is_int(layers) or not 1 <= layers <= info.n_layers:
        return f"'model.hparams.n_layers' must be a whole number in 1..{info.n_layers} ({name}), not {_shown(layers)}"
    tuned = card["model"].get("hparams", {}).get("tune_layers", 0)
    if tuned and not hasattr(arch, "start_from"):
        return f"'model.hparams.tune_layers': {card['model']['architecture']} fine-tunes no encoder blocks"
    if not _is_int(tuned) or not 0 <= tuned <= layers:
        return f"'model.hparams.tune_layers' must be a whole number in 0..n_layers ({layers}), not {_shown(tuned)}"
    if FeatureConfig.from_dict(card["features"]) != info.features:
        f = info.features
        return (f"'features' differ from the encoder's front end ({name}: {f.sample_rate // 1000} kHz, n_fft {f.n_fft}, "
                f"hop {f.hop_length}, {f.n_mels} mels); a model on the encoder must use exactly those")
    return None


def weights_path(directory, card: dict) -> Path:
    """The weights file a validated card names, confined to ``directory`` (symbolic links included)."""
    directory = Path(directory)
    path = directory / card["weights"]["file"]
    try:
        path.resolve().relative_to(directory.resolve())
    except ValueError:
        raise CheckpointError(f"checkpoint '{directory.name}': its weights file points outside the "
                              "checkpoint folder; refusing to read it") from None
    return path


def build_from_card(card: dict) -> SERModel:
    """The untrained model a card describes."""
    try:
        features = FeatureConfig.from_dict(card["features"])
        heads = {k: len(v) for k, v in card["heads"].items()}
        arch = ARCHITECTURES.get(card["model"]["architecture"])
        on_encoder = getattr(arch, "input_kind", "logmel") == "encoder"
        encoder = {"encoder": encoders.info(encoders.name_of(card))} if on_encoder else {}
        return build_model(card["model"]["architecture"], features.input_rows, heads,
                           input_frame_rate_hz=features.frame_rate_hz, **encoder, **card["model"].get("hparams", {}))
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, ZeroDivisionError) as exc:
        raise CheckpointError(f"the card does not describe a buildable model: {exc}") from None


def load_checkpoint(directory, device: str | torch.device = "cpu") -> tuple[SERModel, dict]:
    """Load a checkpoint folder into an eval-mode model on ``device``; returns ``(model, card)``."""
    directory = Path(directory)
    card = read_card(directory)
    state = _read_weights(directory, card)
    model = build_from_card(card)
    _check_fit(model.state_dict(), state, f"checkpoint '{directory.name}': {card['weights']['file']}")
    model.load_state_dict(state)
    return model.to(device).eval(), card


def _read_weights(directory: Path, card: dict) -> dict[str, torch.Tensor]:
    """The weights, after their size and SHA-256 match the card."""
    weights = weights_path(directory, card)
    label = f"checkpoint '{directory.name}': {card['weights']['file']}"
    if not weights.is_file():
        raise CheckpointError(f"{label} is missing")
    size, expected = weights.stat().st_size, card["weights"]
    if size != expected["bytes"]:
        raise CheckpointError(f"{label} has {size} bytes, the card says {expected['bytes']}: "
                              "the file is truncated or was replaced")
    if sha256_file(weights) != expected["sha256"]:
        raise CheckpointError(f"{label} does not match the SHA-256 in its card: the file is corrupt")
    try:
        return load_file(str(weights), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{label} is not a valid safetensors file ({exc})") from None


def _check_fit(own: dict, state: dict, label: str) -> None:
    """Raise unless ``state`` has exactly the tensor names and shapes of ``own``."""
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
        raise CheckpointError(f"{label} does not fit the model its card describes: " + "; ".join(parts))


def list_checkpoints(*folders) -> list[Path]:
    """Checkpoint folders (those holding a card) directly under each of ``folders``, sorted by name."""
    found = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_dir():
            found += [p for p in sorted(folder.iterdir()) if (p / CARD).is_file()]
    return found
