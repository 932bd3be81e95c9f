"""``python -m serdemo.score``: batch scoring of folders, files and manifests (issue 25 item 2), and
``serdemo.csvsafe``. Real corpus clips from ../shared/data (a handful), one Predictor for the module."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import EMODB, RAVDESS, ROOT, SR, tone, write
from serdemo import score
from serdemo.csvsafe import csv_text, safe_cell, write_csv

CLIPS = [RAVDESS / "Actor_02" / "03-01-05-01-01-01-02.flac", RAVDESS / "Actor_02" / "03-01-03-02-02-01-02.flac",
         RAVDESS / "Actor_03" / "03-01-04-01-01-02-03.flac", EMODB / "wav" / "03a01Fa.wav",
         EMODB / "wav" / "03a01Nc.wav"]


@pytest.fixture(scope="module")
def clips() -> list[Path]:
    missing = [c for c in CLIPS if not c.exists()]
    if missing:
        pytest.skip(f"shared corpus files not found: {missing[0]}")
    return CLIPS


@pytest.fixture(scope="module")
def predictor():
    from serdemo.inference import Predictor

    return Predictor.from_checkpoint(score.DEFAULT_CHECKPOINT)


@pytest.fixture(scope="module")
def scorer(predictor):
    return score.Scorer(predictor=predictor)


def run(argv, scorer, capsys=None):
    rc = score.main([str(a) for a in argv], scorer=scorer)
    err = capsys.readouterr().err if capsys is not None else ""
    return rc, err


def read(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def probs(row, classes) -> np.ndarray:
    return np.array([float(row[f"p_{c}"]) for c in classes])


def linked(folder: Path, clips, names=None) -> list[Path]:
    """Links to corpus clips in ``folder`` (nothing copied)."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i, c in enumerate(clips):
        dst = folder / (names[i] if names else c.name)
        dst.symlink_to(c)
        out.append(dst)
    return out


# ----------------------------------------------------------------------------- csvsafe
def test_safe_cell_neutralises_formulas_only_in_strings():
    for bad in ("=SUM(A1)", "+1", "-2", "@cmd", "\tx", "\rx", "=HYPERLINK(\"http://x\")"):
        assert safe_cell(bad) == "'" + bad
    for fine in ("neutral", "a=b", "03a01Fa.wav", "", "'=already"):
        assert safe_cell(fine) == fine
    assert safe_cell(-0.5) == -0.5 and safe_cell(-3) == -3 and safe_cell(None) is None
    text = csv_text(["name", "x"], [{"name": "=1+2", "x": -0.25}])
    assert text.splitlines()[1] == "'=1+2,-0.25"


def test_write_csv_is_atomic_and_streams(tmp_path):
    out = tmp_path / "t.csv"
    write_csv(out, ["a"], [{"a": "old"}])

    def rows():
        yield {"a": "new"}
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError):
        write_csv(out, ["a"], rows())
    assert read(out) == [{"a": "old"}]  # the old file, whole
    assert [p.name for p in tmp_path.iterdir()] == ["t.csv"]  # no temporary left behind


# ----------------------------------------------------------------------------- scoring
def test_one_clip_equals_predictor_predict(tmp_path, clips, predictor, scorer, capsys):
    out = tmp_path / "one.csv"
    rc, err = run([clips[0], "--out", out], scorer, capsys)
    assert rc == 0, err
    (row,) = read(out)
    ref = predictor.predict(str(clips[0]))
    classes = list(predictor.heads["emotion"])
    want = np.array([ref.probabilities["emotion"][c] for c in classes])
    assert np.allclose(probs(row, classes), want, atol=1e-5)
    assert row["label"] == ref.label() and abs(float(row["confidence"]) - ref.confidence()) < 1e-5
    assert row["status"] == "ok" and row["voice_clips"] == "0" and row["path"] == str(clips[0])
    assert list(row)[-2:] == ["voice_clips", "status"] and [k for k in row if k.startswith("p_")] == \
        [f"p_{c}" for c in classes]


def test_batches_equal_clips_alone_in_float32(clips, predictor, scorer):
    """Clips of different lengths and rates scored in one sorted batch read as if alone (float32 encoder;
    in bfloat16 the batch's shape moves a probability by up to ~3e-3, the same batches by nothing)."""
    bf16 = predictor.frontend.bf16
    predictor.frontend.bf16 = False
    try:
        rows = {r["index"]: r for r in scorer.score([(i, str(c)) for i, c in enumerate(clips)])}
        classes = scorer.classes
        for i, c in enumerate(clips):
            ref = predictor.predict(str(c))
            assert np.allclose(rows[i]["probs"], [ref.probabilities["emotion"][k] for k in classes], atol=1e-5)
    finally:
        predictor.frontend.bf16 = bf16


def test_manifest_columns_kept_and_paths_relative_to_it(tmp_path, clips, scorer, capsys):
    sub = tmp_path / "lists"
    sub.mkdir()
    manifest = sub / "m.csv"
    rel = [os.path.relpath(c, sub) for c in clips[:3]]
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["speaker", "path", "label", "note"])
        w.writerow(["02", rel[0], "angry", "=HYPERLINK(\"http://evil\")"])
        w.writerow(["02", rel[1], "happy", "-1"])
        w.writerow(["03", rel[2], "sad", "plain"])
    out = tmp_path / "out.csv"
    rc, err = run([manifest, "--out", out], scorer, capsys)
    assert rc == 0, err
    rows = read(out)
    assert list(rows[0])[:5] == ["path", "speaker", "input_label", "note", "label"]
    assert [r["path"] for r in rows] == rel  # as written in the manifest, in its order
    assert [r["speaker"] for r in rows] == ["02", "02", "03"]
    assert [r["input_label"] for r in rows] == ["angry", "happy", "sad"]
    assert rows[0]["note"] == "'=HYPERLINK(\"http://evil\")" and rows[1]["note"] == "'-1"
    assert all(r["status"] == "ok" and r["label"] for r in rows)


def test_broken_files_get_error_rows_and_the_rest_is_scored(tmp_path, clips, scorer, capsys):
    folder = tmp_path / "in"
    linked(folder, clips[:2])
    (folder / "notaudio.wav").write_bytes(b"this is not audio at all" * 20)
    good = (folder / clips[0].name).read_bytes()
    (folder / "sub").mkdir()
    write(folder / "sub" / "truncated.wav", tone(220, 1.0))
    data = (folder / "sub" / "truncated.wav").read_bytes()
    (folder / "sub" / "truncated.wav").write_bytes(data[:44])  # header only: samples promised, none follow
    (folder / "sub" / "ignored.txt").write_text("not an audio extension")
    assert good
    manifest = tmp_path / "m.csv"
    manifest.write_text("path\nmissing.flac\n\n")
    out = tmp_path / "out.csv"
    rc, err = run([folder, manifest, "--out", out], scorer, capsys)
    assert rc == 1
    rows = {Path(r["path"]).name: r for r in read(out)}
    assert set(rows) == {clips[0].name, clips[1].name, "notaudio.wav", "truncated.wav", "missing.flac"}
    assert rows[clips[0].name]["status"] == rows[clips[1].name]["status"] == "ok"
    for name in ("notaudio.wav", "truncated.wav", "missing.flac"):
        assert rows[name]["status"].startswith("error: "), rows[name]
        assert str(tmp_path) not in rows[name]["status"] and name in rows[name]["status"]
        assert rows[name]["label"] == "" and rows[name]["p_neutral"] == ""
    assert "2 ok, 0 refused, 3 errors" in err


def test_tone_silence_short_and_long_are_refused(tmp_path, scorer, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    write(folder / "tone.wav", tone(440, 2.0))
    write(folder / "silence.wav", np.zeros(SR, np.float32))
    write(folder / "short.wav", tone(300, 0.1))
    write(folder / "long.wav", tone(300, 3.0))
    out = tmp_path / "out.csv"
    rc, err = run([folder, "--out", out, "--max-duration", "2.5"], scorer, capsys)
    assert rc == 0, err
    rows = {Path(r["path"]).name: r["status"] for r in read(out)}
    assert rows["tone.wav"].startswith("refused: no speech")
    assert rows["silence.wav"].startswith("refused: ") and "silence" in rows["silence.wav"]
    assert rows["short.wav"].startswith("refused: ") and "ms long" in rows["short.wav"]
    assert rows["long.wav"].startswith("refused: ") and "lasts" in rows["long.wav"]
    assert str(tmp_path) not in "".join(rows.values())


def test_formula_looking_names_are_neutralised(tmp_path, clips, scorer, capsys):
    folder = tmp_path / "in"
    names = ["=cmd.flac", "+1.flac", "-2.wav"]
    linked(folder, [clips[0], clips[1], clips[3]], names)
    out = tmp_path / "out.csv"
    rc, err = run([*(folder / n for n in names), "--out", out], scorer, capsys)
    assert rc == 0, err
    text = out.read_text()
    for n in names:
        assert f"'{folder / n}" not in text  # the folder is first: nothing to neutralise in a full path
    os.chdir(folder)
    try:
        rc, err = run(["--out", out, "--", *names], scorer, capsys)  # "--": -2.wav is a name, not a flag
    finally:
        os.chdir(ROOT)
    assert rc == 0, err
    rows = read(out)
    assert [r["path"] for r in rows] == ["'" + n for n in names]
    assert all(r["status"] == "ok" for r in rows)
    assert all(float(r[k]) >= 0 for r in rows for k in r if k.startswith("p_"))


def test_voice_by_adapts_grouped_clips_only(tmp_path, clips, predictor, capsys):
    from serdemo.inference import Predictor

    if not hasattr(Predictor, "predict_voice"):
        pytest.skip("this Predictor has no voice adaptation yet")
    voiced = adapting_scorer(predictor)
    manifest = tmp_path / "m.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "speaker"])
        for c, spk in zip(clips, ["02", "", "02", "", "03"]):
            w.writerow([str(c), spk])
    plain, grouped = tmp_path / "plain.csv", tmp_path / "grouped.csv"
    assert run([manifest, "--out", plain], voiced, capsys)[0] == 0
    assert run([manifest, "--out", grouped, "--voice-by", "speaker"], voiced, capsys)[0] == 0
    a, b = read(plain), read(grouped)
    classes = voiced.classes
    assert [r["path"] for r in a] == [r["path"] for r in b] == [str(c) for c in clips]
    for ra, rb in zip(a, b):
        if rb["speaker"]:
            assert int(rb["voice_clips"]) == (2 if rb["speaker"] == "02" else 1)
            assert not np.allclose(probs(ra, classes), probs(rb, classes), atol=1e-4)
        else:  # clip by clip in both runs
            assert rb["voice_clips"] == "0"
            assert np.allclose(probs(ra, classes), probs(rb, classes), atol=1e-5)


def adapting_scorer(predictor):
    """The default probe as a voice-adapting one (voice='mean', tau 1): its weights, a fresh Predictor
    around them, the shared encoder. Float32 encoder, so a clip's row does not depend on its batch."""
    import copy

    from serdemo.checkpoint import build_from_card
    from serdemo.inference import Predictor

    card = copy.deepcopy(predictor.card)
    card["model"]["hparams"].update(voice="mean", voice_tau=1.0)
    model = build_from_card(card)
    result = model.load_state_dict(predictor.model.state_dict(), strict=False)
    assert not result.unexpected_keys and all(k.startswith(("voice_", "class_offsets")) for k in result.missing_keys)
    p = Predictor(model, card, "cpu", encoder=predictor.frontend.encoder)
    p.frontend.bf16 = False
    assert p.adapts
    return score.Scorer(predictor=p)


# ----------------------------------------------------------------------------- usage errors
def cli(*args, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-m", "serdemo.score", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=120)


def test_usage_errors_exit_2_before_any_work(tmp_path, clips):
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"path,speaker\n{clips[0]},02\n")
    out = tmp_path / "out.csv"
    r = cli(manifest, "--out", out, "--voice-by", "actor")
    assert r.returncode == 2 and "no 'actor' column" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and not out.exists()
    r = cli(manifest, "--out", out, "--bogus")
    assert r.returncode == 2 and "--bogus" in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_usage_errors_in_process(tmp_path, clips, scorer, capsys):
    out = tmp_path / "out.csv"
    nopath = tmp_path / "nopath.csv"
    nopath.write_text("file,speaker\na.wav,1\n")
    for argv, words in [([tmp_path / "nowhere", "--out", out], "input not found"),
                        ([nopath, "--out", out], "no 'path' column"),
                        ([clips[0], "--out", out, "--voice-by", "speaker"], "needs a CSV manifest"),
                        ([clips[0], "--out", tmp_path / "no" / "out.csv"], "does not exist"),
                        ([clips[0], "--out", out, "--workers", "0"], "at least 1")]:
        rc, err = run(argv, scorer, capsys)
        assert rc == 2 and words in err and "Traceback" not in err, (argv, err)
    assert not out.exists()


def test_worker_processes_give_the_same_rows(tmp_path, clips, scorer, capsys):
    """Two spawned workers, each with its own Predictor, against this process's: same tasks, same rows."""
    folder = tmp_path / "in"
    linked(folder, clips[:3])
    (folder / "broken.wav").write_bytes(b"RIFF0000WAVEjunk")
    a, b = tmp_path / "a.csv", tmp_path / "b.csv"
    assert run([folder, "--out", a, "--task-files", "2"], scorer, capsys)[0] == 1
    r = cli(folder, "--out", b, "--workers", "2", "--task-files", "2")
    assert r.returncode == 1, r.stderr
    ra, rb = read(a), read(b)
    assert [r["path"] for r in ra] == [r["path"] for r in rb] and [r["status"] for r in ra] == [r["status"] for r in rb]
    classes = scorer.classes
    for x, y in zip(ra, rb):
        if x["status"] == "ok":
            assert np.allclose(probs(x, classes), probs(y, classes), atol=1e-5)
