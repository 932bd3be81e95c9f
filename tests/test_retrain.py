"""Retraining from the app (serdemo.retrain) under hostile use: a cool-down and a daily quota, a cancel that
stops the whole run, the base checkpoint's weights checked before anything starts, and a status that shows
no server path and no traceback. A stand-in interpreter plays training.fit / training.compare, so no
model is trained here."""

import json
import logging
import os
import shutil
import stat
import sys
import time
from pathlib import Path

import pytest

from serdemo.retrain import Retrainer, RetrainBusy, RetrainRefused, check_weights, user_reason
from tests.conftest import ROOT

FAKE = '''
import json, os, subprocess, sys, time
args = sys.argv[1:]
mode = os.environ.get("FAKE_RUN", "ok")
if args[:2] == ["-m", "training.fit"]:
    out = json.load(open(args[args.index("--config") + 1]))["out"]
    os.makedirs(out, exist_ok=True)
    progress = open(os.path.join(out, "progress.jsonl"), "a")
    progress.write(json.dumps({"event": "start", "epoch": 0, "epochs": 1, "step": 0, "total_steps": 2}) + "\\n")
    progress.flush()
    if mode == "fail":
        print("Traceback (most recent call last):")
        print(f'  File "{os.getcwd()}/training/fit.py", line 455, in main')
        print("training.corpora.CorpusError: emodb: /srv/secret/corpora/emodb is not a folder")
        progress.write(json.dumps({"event": "error", "message":
                                   "CorpusError: emodb: /srv/secret/corpora/emodb is not a folder"}) + "\\n")
        sys.exit(1)
    if mode == "crash":
        print(f"Fatal Python error: Segmentation fault in {os.getcwd()}/serdemo/models/base.py")
        os.kill(os.getpid(), 9)
    if mode == "hang":
        child = subprocess.Popen(["sleep", "600"])
        open(os.environ["FAKE_PIDS"], "w").write(f"{os.getpid()} {child.pid}")
        time.sleep(600)
    progress.write(json.dumps({"event": "done", "epoch": 1, "epochs": 1, "step": 2, "total_steps": 2}) + "\\n")
elif args[:2] == ["-m", "training.compare"]:
    json.dump({"n": 0, "speakers": []}, open(args[args.index("--json") + 1], "w"))
'''


@pytest.fixture
def fake_python(tmp_path):
    script = tmp_path / "fake_run.py"
    script.write_text(FAKE)
    exe = tmp_path / "python"
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} {script} \"$@\"\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return str(exe)


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


def retrainer(tmp_path, fake_python, **kw):
    kw.setdefault("verify", None)
    kw.setdefault("min_gap_s", 0)
    return Retrainer(tmp_path / "work", tmp_path / "out", [], epochs=1, python=fake_python, **kw)


def hanging(tmp_path, fake_python, monkeypatch):
    """A retrainer whose stand-in run writes its first line and then hangs (until cancelled)."""
    monkeypatch.setenv("FAKE_RUN", "hang")
    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    return retrainer(tmp_path, fake_python, cooldown_s=0)


def start(r, tmp_path, name="default", owner=""):
    return r.start(tmp_path / name, {"training": {"config": {}}}, tmp_path / "manifest.csv", owner=owner)


def test_runs_are_spaced_by_a_cooldown_and_a_daily_quota_that_survive_a_restart(tmp_path, fake_python):
    """Issue 16: retraining could be started back to back forever by anyone."""
    clock = Clock()
    r = retrainer(tmp_path, fake_python, cooldown_s=900, max_runs_per_day=3, clock=clock)
    start(r, tmp_path)
    assert r.wait(30)["state"] == "done"
    r.discard()  # a done run waits for a decision before the next may start
    clock.now += 60
    with pytest.raises(RetrainRefused, match=r"runs are 15 min apart\): the next run can start in 14 min"):
        start(r, tmp_path)
    assert r.status()["next_start_s"] == 840
    clock.now += 841
    start(r, tmp_path)
    r.wait(30)
    r.discard()
    clock.now += 901
    start(r, tmp_path)
    r.wait(30)
    r.discard()
    clock.now += 901  # past the cool-down, but three runs within 24 hours
    with pytest.raises(RetrainRefused, match="at most 3 runs a day"):
        start(r, tmp_path)
    again = retrainer(tmp_path, fake_python, cooldown_s=900, max_runs_per_day=3, clock=clock)  # app restarted
    with pytest.raises(RetrainRefused, match="at most 3 runs a day"):
        start(again, tmp_path)
    clock.now += 86400
    start(again, tmp_path)
    assert again.wait(30)["state"] == "done"
    assert len(json.loads((tmp_path / "work" / "runs.json").read_text())) == 4


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] in "ZX"  # dead, maybe not yet reaped
    except (FileNotFoundError, IndexError):
        return True


def test_cancel_stops_the_run_and_every_process_it_started(tmp_path, fake_python, monkeypatch):
    pids_file = tmp_path / "pids"
    r = hanging(tmp_path, fake_python, monkeypatch)
    assert r.cancel() is False  # nothing to cancel
    start(r, tmp_path)
    deadline = time.time() + 30
    while not pids_file.exists() and time.time() < deadline:
        time.sleep(0.05)
    fit_pid, child_pid = map(int, pids_file.read_text().split())
    assert not _gone(fit_pid) and not _gone(child_pid) and r.status()["state"] == "running"
    with pytest.raises(RetrainBusy, match="already in progress"):
        start(r, tmp_path)
    assert r.cancel() is True
    deadline = time.time() + 10
    while not (_gone(fit_pid) and _gone(child_pid)) and time.time() < deadline:
        time.sleep(0.05)
    assert _gone(fit_pid) and _gone(child_pid)  # the training process and what it started
    st = r.status()
    assert (st["state"], st["phase"], st["reason"]) == ("cancelled", "cancelled", "cancelled")
    assert r.cancel() is False
    monkeypatch.setenv("FAKE_RUN", "ok")
    start(r, tmp_path)  # a cancelled run frees the slot
    assert r.wait(30)["state"] == "done"


def tiny_checkpoint(folder: Path) -> Path:
    """A small log-mel checkpoint (no pretrained encoder), made with the checkpoint module's own API."""
    import torch

    from serdemo.checkpoint import make_card, save_checkpoint
    from serdemo.features import FeatureConfig
    from serdemo.models import build_model

    torch.manual_seed(0)
    fc, heads = FeatureConfig(), {"emotion": ["neutral", "happy", "sad", "angry"]}
    model = build_model("cnnlstm", fc.n_mels, {"emotion": 4})
    return save_checkpoint(folder, model, make_card(model, fc, heads, {}, name="tiny"))


def test_a_checkpoint_with_broken_weights_is_refused_before_anything_starts(tmp_path, fake_python):
    """Issue 16: a checkpoint with broken weights launched a run that then failed."""
    good = tiny_checkpoint(tmp_path / "models" / "tiny")
    check_weights(good)  # an intact checkpoint passes
    broken = tmp_path / "models" / "broken"
    shutil.copytree(good, broken)
    weights = broken / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    r = Retrainer(tmp_path / "work", tmp_path / "out", [], epochs=1, python=fake_python)  # the default check
    with pytest.raises(RetrainRefused) as refused:
        r.start(broken, {"training": {"config": {}}}, tmp_path / "manifest.csv")
    message = str(refused.value)
    assert "'broken'" in message and "SHA-256" in message and str(tmp_path) not in message
    assert r.proc is None and r.runs == [] and not (tmp_path / "out").exists()  # nothing ran, no quota used
    r.start(good, {"training": {"config": {}}}, tmp_path / "manifest.csv")
    assert r.wait(30)["state"] == "done"


def test_status_shows_a_short_reason_never_a_path_or_a_traceback(tmp_path, fake_python, monkeypatch, caplog):
    """Issue 16: /retrain_status showed the failed run's traceback with server paths and /retrain_progress
    the absolute output folder. The detail goes to the server log, once."""
    monkeypatch.setenv("FAKE_RUN", "fail")
    r = retrainer(tmp_path, fake_python, cooldown_s=0)
    out = start(r, tmp_path)
    with caplog.at_level(logging.ERROR, logger="serdemo.retrain"):
        st = r.wait(30)
        for _ in range(3):
            r.status()  # the page polls
    shown = json.dumps(st)
    assert st["state"] == "failed" and st["out"] == st["run"] == out.name
    assert st["reason"] == st["error"] == "CorpusError: emodb: emodb is not a folder"  # from progress.jsonl
    for secret in (str(tmp_path), str(ROOT), "/srv/secret", "Traceback", 'File "'):
        assert secret not in shown, secret
    logged = [rec for rec in caplog.records if "failed" in rec.getMessage()]
    assert len(logged) == 1 and "/srv/secret/corpora/emodb" in logged[0].getMessage()  # the detail, server side
    monkeypatch.setenv("FAKE_RUN", "crash")
    start(r, tmp_path)
    st = r.wait(30)
    assert st["state"] == "failed" and "signal 9" in st["reason"] and str(ROOT) not in json.dumps(st)


def test_running_status_names_the_run_not_its_folder(tmp_path, fake_python, monkeypatch):
    r = hanging(tmp_path, fake_python, monkeypatch)
    out = start(r, tmp_path)
    try:
        st = r.status()
        assert st["state"] == "running" and st["out"] == out.name and str(tmp_path) not in json.dumps(st)
    finally:
        r.cancel()


@pytest.mark.parametrize("text, shown", [
    ("Traceback (most recent call last):\n  File \"/a/b.py\", line 1\nValueError: bad /x/y/z.csv", "ValueError: bad z.csv"),
    ("OSError: [Errno 28] No space left on device: '/data/serdemo/retrain/x.json'", "OSError: [Errno 28] No space left on device: 'x.json'"),
    ("C:\\Users\\me\\corpus missing", "corpus missing"),
    ("a ratio 3/4 and a URL-less note", "a ratio 3/4 and a URL-less note"),
    ("x" * 1000, "x" * 299 + "…"),
])
def test_user_reason_cuts_paths_and_tracebacks(text, shown):
    assert user_reason(text) == shown


def test_the_bar_has_an_eta_before_the_run_writes_its_first_line(tmp_path, fake_python, monkeypatch):
    """The run's interpreter takes seconds to start; meanwhile the status carries the recipe's first
    guess (a probe: about a minute) instead of no ETA at all."""
    from serdemo.retrain import FIRST_GUESS_S

    r = hanging(tmp_path, fake_python, monkeypatch)
    r.start(tmp_path / "default", {"training": {"config": {"model": "probe"}}}, tmp_path / "manifest.csv")
    try:
        progress = r.out / "progress.jsonl"
        if progress.exists():
            progress.unlink()  # as in the first second, before the run has written anything
        st = r.status()
        assert st["state"] == "running" and st["activity"] == "starting"
        assert FIRST_GUESS_S["probe"] - 10 <= st["eta_s"] <= FIRST_GUESS_S["probe"]  # counted down since the start
    finally:
        r.cancel()


def test_a_done_run_waits_to_be_kept_or_discarded_and_nothing_else_starts_meanwhile(tmp_path, fake_python):
    """Issue 17 point 8: a run's checkpoint is not served until someone keeps it; discarding deletes it; the
    choice is offered again after a restart, and no other run starts until it is made."""
    r = retrainer(tmp_path, fake_python, cooldown_s=0)
    out = start(r, tmp_path)
    st = r.wait(30)
    assert st["state"] == "done" and st["decision"] == "waiting" and st["base"] == "default"
    assert out.parent == tmp_path / "work" / "runs" and not (tmp_path / "out").exists()  # not among the served
    with pytest.raises(RetrainBusy, match="waits for a decision: keep it or discard it"):
        start(r, tmp_path)
    again = retrainer(tmp_path, fake_python, cooldown_s=0)  # the app restarted: the choice is still there
    assert again.status()["decision"] == "waiting" and again.comparison_result() == {"n": 0, "speakers": []}
    assert again.keep() == out.name
    assert (tmp_path / "out" / out.name / "comparison.json").is_file() and not out.exists()
    st = again.status()
    assert st["state"] == "done" and st["decision"] == "kept"
    with pytest.raises(RetrainBusy, match="no finished run waits"):
        again.discard()
    assert retrainer(tmp_path, fake_python).status()["state"] == "idle"  # decided: nothing to restore
    second = start(again, tmp_path)
    again.wait(30)
    assert again.discard() == second.name and not second.exists()
    assert not (tmp_path / "work" / f"{second.name}.log").exists()
    assert again.status()["decision"] == "discarded"
    runs = json.loads((tmp_path / "work" / "runs.json").read_text())
    assert [run.get("decision") for run in runs] == ["kept", "discarded"]
    assert (tmp_path / "out" / out.name).is_dir()  # the kept one stays


def test_every_phase_has_an_eta_counted_down_from_its_own_line(tmp_path, fake_python, monkeypatch):
    """Issue 17 point 8: "reading the corpora" had no ETA, and scoring both models showed "100 % · ETA 0 s" for
    minutes. Each phase line of the run carries an estimate; the status counts it down and says when it is
    overdue; between training and the comparison's own line there is a guess too."""
    from serdemo.retrain import COMPARE_START_S

    r = hanging(tmp_path, fake_python, monkeypatch)
    out = start(r, tmp_path)
    progress = out / "progress.jsonl"
    deadline = time.time() + 30
    while not (tmp_path / "pids").exists() and time.time() < deadline:  # the stand-in has written its first line
        time.sleep(0.05)
    now = time.time()

    def status(*events):
        progress.write_text("".join(json.dumps({"epochs": 1, "total_steps": 0, "step": 0, **e}) + "\n" for e in events))
        return r.status()

    try:
        reading = {"event": "phase", "phase": "reading the corpora", "eta_s": 300.0, "time": now - 100}
        st = status(reading)
        assert st["activity"] == "reading the corpora" and 195 <= st["eta_s"] <= 200 and st["overdue_s"] is None
        store = {"stored": 17, "training": 2, "left_out": {"the same audio as a corpus clip": 15}}
        probe = {"event": "phase", "phase": "fitting the probe", "eta_s": 20.0, "time": now - 50, "store": store}
        st = status(reading, probe)
        assert st["activity"] == "fitting the probe" and st["eta_s"] == 0 and 29 <= st["overdue_s"] <= 31
        assert st["store"] == store
        done = {"event": "done", "eta_s": 0.0, "time": now - 5}
        st = status(reading, probe, done)
        assert st["phase"] == "comparing" and st["activity"].startswith("starting the comparison")
        assert COMPARE_START_S - 6 <= st["eta_s"] <= COMPARE_START_S - 4
        scoring = {"event": "phase", "phase": "scoring both models on 40 clips of 8 held-out speakers", "eta_s": 12.0,
                   "time": now}
        st = status(reading, probe, done, scoring)
        assert st["activity"].startswith("scoring both models") and 10 <= st["eta_s"] <= 12
    finally:
        r.cancel()


# ------------------------------------------------------------------ owners and quotas (issue 29 item 8)
def test_only_the_owner_or_an_admin_may_cancel_keep_or_discard_a_run(tmp_path, fake_python, monkeypatch):
    """Issue 29 item 8: anyone could cancel anyone's run, or keep or discard its model. Now its owner (the
    requester who started it) or an admin (a login in SERDEMO_ADMINS); a done run left waiting an hour is
    anyone's to decide, so a walked-away owner does not stop retraining for good."""
    monkeypatch.setenv("SERDEMO_ADMINS", "carol, Dave")
    r = hanging(tmp_path, fake_python, monkeypatch)
    start(r, tmp_path, owner="login:alice")
    try:
        for who in ("login:bob", "annotator:carol", "session:x", "", None):
            with pytest.raises(RetrainRefused, match="only alice, who started it, or an admin"):
                r.cancel(who)
        assert r.running and r.cancel("login:DAVE")  # an admin, however the login is spelt
    finally:
        r.cancel("login:alice")
    monkeypatch.setenv("FAKE_RUN", "ok")
    clock = Clock()
    r = retrainer(tmp_path, fake_python, cooldown_s=0, clock=clock)
    start(r, tmp_path, owner="session:abc")
    assert r.wait(30)["decision"] == "waiting"
    for decide in (r.keep, r.discard):
        with pytest.raises(RetrainRefused, match="only the page that started it or an admin .* anyone may after 1 h"):
            decide("session:other")
    assert r.status()["decision"] == "waiting"
    clock.now += 3601
    assert r.discard("session:other") == r.out.name  # left waiting an hour: anyone may decide
    start(r, tmp_path, owner="session:abc")
    r.wait(30)
    assert r.keep("session:abc") == r.out.name
    owners = [run["owner"] for run in json.loads((tmp_path / "work" / "runs.json").read_text())]
    assert owners == ["login:alice", "session:abc", "session:abc"]  # kept across restarts


def test_quotas_count_per_person_and_a_cancelled_run_costs_only_its_seconds(tmp_path, fake_python, monkeypatch):
    """Issue 29 item 8: one person starting and cancelling runs used up the day's quota and the cool-down of
    everyone. Now the cool-down and the daily starts are counted per person; what all share is a short gap
    between starts and a budget of run seconds a day, which a run cancelled at once hardly touches."""
    clock = Clock()
    monkeypatch.setenv("FAKE_RUN", "hang")
    monkeypatch.setenv("FAKE_PIDS", str(tmp_path / "pids"))
    r = retrainer(tmp_path, fake_python, cooldown_s=900, max_runs_per_day=2, clock=clock, min_gap_s=60,
                  max_run_s_per_day=3600)
    for _ in range(2):
        start(r, tmp_path, owner="login:mallory")
        r.cancel("login:mallory")
        clock.now += 901
    with pytest.raises(RetrainRefused, match="at most 2 runs a day each"):
        start(r, tmp_path, owner="login:mallory")
    start(r, tmp_path, owner="login:alice")  # mallory's cancels cost alice nothing
    with pytest.raises(RetrainBusy, match="in progress"):
        start(r, tmp_path, owner="login:bob")
    r.cancel("login:alice")
    with pytest.raises(RetrainRefused, match="runs start at least 1 min apart"):
        start(r, tmp_path, owner="login:bob")
    with pytest.raises(RetrainRefused, match="your runs are 15 min apart"):
        clock.now += 61
        start(r, tmp_path, owner="login:alice")
    start(r, tmp_path, owner="login:bob")
    clock.now += 3600  # bob's run has used the day's hour of retraining
    r.cancel("login:bob")
    with pytest.raises(RetrainRefused, match="at most 1 h 00 min of retraining a day on this server"):
        start(r, tmp_path, owner="login:carol")


def test_a_status_poll_while_a_run_starts_never_ends_it(tmp_path, fake_python, monkeypatch):
    """A page polls the run's status every second, from another thread. A poll that landed after the new run's
    folder was set and before its process existed read "no process" as a finished one, and ended the new run
    as "failed (exit code 0)" (seen once in the browser test)."""
    import serdemo.retrain as retrain_module

    r = hanging(tmp_path, fake_python, monkeypatch)
    seen = []
    real = retrain_module.subprocess.Popen

    def popen_with_a_poll(*args, **kwargs):
        seen.append(r.status()["state"])  # the page's poll, in the middle of start()
        return real(*args, **kwargs)

    monkeypatch.setattr(retrain_module.subprocess, "Popen", popen_with_a_poll)
    start(r, tmp_path)
    assert seen and seen[0] != "failed", seen
    assert r.status()["state"] == "running"
    r.cancel()
