"""``python -m serdemo.score --engine ray`` (issue 28): a local Ray (2 CPUs, no cluster, no dashboard) gives
the rows the local engine gives, keeps a broken file's row, survives a worker that dies mid-run, and adapts
a voice's clips together whichever worker they would otherwise land on."""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np
import pytest

from conftest import EMODB, RAVDESS
from serdemo import score

ray = pytest.importorskip("ray")

CLIPS = [RAVDESS / "Actor_02" / "03-01-05-01-01-01-02.flac", RAVDESS / "Actor_02" / "03-01-03-02-02-01-02.flac",
         RAVDESS / "Actor_03" / "03-01-04-01-01-02-03.flac", RAVDESS / "Actor_03" / "03-01-01-01-01-01-03.flac",
         EMODB / "wav" / "03a01Fa.wav", EMODB / "wav" / "03a01Nc.wav"]


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        pytest.skip(f"shared corpus files not found: {missing[0]}")
    return CLIPS


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def scorer():
    return score.Scorer(score.DEFAULT_CHECKPOINT)


def read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def same_rows(a: list[dict], b: list[dict]) -> None:
    """The same rows, order aside; probabilities and confidence to 1e-5, every other cell equal."""
    a, b = sorted(a, key=lambda r: r["path"]), sorted(b, key=lambda r: r["path"])
    assert [r["path"] for r in a] == [r["path"] for r in b]
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if (k.startswith("p_") or k == "confidence") and x[k]:
                assert abs(float(x[k]) - float(y[k])) <= 1e-5, (x["path"], k, x[k], y[k])
            else:
                assert x[k] == y[k], (x["path"], k)


def folder_of(tmp_path, clips) -> Path:
    folder = tmp_path / "in"
    folder.mkdir()
    for c in clips:
        (folder / c.name).symlink_to(c)
    (folder / "broken.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEnot really audio")
    return folder


def test_an_address_nobody_answers_is_a_clear_error(tmp_path, clips, capsys):
    if ray.is_initialized():
        pytest.skip("Ray is already running in this process")
    rc = score.main([str(clips[0]), "--out", str(tmp_path / "o.csv"), "--engine", "ray", "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 2 and "no Ray cluster answers at 127.0.0.1:1" in err and "Traceback" not in err
    assert not ray.is_initialized() and not (tmp_path / "o.csv").exists()


def test_ray_gives_the_local_rows(tmp_path, clips, local_ray, scorer, capsys):
    folder = folder_of(tmp_path, clips)
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert score.main([str(folder), "--out", str(local), "--task-files", "2"], scorer=scorer) == 1
    assert score.main([str(folder), "--out", str(remote), "--task-files", "2", "--engine", "ray",
                       "--workers", "2"]) == 1
    err = capsys.readouterr().err
    rows = read(remote)
    assert len(rows) == len(clips) + 1 and "6 ok, 0 refused, 1 errors" in err
    broken = next(r for r in rows if r["path"].endswith("broken.wav"))
    assert broken["status"].startswith("error: ") and str(tmp_path) not in broken["status"]
    same_rows(read(local), rows)


def test_a_worker_that_dies_loses_and_doubles_nothing(tmp_path, clips, local_ray, scorer, monkeypatch):
    folder = folder_of(tmp_path, clips)
    flag = tmp_path / "die-once"
    flag.write_text("the first actor task to see this file deletes it and exits")
    monkeypatch.setenv("SERDEMO_TEST_DIE_ONCE", str(flag))
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    assert score.main([str(folder), "--out", str(remote), "--task-files", "2", "--engine", "ray",
                       "--workers", "2"]) == 1
    assert not flag.exists()  # a worker did die
    monkeypatch.delenv("SERDEMO_TEST_DIE_ONCE")
    assert score.main([str(folder), "--out", str(local), "--task-files", "2"], scorer=scorer) == 1
    rows = read(remote)
    assert sorted(r["path"] for r in rows) == sorted({r["path"] for r in rows})  # each file once
    same_rows(read(local), rows)


def test_voice_groups_are_adapted_together_across_workers(tmp_path, clips, local_ray, scorer):
    """Two voices interleaved in the manifest, one clip per task otherwise: with --voice-by each voice is one
    task, so Ray's actors give what one local worker gives (an adapting copy of the default probe)."""
    from serdemo.inference import Predictor

    if not hasattr(Predictor, "predict_voice"):
        pytest.skip("this Predictor has no voice adaptation yet")
    ckpt = adapting_checkpoint(tmp_path / "adapting", scorer.predictor)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        for c, spk in zip(clips, ["a", "b", "a", "b", "", "a"]):
            w.writerow([str(c), spk])
    local, remote = tmp_path / "local.csv", tmp_path / "ray.csv"
    common = [str(manifest), "--voice-by", "speaker", "--task-files", "1", "--checkpoint", str(ckpt)]
    assert score.main([*common, "--out", str(local)], scorer=score.Scorer(ckpt)) == 0
    assert score.main([*common, "--out", str(remote), "--engine", "ray", "--workers", "2"]) == 0
    rows = read(remote)
    assert [r["voice_clips"] for r in rows] == ["3", "2", "3", "2", "0", "3"]
    same_rows(read(local), rows)


def adapting_checkpoint(folder: Path, predictor) -> Path:
    """The default probe saved as a voice-adapting one (voice='mean', tau 1): a checkpoint on disk that
    Ray's actors load like any other."""
    import copy

    from serdemo.checkpoint import build_from_card, save_checkpoint

    card = copy.deepcopy(predictor.card)
    card["model"]["hparams"].update(voice="mean", voice_tau=1.0)
    model = build_from_card(card)
    model.load_state_dict(predictor.model.state_dict(), strict=False)
    return save_checkpoint(folder, model, card)


def test_no_ray_needed_for_the_local_engine():
    """The local engine never imports Ray (checked in a fresh interpreter)."""
    import subprocess
    import sys

    code = ("import sys, serdemo.score, serdemo.engines, serdemo.timeline_cli; "
            "assert 'ray' not in sys.modules, 'ray imported'; print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       cwd=Path(score.__file__).resolve().parents[1], env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr
