"""Training on real clips: each architecture for one short epoch, resume, DDP with 2 CPU processes,
evaluation; the checkpoints load back through Predictor."""

import json
import os
import subprocess
import sys

import pytest

from serdemo.checkpoint import load_checkpoint
from serdemo.inference import Predictor
from tests.conftest import EMODB, RAVDESS, ROOT
from training import fit
from training.metrics import scores

pytestmark = pytest.mark.timeout(900)


def args(out, cache, *extra):
    return ["--corpus", f"emodb={EMODB}", "--corpus", f"ravdess={RAVDESS}", "--limit-per-corpus", "24",
            "--n-folds", "3", "--fold", "0", "--epochs", "1", "--batch-size", "8", "--max-steps", "2",
            "--out", str(out), "--cache-dir", str(cache), *extra]


@pytest.mark.parametrize("arch,heads", [("localatt", ""), ("cnnlstm", ""), ("multitask", "gender,naturalness")])
def test_one_short_epoch_per_architecture(tmp_path, arch, heads, emodb_clip):
    out = tmp_path / arch
    metrics = fit.main(args(out, tmp_path / "cache", "--model", arch, "--aux-heads", heads, "--label-set", "ekman7",
                            "--hparams", '{"hidden": 32}'))
    assert "test" in metrics and metrics["test"]["overall"]["n"] > 0
    model, card = load_checkpoint(out)
    assert card["model"]["architecture"] == arch
    assert set(card["training"]["speakers"]["train"]).isdisjoint(card["training"]["speakers"]["test"])
    assert card["training"]["file_list_sha256"] and card["training"]["seed"] == 0
    assert "CC BY-NC-SA 4.0" in card["license"]
    if arch == "multitask":
        # the corpora are all acted: naturalness cannot be learnt and is left out, with the reason
        assert set(card["heads"]) == {"emotion", "gender"}
        assert "naturalness" in card["training"]["untrained_heads"]
    pred = Predictor.from_checkpoint(out, device="cpu").predict(emodb_clip)
    assert abs(sum(pred.probabilities["emotion"].values()) - 1) < 1e-5


def test_resume_continues_from_last(tmp_path):
    out = tmp_path / "m"
    common = args(out, tmp_path / "cache", "--model", "localatt", "--hparams", '{"hidden": 16, "dense": 32}')
    fit.main(common)
    first = json.loads((out / "last" / "trainer.json").read_text())
    assert first["epoch"] == 0
    fit.main([*common[:common.index("--epochs")], "--epochs", "2", *common[common.index("--epochs") + 2:], "--resume"])
    second = json.loads((out / "last" / "trainer.json").read_text())
    assert second["epoch"] == 1 and len(second["history"]) == 2


def test_ddp_two_cpu_processes(tmp_path):
    out = tmp_path / "ddp"
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2", f"--master-port={port}", "-m", "training.fit",
           *args(out, tmp_path / "cache", "--model", "localatt", "--hparams", '{"hidden": 16, "dense": 32}')]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    model, card = load_checkpoint(out)
    assert card["training"]["history"][0]["epoch"] == 1


def test_vtlp_on_the_training_device_changes_features(tmp_path):
    cfg = fit.parse_args(args(tmp_path / "x", tmp_path / "cache", "--model", "localatt"))
    trainer = fit.Trainer(cfg)
    import torch
    from training.data import collate

    exs = trainer.train[:4]
    x, lens, _ = collate([trainer.cache.get(e.utt.path) for e in exs], exs, [])
    plain, frames = trainer.featurize(x, lens, warp=False)
    warped, frames2 = trainer.featurize(x, lens, warp=True, gen=torch.Generator().manual_seed(0))
    assert torch.equal(frames, frames2) and plain.shape == warped.shape
    assert not torch.allclose(plain, warped)


def test_metrics():
    s = scores([0, 0, 1, 1, 2, 2, 2, 2], [0, 1, 1, 1, 2, 2, 0, 0], ["a", "b", "c"])
    assert s["wa"] == pytest.approx(5 / 8)
    assert s["ua"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    assert s["confusion"] == [[1, 1, 0], [0, 2, 0], [2, 0, 2]]


def test_evaluate_cli_on_held_out_speakers(tmp_path):
    out = tmp_path / "m"
    fit.main(args(out, tmp_path / "cache", "--model", "localatt", "--hparams", '{"hidden": 16, "dense": 32}'))
    from training.evaluate import main as evaluate

    res = evaluate([str(out), "--data", f"emodb={EMODB}", "--speakers-from-card", "test", "--json", str(tmp_path / "r.json")])
    test_speakers = set(load_checkpoint(out)[1]["training"]["speakers"]["test"])
    from training.corpora import scan_emodb

    expected = [u for u in scan_emodb(EMODB).utterances if u.speaker in test_speakers and u.emotion != "boredom"]
    assert res["emodb"]["n"] == len(expected) > 0  # every clip of the held-out speakers, no other
    assert json.loads((tmp_path / "r.json").read_text())["overall"]["ua"] == res["overall"]["ua"]


def test_cross_validation_pools_every_speaker_once(tmp_path):
    import yaml

    from training.evaluate import cross_validate

    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "cv", "model": "localatt", "hparams": {"hidden": 16, "dense": 32},
        "corpora": [f"emodb={EMODB}"], "label_set": "emodb7", "aux_heads": [], "limit_per_corpus": 40,
        "epochs": 1, "max_steps": 1, "batch_size": 8, "cache_dir": str(tmp_path / "cache")}))
    cv = cross_validate(str(recipe), 3, tmp_path / "work")
    tested = [s for f in cv["folds"] for s in f["test_speakers"]]
    assert len(tested) == len(set(tested)) == 8  # each of the 8 EMO-DB speakers is tested exactly once
    assert cv["pooled"]["overall"]["n"] == 40


@pytest.mark.parametrize("name", ["noise", "speed", "loudness", "shift"])
def test_nlpaug_waveform_augmenters(name):
    import numpy as np

    from tests.conftest import harmonics
    from training.data import WaveAugment

    x = harmonics(150, 1.0)
    aug = WaveAugment([name], 16000, p=1.0, seed=0)
    y = aug(x)
    assert y.dtype == np.float32 and np.isfinite(y).all()
    assert not (len(y) == len(x) and np.allclose(y, x))  # it changed the clip
    if name == "speed":
        assert 0.85 * len(x) < len(y) < 1.15 * len(x)
    with pytest.raises(ValueError, match="unknown augmenters"):
        WaveAugment(["reverb"], 16000)
