"""``python -m serdemo.timeline --engine ray`` (issue 28): a folder's recordings analysed on a local Ray
(2 CPUs, no cluster) give the files the local engine writes, and a broken file its report line."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import soundfile as sf

from conftest import RAVDESS, SR
from serdemo import timeline_cli

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def recordings(tmp_path_factory):
    """Three recordings of real speech (RAVDESS clips of two actors with 0.8-s pauses) and a broken file."""
    from serdemo.audio import load_audio

    clips = sorted((RAVDESS / "Actor_04").glob("*.flac"))[:5] + sorted((RAVDESS / "Actor_05").glob("*.flac"))[:3]
    if len(clips) < 8:
        pytest.skip("shared RAVDESS clips not found")
    folder = tmp_path_factory.mktemp("recordings")
    pause = np.zeros(int(0.8 * SR), np.float32)
    for name, part in (("a", clips[:3]), ("b", clips[3:5]), ("c", clips[5:])):
        sf.write(folder / f"{name}.wav", np.concatenate([x for c in part for x in (load_audio(c), pause)]), SR)
    (folder / "broken.flac").write_bytes(b"fLaC but nothing after it")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def segments(path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_ray_timelines_equal_local_ones(tmp_path, recordings, local_ray, capsys):
    local, remote = tmp_path / "local", tmp_path / "ray"
    files = [str(p) for p in recordings]
    assert timeline_cli.main([*files, "--out", str(local), "--jobs", "1"]) == 1
    capsys.readouterr()
    assert timeline_cli.main([*files, "--out", str(remote), "--engine", "ray", "--jobs", "2"]) == 1
    err = capsys.readouterr().err
    assert "broken.flac: skipped: " in err and str(tmp_path) not in err
    names = sorted(p.name for p in local.iterdir())
    assert names == sorted(p.name for p in remote.iterdir())
    assert names == sorted(f"{s}{ext}" for s in "abc" for ext in (".csv", ".json", ".labels.txt"))
    for stem in "abc":
        a, b = segments(local / f"{stem}.csv"), segments(remote / f"{stem}.csv")
        assert len(a) == len(b) >= 2
        for x, y in zip(a, b):
            assert x.keys() == y.keys()
            for k in x:
                try:
                    assert abs(float(x[k]) - float(y[k])) <= 1e-5, (stem, k)
                except ValueError:
                    assert x[k] == y[k], (stem, k)
        ja, jb = (json.loads((d / f"{stem}.json").read_text()) for d in (local, remote))
        assert ja["segments"] == jb["segments"] or np.allclose(
            [s[c] for s in ja["segments"] for c in ja["classes"]],
            [s[c] for s in jb["segments"] for c in jb["classes"]], atol=1e-5)
        assert len(ja["windows"]) == len(jb["windows"])
        assert (local / f"{stem}.labels.txt").read_text() == (remote / f"{stem}.labels.txt").read_text()


def test_address_needs_the_ray_engine(tmp_path, recordings, capsys):
    with pytest.raises(SystemExit) as exc:
        timeline_cli.main([str(recordings[0]), "--out", str(tmp_path), "--address", "auto"])
    assert exc.value.code == 2 and "--address needs --engine ray" in capsys.readouterr().err
