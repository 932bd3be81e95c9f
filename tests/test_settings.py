"""Each architecture declares its settings: a setting it does not have is refused, naming the ones it has, in a
recipe, on the training command line and in a checkpoint's card alike (a typo never trains or serves silently)."""

import json
import shutil
from pathlib import Path

import pytest

from serdemo.checkpoint import CheckpointError, load_checkpoint
from serdemo.models import ARCHITECTURES, build_model, check_settings, settings_of
from training.config import ConfigError, FitConfig, parse_cli

ROOT = Path(__file__).resolve().parents[1]


def test_a_misspelt_setting_is_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"localatt has no setting 'tune_layer' \(did you mean 'tune_layers'\?\); "
                                         r"its settings: n_layers, .*tune_layers"):
        build_model("localatt", 80, {"emotion": 4}, tune_layer=1)
    with pytest.raises(ValueError, match="probe has no setting 'voice_tua'.*fit-time options: C, shrinkage"):
        check_settings("probe", {"voice_tua": 3})
    # what every shipped recipe and card says is accepted
    for arch, cls in ARCHITECTURES.items():
        check_settings(arch, {k: None for k in settings_of(cls)} | {k: None for k in getattr(cls, "fit_options", ())})


def test_a_recipe_and_the_command_line_refuse_it(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nmodel: localatt\nhparams: {n_layers: 4, tune_layer: 1}\n")
    with pytest.raises(ConfigError, match="hparams: localatt has no setting 'tune_layer'"):
        FitConfig.from_yaml(recipe)
    with pytest.raises(SystemExit):
        parse_cli(["--model", "localatt", "--hparams", '{"hiden": 64}'])
    with pytest.raises(ConfigError, match="'hiden' \\(did you mean 'hidden'\\?\\)"):
        FitConfig(model="localatt", hparams={"hiden": 64})
    for path in sorted((ROOT / "training" / "configs").glob("*.yaml")):  # every shipped recipe still loads
        if not path.name.startswith("screen"):  # screens are lists of variants, read by training.evaluate
            FitConfig.from_yaml(path)


def test_a_card_with_an_unknown_setting_is_refused(tmp_path):
    ckpt = tmp_path / "localatt"
    shutil.copytree(ROOT / "checkpoints" / "localatt", ckpt)
    load_checkpoint(ckpt)  # as shipped
    card = json.loads((ckpt / "card.json").read_text())
    card["model"]["hparams"]["tune_layer"] = 1
    (ckpt / "card.json").write_text(json.dumps(card))
    with pytest.raises(CheckpointError, match="no setting 'tune_layer'.*tune_layers"):
        load_checkpoint(ckpt)
