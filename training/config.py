"""The training configuration, declared once: :class:`FitConfig`.

Every field carries its help text; the ``python -m training.fit`` command line is generated from
the fields (``--batch-size`` for ``batch_size``; booleans as ``--vtlp/--no-vtlp``; lists as
``--augment noise,speed`` or repeated flags; dicts as JSON). ``--config RECIPE.yaml`` loads a recipe
and any flag given on the command line overrides it. A flag that is not given is absent from the
parsed arguments (``argparse.SUPPRESS``), never ``None``, so ``--fold none`` really means "no test
fold". Unknown recipe keys and values of the wrong type are errors.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from serdemo import encoders
from serdemo.labels import AUX_HEADS, LABEL_SETS
from serdemo.models import ARCHITECTURES, check_settings
from serdemo.models.base import NORM_MODES

SPLITS = ("speakers", "corpus", "loso", "session")
WAVE_AUGMENTERS = ("noise", "speed", "loudness", "shift")  # nlpaug augmenters (training.augment.WaveAugment)


class ConfigError(ValueError):
    """A recipe or a flag the trainer cannot run with; the message says which setting and why."""


def setting(default, help: str, *, choices=None, flags=(), metavar=None):
    """A :class:`FitConfig` field with the metadata the command line is generated from."""
    meta = {"help": help, "choices": choices, "flags": tuple(flags), "metavar": metavar}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class FitConfig:
    """One training run. Field names are the recipe keys (``training/configs/*.yaml``)."""

    name: str = setting("model", "run name; written into the card")
    out: str = setting("", "checkpoint folder to write (default: checkpoints/<name>)")
    model: str = setting("multitask", "architecture", choices=tuple(ARCHITECTURES))
    hparams: dict = setting({}, 'architecture settings as JSON, e.g. \'{"hidden": 64}\'')
    encoder: str = setting(encoders.DEFAULT, "pretrained speech encoder under the model (models on the encoder)",
                           choices=tuple(encoders.REGISTRY))
    corpora: list = setting(["emodb=../shared/data/emodb", "ravdess=../shared/data/ravdess"],
                            "corpora to aggregate, KIND=PATH (repeat the flag or separate with commas)",
                            flags=("--corpus", "--corpora"), metavar="KIND=PATH")
    label_set: str = setting("ekman7", "label set the emotion head predicts", choices=tuple(LABEL_SETS))
    aux_heads: list = setting(["gender"], "auxiliary heads, e.g. gender,naturalness ('' for none)",
                              choices=tuple(AUX_HEADS))
    aux_weight: float = setting(0.3, "weight of each auxiliary head's loss")
    split: str = setting("speakers", "speaker-independent split scheme", choices=SPLITS)
    n_folds: int = setting(4, "number of speaker folds")
    fold: int | None = setting(0, "test fold (its speakers are never trained on), or 'none' for no "
                                            "test fold; the next fold is always the dev set", metavar="K|none")
    seed: int = setting(0, "seed of the split, the initial weights and the data order (augmentation and "
                           "dropout add the DDP rank)")
    model_seed: int | None = setting(None, "seed of the initial weights, data order, augmentation and dropout "
                                           "alone, keeping the split of --seed ('none': the same as --seed); "
                                           "ensemble members differ only in it", metavar="N|none")
    epochs: int = setting(40, "epochs")
    batch_size: int = setting(32, "examples per optimiser step, over all DDP ranks together")
    lr: float = setting(2e-3, "peak learning rate (AdamW; one epoch of warm-up, then cosine)")
    weight_decay: float = setting(1e-2, "AdamW weight decay")
    encoder_lr: float = setting(0.1, "fine-tuning (hparams tune_layers > 0): the tuned encoder blocks' learning "
                                     "rate as a fraction of lr")
    patience: int = setting(10, "early stop after this many epochs without a better dev UA")
    vtlp: bool = setting(True, "VTLP on the training power spectra, one alpha per example")
    vtlp_low: float = setting(0.9, "lowest VTLP alpha")
    vtlp_high: float = setting(1.1, "highest VTLP alpha")
    vtlp_dev: bool = setting(False, "warp the dev clips too when selecting the best epoch")
    specaug: bool = setting(True, "SpecAugment: one frequency and one time mask per example")
    corpus_classes: bool = setting(False, "each training clip's emotion softmax covers only the classes its "
                                          "corpus has, so a class one corpus lacks is never learnt as 'not this "
                                          "corpus' (aggregated corpora with different label sets)")
    mixup: bool = setting(False, "mixup: blend each example with another of its batch (Zhang et al. 2018)")
    mixup_alpha: float = setting(0.2, "mixup weight ~ Beta(alpha, alpha)")
    augment: list = setting([], "nlpaug waveform augmenters", choices=WAVE_AUGMENTERS)
    augment_p: float = setting(0.3, "probability of each waveform augmenter per clip")
    norm: str = setting("utterance", "input normalisation", choices=tuple(NORM_MODES))
    max_duration_s: float = setting(20.0, "clips are cut to this many seconds")
    limit_per_corpus: int = setting(0, "use only the first N utterances of each corpus, speaker-balanced (tests)")
    max_steps: int = setting(0, "stop each epoch after N steps; 0: no limit (tests)")
    amp: bool = setting(True, "mixed precision for the model on CUDA (the front end stays fp32)")
    workers: int = setting(2, "threads decoding audio")
    cache_dir: str = setting("", "decoded-audio cache (default: $SERDEMO_CACHE/waves)")
    features: dict = setting({}, "front-end settings as JSON (serdemo.features.FeatureConfig)")
    init: str = setting("", "fine-tune: start from this checkpoint's weights (global norm statistics are "
                            "recomputed on the new training set)")
    trace: bool = setting(False, "write OUT/trace-rank<R>.jsonl: each step's example paths, VTLP alphas and loss")

    def __post_init__(self):
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce(f, getattr(self, f.name)))
        if not self.out:
            self.out = f"checkpoints/{self.name}"
        for f in dataclasses.fields(self):
            allowed = f.metadata.get("choices")
            value = getattr(self, f.name)
            values = value if isinstance(value, list) else [value]
            bad = [v for v in values if allowed and v not in allowed]
            if bad:
                raise ConfigError(f"{f.name}: {', '.join(map(repr, bad))} is not one of {', '.join(allowed)}")
        if self.fold is not None and not 0 <= self.fold < max(self.n_folds, 1) and self.split == "speakers":
            raise ConfigError(f"fold: {self.fold} is out of range 0..{self.n_folds - 1}")
        if not 0 < self.vtlp_low <= self.vtlp_high:
            raise ConfigError(f"vtlp_low/vtlp_high: need 0 < low <= high, got {self.vtlp_low}, {self.vtlp_high}")
        for name in ("epochs", "batch_size", "n_folds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}: must be at least 1, got {getattr(self, name)}")
        try:
            check_settings(self.model, self.hparams)
        except ValueError as exc:
            raise ConfigError(f"hparams: {exc}") from None
        if self.mixup and self.mixup_alpha <= 0:
            raise ConfigError(f"mixup_alpha: must be positive, got {self.mixup_alpha}")

    # ------------------------------------------------------------------ recipes
    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "FitConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown settings {unknown}; known: {sorted(known)}")
        return cls(**data)

    @classmethod
    def from_card(cls, config: dict) -> "FitConfig":
        """The config a checkpoint card records, with every setting filled in: a card written before a
        setting existed was trained with that setting's default."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in config.items() if k in known})

    @classmethod
    def from_yaml(cls, path) -> "FitConfig":
        return cls.from_dict(load_recipe(path), str(path))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------- types
def _hints() -> dict:
    return typing.get_type_hints(FitConfig)


def _base_type(f: dataclasses.Field):
    """-> (type, optional) for a field: ``int | None`` gives ``(int, True)``."""
    tp = _hints()[f.name]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        return next(a for a in args if a is not type(None)), True
    return (typing.get_origin(tp) or tp), False


def _split_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def coerce(f: dataclasses.Field, value):
    """``value`` (from a recipe, a flag, or code) as the field's type; :class:`ConfigError` if it is not one."""
    tp, optional = _base_type(f)
    if value is None or (optional and isinstance(value, str) and value.strip().lower() == "none"):
        if optional:
            return None
        raise ConfigError(f"{f.name}: needs a {tp.__name__}, got nothing")
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no"):
                return value.lower() in ("true", "yes")
            raise TypeError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise TypeError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if tp is str:
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise TypeError
            return str(value)
        if tp is list:
            if isinstance(value, str):
                return _split_list(value)
            if not isinstance(value, (list, tuple)):
                raise TypeError
            return [str(v) for v in value]
        if tp is dict:
            if isinstance(value, str):
                value = json.loads(value)
            if not isinstance(value, dict):
                raise TypeError
            return dict(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{f.name}: {value!r} is not a {'list' if tp is list else tp.__name__}"
                          + (" (or 'none')" if optional else "") + (f" ({exc})" if str(exc) else "")) from None
    raise ConfigError(f"{f.name}: unsupported type {tp}")  # pragma: no cover - a field of a new type


def load_recipe(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--config: {path} does not exist")
    data = yaml.safe_load(path.read_text())
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe is a mapping of settings, got {type(data).__name__}")
    return data


# ---------------------------------------------------------------------- the command line
class _ListAction(argparse.Action):
    """``--x a,b`` or ``--x a --x b``: the first use on the command line replaces the recipe's list."""

    def __call__(self, parser, namespace, values, option_string=None):
        current = getattr(namespace, self.dest, None)
        items = _split_list(values)
        setattr(namespace, self.dest, (current or []) + items)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    """The ``python -m training.fit`` parser, one option per :class:`FitConfig` field."""
    p = argparse.ArgumentParser(prog="python -m training.fit", description=description,
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                argument_default=argparse.SUPPRESS)
    p.add_argument("--config", metavar="RECIPE.yaml", help="recipe (training/configs/*.yaml); flags override it")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last (weights, optimiser, RNG state)")
    p.add_argument("--print-config", action="store_true", help="print the resolved recipe as YAML and exit")
    for f in dataclasses.fields(FitConfig):
        meta = f.metadata
        tp, optional = _base_type(f)
        flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        shown = "none" if default is None else (",".join(default) if isinstance(default, list) else default)
        help_text = meta["help"]
        if "default" not in help_text:
            help_text += f" (default: {json.dumps(shown) if isinstance(shown, dict) else shown})"
        help_text = help_text.replace("%", "%%")
        kw = {"dest": f.name, "help": help_text}
        if meta.get("metavar"):
            kw["metavar"] = meta["metavar"]
        if tp is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif tp is list:
            if meta["choices"] and "metavar" not in kw:
                kw["metavar"] = ",".join(meta["choices"])
            p.add_argument(*flags, action=_ListAction, **kw)
        elif tp is dict:
            p.add_argument(*flags, type=_json_dict, metavar=kw.pop("metavar", "JSON"), **kw)
        else:
            if meta["choices"]:
                kw["choices"] = meta["choices"]
            p.add_argument(*flags, type=_none_or(tp) if optional else tp, **kw)
    return p


def _json_dict(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("needs a JSON object, e.g. '{\"hidden\": 64}'")
    return value


def _none_or(tp):
    def parse(text: str):
        return None if text.strip().lower() == "none" else tp(text)

    parse.__name__ = tp.__name__
    return parse


def parse_cli(argv=None, description: str = "") -> tuple[FitConfig, argparse.Namespace]:
    """-> (config, the command line's run options: ``resume``, ``print_config``).

    Precedence: the dataclass defaults, then the recipe (``--config``), then the flags given.
    """
    parser = build_parser(description)
    args = parser.parse_args(argv)
    given = dict(vars(args))
    run = argparse.Namespace(resume=given.pop("resume", False), print_config=given.pop("print_config", False))
    recipe = given.pop("config", None)
    try:
        values = load_recipe(recipe) if recipe else {}
        values.update(given)
        cfg = FitConfig.from_dict(values, recipe or "command line")
    except ConfigError as exc:
        parser.error(str(exc))
    return cfg, run
