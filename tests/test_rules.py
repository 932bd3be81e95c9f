"""Issue 27 item 5: a rule both sides of the process boundary follow lives in one torch-free serdemo module that
the app and ``training`` both import: which stored labels a retraining may use (:mod:`serdemo.store_rules`), the
ETA table (:mod:`serdemo.eta`) and each corpus's file-name rule (:mod:`serdemo.corpus_names`), so a corpus the
adapters read is one the app's exports and retraining plan recognise too."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]


def test_an_emovo_clip_of_a_held_out_speaker_is_held_out_before_a_run(tmp_path):
    """The default checkpoint holds EMOVO's f1 out (its card's test speakers). ``origin_of`` knew EMO-DB's,
    RAVDESS's and nEMO's names only, so an uploaded EMOVO clip of f1 had no speaker and the plan let it
    train on a held-out speaker; it is now known by EMOVO's own rule, as the adapter reads it."""
    from serdemo.export import origin_of
    from serdemo.retrain_plan import retrain_plan
    from serdemo.store_rules import WHY_HELD_OUT

    card = json.loads((ROOT / "checkpoints" / "default" / "card.json").read_text())
    assert "emovo:f1" in card["training"]["speakers"]["test"]
    o = origin_of("uploads/dis-f1-b1.wav")
    assert (o.corpus, o.speaker, o.gender, o.naturalness) == ("emovo", "emovo:f1", "female", "acted")
    assert origin_of("RAB-M3-N2.flac @ 1.20 s").speaker == "emovo:m3"  # the adapter reads names lower-cased too
    audio = tmp_path / "clip.wav"
    sf.write(audio, np.zeros(1600, np.float32), 16000)
    rows = [SimpleNamespace(clip="a" * 64, path=audio, label="disgust", origin=o),
            SimpleNamespace(clip="b" * 64, path=audio, label="happy", origin=origin_of("mine.wav"))]
    plan = retrain_plan(rows, card, card["training"]["config"]["corpora"])
    assert [c["why"] for c in plan["clips"]] == [WHY_HELD_OUT, ""]
    assert plan["left_out"] == {WHY_HELD_OUT: 1} and plan["training"] == 1


def test_the_adapters_and_the_exports_read_names_by_the_same_rules(tmp_path):
    """Every corpus rule the exports use is the adapters' own object, and a corpus folder read by its adapter
    gives each clip the corpus, speaker and gender ``origin_of`` gives its file name."""
    from serdemo import corpus_names as N
    from serdemo import export
    from training import corpora

    for name in ("EMODB_NAME", "RAVDESS_NAME", "NEMO_NAME", "EMOVO_NAME", "EMODB_MALE", "EMODB_FEMALE"):
        assert getattr(corpora, name) is getattr(N, name)
    assert {r.corpus for r in N.NAME_RULES} == {"emodb", "ravdess", "nemo", "emovo"}
    wave = np.zeros(1600, np.float32)
    for rel in ("f1/dis-f1-b1.wav", "m2/gio-m2-l3.wav", "f3/NEU-F3-D1.wav"):
        (tmp_path / "emovo" / rel).parent.mkdir(parents=True, exist_ok=True)
        sf.write(tmp_path / "emovo" / rel, wave, 16000)
    (tmp_path / "emodb" / "wav").mkdir(parents=True)
    for name in ("03a01Fa.wav", "16b10Lb.wav"):
        sf.write(tmp_path / "emodb" / "wav" / name, wave, 16000)
    (tmp_path / "ravdess" / "Actor_12").mkdir(parents=True)
    sf.write(tmp_path / "ravdess" / "Actor_12" / "03-01-05-01-01-01-12.wav", wave, 16000)
    scans = [corpora.scan_emovo(tmp_path / "emovo"), corpora.scan_emodb(tmp_path / "emodb"),
             corpora.scan_ravdess(tmp_path / "ravdess")]
    utts = [u for s in scans for u in s.utterances]
    assert len(utts) == 6 and not [p for s in scans for p in s.problems]
    for u in utts:
        o = export.origin_of(Path(u.path).name)
        assert (o.corpus, o.speaker, o.gender) == (u.corpus, u.speaker, u.gender), u.path


def test_which_stored_labels_train_is_one_rule_for_the_run_and_the_plan():
    """The reasons (and their order) are :mod:`serdemo.store_rules`'; neither ``training.data``'s store report
    nor the app's plan words them itself any more."""
    from serdemo import retrain, store_rules as R

    assert R.why_left_out("ekman7", False, False, True, True) == "label not in the ekman7 label set"
    assert R.why_left_out("ekman7", True, False, True, True) == R.WHY_UNREADABLE
    assert R.why_left_out("ekman7", True, True, True, True) == R.WHY_HELD_OUT
    asked = []
    assert R.why_left_out("ekman7", True, True, True, lambda: asked.append(1)) == R.WHY_HELD_OUT and not asked
    assert R.why_left_out("ekman7", True, True, False, lambda: True) == R.WHY_COPY
    assert R.why_left_out("ekman7", True, True, False, False) == ""
    assert retrain.WHY_SHORT is R.WHY_SHORT and retrain.WHY_HELD_OUT == R.WHY_HELD_OUT  # old import path kept
    import ast

    for path in (ROOT / "training" / "data.py", ROOT / "serdemo" / "retrain_plan.py", ROOT / "serdemo" / "retrain.py"):
        tree = ast.parse(path.read_text())
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not strings & {R.WHY_UNREADABLE, R.WHY_HELD_OUT, R.WHY_COPY, " label set"}, path
    assert "why_left_out" in (ROOT / "training" / "data.py").read_text()


def test_the_eta_table_is_one_table_and_torch_free():
    """``training.fit`` no longer imports the app's subprocess manager for one constant; the app, the trainer and
    the closed-form fitter read the same figures, from a module that imports neither torch nor Gradio."""
    import ast

    from serdemo import eta, retrain
    from training import fit, probe_fit

    assert fit.FIRST_GUESS_S is eta.FIRST_GUESS_S is retrain.FIRST_GUESS_S
    assert fit.ENCODE_S_PER_CLIP == eta.ENCODE_S_PER_CLIP and probe_fit.PROBE_FIT_S == eta.PROBE_FIT_S
    tree = ast.parse((ROOT / "training" / "fit.py").read_text())
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "serdemo.retrain"]
    code = ("import sys, serdemo.eta, serdemo.store_rules, serdemo.corpus_names; "
            "print(sorted(m for m in ('torch', 'gradio', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
