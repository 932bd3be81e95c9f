"""Retraining from the app: one background ``python -m training.fit`` process at a time.

The app exports the store as a manifest, fine-tunes the selected checkpoint on it plus the
configured corpora with the checkpoint's own recipe, and reports progress by reading the run's
``OUT/progress.jsonl`` (one JSON object per line; the schema is documented in
``training/progress.py``). When the run is done, ``python -m training.compare`` scores the previous and
the new checkpoint on the same clips of speakers neither trained on (``OUT/comparison.json``). Nothing
here imports ``training``: it is run as a separate process, so a crash or a long run never blocks the app.

Before a run, :func:`retrain_plan` (:mod:`serdemo.retrain_plan`) says which stored labels it would train on and why the others would not
(the reasons of the store report ``training.data`` writes into the run's progress, predicted from the store,
the base checkpoint's card and the corpus files; the run's own report replaces it once the run has read its
data). Each phase of a run has an ETA (:meth:`Retrainer.status`). A run writes into ``WORKDIR/runs/NAME``;
when it is done its checkpoint waits there for a decision: :meth:`Retrainer.keep` moves it among the served
checkpoints (``out_root``), :meth:`Retrainer.discard` deletes it, and no new run starts until one of the two.

Limits, since anyone who reaches the app can ask for a run: one run at a time; per person (the run's owner: a
login, an annotator name, else a browser session) a cool-down after their run (``cooldown_s``) and at most
``max_runs_per_day`` starts in any 24 hours; for everyone together ``min_gap_s`` between starts and at most
``max_run_s_per_day`` seconds of runs in any 24 hours (a run cancelled after a minute costs a minute, not a
day's start); all kept in ``WORKDIR/runs.json``, so a restart does not reset them. The base checkpoint's weights
are loaded and checked before anything starts; :meth:`Retrainer.cancel` stops the run's whole process group.
Only a run's owner or an admin (a login named in ``SERDEMO_ADMINS``) may cancel it, keep it or discard it;
a done run left waiting for :data:`DECISION_HOLD_S` may be kept or discarded by anyone, so a walked-away
owner does not stop retraining for good. :meth:`Retrainer.status` is safe to show to
anyone: the run's name, never a server path, and a short reason instead of a traceback (the detail goes to
the server log, once per run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from serdemo.envsettings import env_number
from serdemo.eta import FIRST_GUESS_S, human_duration
from serdemo.fsutil import atomic_write
from serdemo.retrain_access import RetrainBusy, RetrainRefused, check_weights, is_admin, owner_words, user_reason

# the plan before a run, who may retrain and the ETA table live in their own modules (serdemo.retrain_plan,
# serdemo.retrain_access, serdemo.store_rules, serdemo.eta); their names stay importable from here
from serdemo.retrain_access import MAX_REASON_CHARS, admins, auth_configured, check_may_retrain  # noqa: F401,E402
from serdemo.retrain_plan import (AUDIO_SUFFIXES, ROOT, corpus_copy_hash, corpus_folders,  # noqa: F401,E402
                                  report_sentence, retrain_plan)
from serdemo.store_rules import WHY_COPY, WHY_HELD_OUT, WHY_MEANS, WHY_SHORT, WHY_UNREADABLE  # noqa: F401,E402

PROGRESS_FILE = "progress.jsonl"
COMPARISON_FILE = "comparison.json"  # written by training.compare: old and new model on the same clips
RUNS_DIR = "runs"  # in the work folder: a run's output while it runs, and once done until it is kept or discarded
COMPARE_START_S = 20.0  # from the run's "done" line to training.compare's first: its interpreter starts, reads corpora
RUNS_FILE = "runs.json"  # in the work folder: when each run started and ended (cool-down and quota)
COOLDOWN_S = 15 * 60.0  # per person, after their run ends
MAX_RUNS_PER_DAY = 6  # starts per person in any 24 hours
MIN_GAP_S = 60.0  # between any two starts
MAX_RUN_S_PER_DAY = 6 * 3600.0  # seconds of runs (all people) in any 24 hours
DECISION_HOLD_S = 3600.0  # a done run is its owner's to keep or discard this long; then anyone's
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
log = logging.getLogger(__name__)


def read_progress(path) -> list[dict]:
    """The complete JSON lines of a progress file (an unfinished last line is skipped)."""
    path = Path(path)
    if not path.is_file():
        return []
    events = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(event, dict) and "event" in event:
            events.append(event)
    return events


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


class Retrainer:
    def __init__(self, workdir: Path, out_root: Path, corpora: list[str], epochs: int = 10,
                 cooldown_s: float = COOLDOWN_S, max_runs_per_day: int = MAX_RUNS_PER_DAY,
                 verify: Callable[[Path], object] | None = check_weights, clock: Callable[[], float] = time.time,
                 python: str = sys.executable, min_gap_s: float = MIN_GAP_S,
                 max_run_s_per_day: float = MAX_RUN_S_PER_DAY, decision_hold_s: float = DECISION_HOLD_S):
        self.workdir, self.out_root = Path(workdir), Path(out_root)
        self.corpora, self.epochs = list(corpora), epochs
        self.cooldown_s, self.max_runs_per_day = float(cooldown_s), int(max_runs_per_day)
        self.min_gap_s, self.max_run_s_per_day = float(min_gap_s), float(max_run_s_per_day)
        self.decision_hold_s = float(decision_hold_s)
        self.owner = ""  # who started the current run ("" unknown: an older run, or a direct call)
        self.verify, self.clock, self.python = verify, clock, python
        self._lock = threading.Lock()
        self._runs_lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None
        self.log: Path | None = None
        self.total_epochs = epochs
        self.started = 0.0
        self.cancelled = False
        self._reported: Path | None = None  # the run whose failure was logged
        self.decision: str | None = None  # the done run's: None (waiting), "kept" or "discarded"
        self.base_name = ""  # the checkpoint the run fine-tunes
        self.first_guess_s: float | None = None
        self.runs: list[dict] = self._read_runs()
        self._restore()

    def _restore(self) -> None:
        """After a restart: the last run, done and waiting for a decision, is shown again (its output is kept)."""
        last = self.runs[-1] if self.runs else {}
        folder = self.workdir / RUNS_DIR / str(last.get("name", ""))
        if last.get("state") == "done" and not last.get("decision") and (folder / COMPARISON_FILE).is_file():
            self.out, self.log = folder, self.workdir / f"{folder.name}.log"
            self.base_name = str(last.get("base") or "")
            self.owner = str(last.get("owner") or "")
            self.started = float(last["started"])

    # ------------------------------------------------------------------ limits
    def _read_runs(self) -> list[dict]:
        try:
            runs = json.loads((self.workdir / RUNS_FILE).read_text())
        except (OSError, ValueError):
            return []
        return [r for r in runs if isinstance(r, dict) and isinstance(r.get("started"), (int, float))] \
            if isinstance(runs, list) else []

    def _write_runs(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        data = json.dumps(self.runs[-100:], indent=1).encode()
        atomic_write(self.workdir / RUNS_FILE, lambda f: f.write(data))

    def _note_end(self) -> None:
        """Record when the current run ended (once)."""
        with self._runs_lock:
            self._note_end_locked()

    def _note_end_locked(self) -> None:
        if self.runs and self.runs[-1].get("ended") is None and self.proc is not None and self.proc.poll() is not None:
            self.runs[-1]["ended"] = self.clock()
            self.runs[-1]["state"] = "cancelled" if self.cancelled else ("done" if self.proc.returncode == 0 else "failed")
            self._write_runs()

    def next_start(self, who: str | None = "") -> tuple[float, str]:
        """``(seconds until ``who`` may start a run, why)``; ``(0, "")`` when they may start one now. ``who`` is
        the requester (:func:`serdemo.uikit.requester`; "" for an unknown one): their own cool-down and daily
        starts, then everyone's gap between starts and seconds of runs in 24 hours."""
        now = self.clock()
        if self.running:
            return math.inf, "a retraining run is in progress"
        self._note_end()
        waits = []
        mine = [r for r in self.runs if str(r.get("owner") or "") == (who or "")]
        if mine and self.cooldown_s > 0:
            since = mine[-1].get("ended") or mine[-1]["started"]
            if now - since < self.cooldown_s:
                waits.append((since + self.cooldown_s - now, f"your runs are {human_duration(self.cooldown_s)} apart"))
        recent = sorted(r["started"] for r in mine if now - r["started"] < 86400)
        if len(recent) >= self.max_runs_per_day:
            oldest = recent[len(recent) - self.max_runs_per_day]
            waits.append((oldest + 86400 - now, f"at most {self.max_runs_per_day} runs a day each"))
        if self.runs and self.min_gap_s > 0 and now - self.runs[-1]["started"] < self.min_gap_s:
            waits.append((self.runs[-1]["started"] + self.min_gap_s - now,
                          f"runs start at least {human_duration(self.min_gap_s)} apart"))
        spans = [(max(r["started"], now - 86400), r.get("ended") or now) for r in self.runs]
        spans = [(a, b) for a, b in spans if b > a]
        if sum(b - a for a, b in spans) >= self.max_run_s_per_day:  # frees up as the oldest run leaves the day
            waits.append((min(b for _, b in spans) + 86400 - now,
                          f"at most {human_duration(self.max_run_s_per_day)} of retraining a day on this server"))
        if not waits:
            return 0.0, ""
        return max(waits)

    def check_may_decide(self, who: str | None, action: str) -> None:
        """Refuse (:class:`RetrainRefused`) ``who`` to ``action`` ("cancel", "keep", "discard") the current run
        unless they started it or are an admin (:func:`is_admin`); a run without a known owner is anyone's, and
        a done run waiting longer than ``decision_hold_s`` may be kept or discarded by anyone."""
        owner = self.owner
        if not owner or (who and (who == owner or is_admin(who))):
            return
        ended = self.runs[-1].get("ended") if self.runs else None
        if action != "cancel" and ended is not None and self.clock() - ended > self.decision_hold_s:
            return
        after = "" if action == "cancel" else \
            f"; if it is left waiting, anyone may after {human_duration(self.decision_hold_s)}"
        raise RetrainRefused(f"only {owner_words(owner)} or an admin (SERDEMO_ADMINS) may {action} this run{after}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, base_checkpoint: Path, base_card: dict, manifest: Path, extra_args: list[str] | None = None,
              owner: str = "") -> Path:
        """Launch the fine-tuning run for ``owner`` (the requester, :func:`serdemo.uikit.requester`; only they or
        an admin may cancel, keep or discard it). Raises :class:`RetrainBusy` while one runs,
        :class:`RetrainRefused` during the cool-down, over a quota, or when the base checkpoint's weights do not
        load."""
        with self._lock:
            if self.running:
                raise RetrainBusy(f"a retraining run is already in progress ({self.out.name}); wait for it to "
                                  "finish or cancel it")
            if self.awaiting_decision():
                raise RetrainBusy(f"the last run's model ({self.out.name}) waits for a decision: keep it or discard "
                                  "it on the Models tab first")
            wait_s, why = self.next_start(owner)
            if wait_s > 0:
                raise RetrainRefused(f"retraining is limited ({why}): the next run can start in {human_duration(wait_s)}")
            if self.verify is not None:
                self.verify(Path(base_checkpoint))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{Path(base_checkpoint).name}-ft-{stamp}"
            n = 1
            while (self.out_root / name).exists() or (self.workdir / f"{name}.json").exists():  # same second
                n += 1
                name = f"{Path(base_checkpoint).name}-ft-{stamp}-{n}"
            # not among the served checkpoints until someone keeps it. The run is published (self.out) only once
            # its process exists: a status poll in between would read the previous run's process (or none, read
            # as a finished one) against the new folder and end the new run as "failed (exit code 0)"
            out = self.workdir / RUNS_DIR / name
            out.parent.mkdir(parents=True, exist_ok=True)
            recipe = dict(base_card.get("training", {}).get("config", {}))
            self.first_guess_s = FIRST_GUESS_S.get(str(recipe.get("model")), 300.0)
            recipe.update(name=name, out=str(out), init=str(base_checkpoint), epochs=self.epochs,
                          corpora=self.corpora + [f"manifest={manifest}"])
            recipe.pop("max_steps", None)
            if extra_args is None:
                extra_args = []
            config = self.workdir / f"{name}.json"
            config.write_text(json.dumps(recipe, indent=2))  # JSON is valid YAML
            self.log = self.workdir / f"{name}.log"
            self.total_epochs = self.epochs
            env = dict(os.environ, TQDM_DISABLE="1", PYTHONUNBUFFERED="1")
            root = Path(__file__).resolve().parents[1]
            fit = [self.python, "-m", "training.fit", "--config", str(config), *extra_args]
            # both models scored on the same clips, of speakers neither trained on: like for like
            compare = [self.python, "-m", "training.compare", str(base_checkpoint), str(out),
                       "--json", str(out / COMPARISON_FILE)]
            # below the server's priority (SERDEMO_RETRAIN_NICE, 10): a run takes the CPU the pages leave
            script = (f"renice -n {retrain_nice()} -p $$ >/dev/null 2>&1; " + " ".join(map(_quote, fit)) + " && "
                      + " ".join(map(_quote, compare)))
            with open(self.log, "w") as logf:
                # its own process group: cancel() stops bash and every process the run started
                proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=env, stdout=logf,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            self.started = time.time()
            self.cancelled, self.decision, self.base_name = False, None, Path(base_checkpoint).name
            self.owner = owner
            self.proc = proc  # the process first, then the folder that makes the run visible
            self.out = out
            with self._runs_lock:
                self.runs.append({"name": name, "base": self.base_name, "started": self.clock(), "ended": None,
                                  "owner": owner})
                self._write_runs()
            return self.out

    def prune(self, keep: int = 3) -> int:
        """Delete the outputs of all but the newest ``keep`` kept runs this retrainer made (their checkpoint
        folder under ``out_root`` and their config and log in ``workdir``), and every unkept output under
        ``WORKDIR/runs`` (failed, cancelled, left by a restart) but the current run's (running, waiting for a
        decision, or the last one shown). Returns how many runs were removed. The disk budget's sweep calls it."""
        with self._lock:
            current = self.out.name if (self.out is not None and self.running) else None
            runs = sorted((p for p in self.out_root.glob("*-ft-*") if p.is_dir() and not p.is_symlink()),
                          key=lambda p: p.stat().st_mtime, reverse=True) if self.out_root.is_dir() else []
            runs = [p for p in runs if p.name != current][max(0, keep):]
            unkept = self.workdir / RUNS_DIR
            runs += [p for p in (unkept.iterdir() if unkept.is_dir() else [])
                     if p.is_dir() and not p.is_symlink() and p != self.out]
            removed = 0
            for old in runs:
                try:
                    shutil.rmtree(old)
                except OSError:
                    continue
                for extra in (self.workdir / f"{old.name}.json", self.workdir / f"{old.name}.log"):
                    extra.unlink(missing_ok=True)
                removed += 1
            return removed

    def awaiting_decision(self) -> bool:
        """Whether a run is done (trained and compared) and its checkpoint waits to be kept or discarded."""
        return (self.out is not None and self.decision is None and not self.cancelled and not self.running
                and (self.proc is None or self.proc.returncode == 0) and self.out.parent == self.workdir / RUNS_DIR
                and (self.out / COMPARISON_FILE).is_file())

    def _decide(self, decision: str) -> None:
        self.decision = decision
        with self._runs_lock:
            for run in reversed(self.runs):
                if run.get("name") == self.out.name:
                    run["decision"] = decision
                    break
            self._write_runs()

    def keep(self, who: str | None = None) -> str:
        """The done run's checkpoint joins the served ones (moved under ``out_root``); returns its name.
        Raises :class:`RetrainBusy` when no run waits for a decision, :class:`RetrainRefused` when ``who`` may
        not decide it (:meth:`check_may_decide`)."""
        with self._lock:
            if not self.awaiting_decision():
                raise RetrainBusy("no finished run waits for a decision")
            self.check_may_decide(who, "keep")
            dest = self.out_root / self.out.name
            self.out_root.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.out), str(dest))  # beside the store: a rename
            self.out = dest
            self._decide("kept")
            log.info("retraining run %s kept", dest.name)
            return dest.name

    def discard(self, who: str | None = None) -> str:
        """Delete the done run's checkpoint (and its config and log); returns its name. Raises
        :class:`RetrainBusy` when no run waits for a decision, :class:`RetrainRefused` when ``who`` may not
        decide it (:meth:`check_may_decide`)."""
        with self._lock:
            if not self.awaiting_decision():
                raise RetrainBusy("no finished run waits for a decision")
            self.check_may_decide(who, "discard")
            shutil.rmtree(self.out, ignore_errors=True)
            for extra in (self.workdir / f"{self.out.name}.json", self.workdir / f"{self.out.name}.log"):
                extra.unlink(missing_ok=True)
            self._decide("discarded")
            log.info("retraining run %s discarded", self.out.name)
            return self.out.name

    def cancel(self, who: str | None = None) -> bool:
        """Stop the running run (SIGTERM to its process group, SIGKILL after ``STOP_GRACE_S``); False when
        nothing runs. Only its owner or an admin may (:meth:`check_may_decide`; else :class:`RetrainRefused`).
        The owner's cool-down counts from now; everyone's budget counts the seconds it ran."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
            self.check_may_decide(who, "cancel")
            self.cancelled = True
            _stop(proc, signal.SIGTERM)
            try:
                proc.wait(STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                _stop(proc, signal.SIGKILL)
                proc.wait()
            self._note_end()
            log.info("retraining run %s cancelled", self.out.name if self.out else "?")
            return True

    # ------------------------------------------------------------------ what anyone may see
    def _reason(self, code: int, events: list[dict]) -> str:
        if self.cancelled:
            return "cancelled"
        errors = [e.get("message") for e in events if e.get("event") == "error" and e.get("message")]
        if errors:
            return user_reason(str(errors[-1]))
        if code == 0:
            return "training finished, but scoring it against the previous model did not complete"
        if code < 0 or code in (137, 143):
            sig = -code if code < 0 else code - 128
            return f"the training process was stopped by signal {sig} (out of memory, or the server stopped it)"
        return f"the training process stopped with exit code {code}; the server log has the details"

    def _log_failure(self, code: int) -> None:
        """The failed run's log tail to the server log, once per run."""
        if self._reported == self.out:
            return
        self._reported = self.out
        try:
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-40:]) if self.log else ""
        except OSError:
            tail = ""
        log.error("retraining run %s failed (exit code %s); log %s ends:\n%s", self.out, code, self.log, tail)

    def status(self) -> dict:
        """``{"state": idle|running|done|failed|cancelled, "run", "epoch", "of", "dev_ua", "elapsed_s", "reason"}``
        plus, from the progress file, ``step``, ``total_steps``, ``loss``, ``error`` and ``phase``: ``preparing``
        (no step yet), ``training`` or ``comparing`` (training is done, the comparison with the previous model
        runs) while running, else the state; ``activity`` says in words what runs now (the run's own phase
        lines: "reading the corpora", "fitting the probe", "scoring both models on ..."); ``eta_s``: seconds
        left by the current phase's estimate, counted down since it was written (before the run's first line,
        the recipe's first guess), and ``overdue_s`` once that estimate has passed; ``store``: the run's
        report of which stored labels train (once it has read its data); ``decision`` for a done run:
        ``waiting``, ``kept`` or ``discarded``; ``current_epoch`` is the epoch the last step belongs to;
        ``next_start_s``: seconds until another run may start. ``out`` is the run's name (kept for callers
        that read it; never a path); ``reason`` (and ``tail``, its old name) says in one line why a run
        failed. Safe to return to any client: no server path, no traceback."""
        if self.out is None:
            wait_s, _ = self.next_start()
            return {"state": "idle", "next_start_s": None if math.isinf(wait_s) else round(wait_s)}
        events = read_progress(self.out / PROGRESS_FILE)
        last = events[-1] if events else {}
        epochs = [e for e in events if e.get("event") == "epoch"]
        code = self.proc.poll() if self.proc is not None else 0  # no process: a done run restored after a restart
        finished = code == 0 and (self.decision is not None or (self.out / COMPARISON_FILE).exists())
        if code is None:
            state = "running"
        else:
            self._note_end()
            state = "cancelled" if self.cancelled else ("done" if finished else "failed")
        reason = self._reason(code, events) if state in ("failed", "cancelled") else ""
        if state == "failed":
            self._log_failure(code)
        losses = [e["loss"] for e in events if e.get("loss") is not None]
        if state != "running":
            phase = state
        elif any(e.get("event") == "done" for e in events):
            phase = "comparing"
        else:
            phase = "training" if last.get("step") else "preparing"
        activity, eta_s = self._activity(state, last) if state == "running" else (state, None)
        wait_s, _ = self.next_start()
        return {"state": state, "run": self.out.name, "out": self.out.name,
                "epoch": int(epochs[-1]["epoch"]) if epochs else 0,
                "of": int(last.get("epochs") or self.total_epochs),
                "dev_ua": epochs[-1].get("dev_ua") if epochs else None,
                "step": int(last.get("step") or 0), "total_steps": int(last.get("total_steps") or 0),
                "loss": losses[-1] if losses else None,
                "eta_s": None if eta_s is None else max(0.0, round(eta_s, 1)),
                "overdue_s": round(-eta_s, 1) if eta_s is not None and eta_s < 0 else None,
                "activity": activity, "base": self.base_name,
                "store": next((e["store"] for e in reversed(events) if isinstance(e.get("store"), dict)), None),
                "decision": (self.decision or "waiting") if state == "done" else None,
                "error": reason or None, "reason": reason, "tail": reason,
                "phase": phase, "current_epoch": int(last.get("epoch") or 0),
                "elapsed_s": time.time() - self.started,
                "next_start_s": None if math.isinf(wait_s) else round(wait_s)}

    def _activity(self, state: str, last: dict) -> tuple[str, float | None]:
        """What a running run does now and the seconds left by that phase's estimate (negative: overdue),
        from its last progress line: every phase has an estimate from its first second."""
        now = time.time()
        since = now - float(last["time"]) if isinstance(last.get("time"), (int, float)) else 0.0
        event = last.get("event")
        if not last:  # its interpreter is starting: the recipe's first guess for the whole run
            guess = self.first_guess_s
            return "starting", None if guess is None else guess - (now - self.started)
        if event == "done":  # training.compare's interpreter starts and reads the corpora before its own line
            return "starting the comparison with the previous model", COMPARE_START_S - since
        if event == "phase":
            activity = str(last.get("phase") or "preparing")
        else:
            activity = "training" if last.get("total_steps") else "fitting"
        eta = last.get("eta_s")
        return activity, None if not isinstance(eta, (int, float)) else float(eta) - since

    def comparison_result(self) -> dict | None:
        """The finished run's ``training.compare`` result (``comparison.json``), or None."""
        path = self.out / COMPARISON_FILE if self.out is not None else None
        if path is None or not path.is_file():
            return None
        try:
            result = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return result if isinstance(result, dict) else None

    def comparison(self) -> str:
        """Markdown: the new checkpoint against the previous one, both scored on the same clips of speakers
        neither of them trained on (``training.compare``)."""
        from serdemo.cards import comparison_markdown

        result = self.comparison_result()
        return comparison_markdown(result) if result is not None else ""

    def wait(self, timeout: float | None = None) -> dict:
        if self.proc is not None:
            self.proc.wait(timeout)
        return self.status()


def retrain_nice() -> int:
    """How much lower than the server's a retraining run's CPU priority is (``nice``; SERDEMO_RETRAIN_NICE)."""
    return env_number("SERDEMO_RETRAIN_NICE", 10, low=0, high=19, kind=int)


def _stop(proc: subprocess.Popen, sig: int) -> None:
    """Send ``sig`` to ``proc``'s process group when it leads one (as :meth:`Retrainer.start` makes it), else
    to the process alone."""
    try:
        if os.getpgid(proc.pid) == proc.pid:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, PermissionError):
        pass
