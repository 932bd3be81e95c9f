"""Retraining from the app: one background ``python -m training.fit`` process at a time.

The app exports the store as a manifest, fine-tunes the selected checkpoint on it plus the
configured corpora with the checkpoint's own recipe, and reports progress by reading the run's
``OUT/progress.jsonl`` (one JSON object per line; the schema is documented in
``training/progress.py``). When the run is done, ``python -m training.compare`` scores the previous and
the new checkpoint on the same clips of speakers neither trained on (``OUT/comparison.json``). Nothing
here imports ``training``: it is run as a separate process, so a crash or a long run never blocks the app.

Limits, since anyone who reaches the app can ask for a run: one run at a time, a cool-down after each run
(``cooldown_s``) and at most ``max_runs_per_day`` starts in any 24 hours (kept in ``WORKDIR/runs.json``, so a
restart does not reset them); the base checkpoint's weights are loaded and checked before anything starts;
:meth:`Retrainer.cancel` stops the run's whole process group. :meth:`Retrainer.status` is safe to show to
anyone: the run's name, never a server path, and a short reason instead of a traceback (the detail goes to
the server log, once per run).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

PROGRESS_FILE = "progress.jsonl"
# seconds a run takes on a 2-core CPU with the encoder-state cache filled (the three corpora), per
# architecture: the ETA shown before the run has counted its data (training.fit uses it too)
FIRST_GUESS_S = {"probe": 70.0, "localatt": 240.0, "multitask": 240.0, "cnnlstm": 1800.0}  # written by training.fit into its output folder
COMPARISON_FILE = "comparison.json"  # written by training.compare: old and new model on the same clips
RUNS_FILE = "runs.json"  # in the work folder: when each run started and ended (cool-down and quota)
COOLDOWN_S = 15 * 60.0
MAX_RUNS_PER_DAY = 6
STOP_GRACE_S = 10.0  # after SIGTERM, before SIGKILL
MAX_REASON_CHARS = 300
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


class RetrainBusy(RuntimeError):
    """A run cannot start now; the message says why and when it can (no path)."""


class RetrainRefused(RetrainBusy):
    """Refused by a limit (cool-down, quota) or because the base checkpoint is broken."""


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/,;:()\[\]<>]+)+[\\/]?")


def user_reason(text: str | None) -> str:
    """A message fit to show anyone: its last meaningful line, absolute paths cut to their last part,
    at most ``MAX_REASON_CHARS`` characters."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("Traceback", "File \"", "^", "~"))]
    line = lines[-1] if lines else ""
    line = _ABSOLUTE_PATH.sub(lambda m: re.split(r"[\\/]", m.group().rstrip("\\/"))[-1] or "…", line)
    return line if len(line) <= MAX_REASON_CHARS else line[:MAX_REASON_CHARS - 1] + "…"


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


def check_weights(checkpoint: Path) -> None:
    """Load ``checkpoint`` as the app would (card, weights' size and SHA-256, tensor names and shapes);
    raises :class:`RetrainRefused` with the checkpoint's problem in the user's words."""
    from serdemo.checkpoint import CheckpointError, load_checkpoint

    try:
        load_checkpoint(checkpoint, "cpu")
    except CheckpointError as exc:  # its messages name the checkpoint, never a path
        raise RetrainRefused(f"cannot fine-tune: {user_reason(str(exc))}") from None
    except Exception:  # noqa: BLE001 - anything else is a broken file too; the detail goes to the log
        log.exception("retraining refused: checkpoint %s could not be loaded", checkpoint)
        raise RetrainRefused(f"cannot fine-tune '{Path(checkpoint).name}': its weights could not be loaded") from None


def auth_configured(env=None) -> bool:
    """Whether the app has logins (``SERDEMO_AUTH`` holds at least one ``name:password`` pair)."""
    env = os.environ if env is None else env
    return any(":" in pair for pair in env.get("SERDEMO_AUTH", "").split(","))


def check_may_retrain(user: str | None, env=None) -> None:
    """Refuse (:class:`RetrainRefused`) a retraining request from someone not logged in when the app has
    logins; without logins anyone may ask (the cool-down and the quota still hold)."""
    if auth_configured(env) and not (user or "").strip():
        raise RetrainRefused("retraining needs a login: log in with your name and password first")


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{round(seconds / 60)} min"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


class Retrainer:
    def __init__(self, workdir: Path, out_root: Path, corpora: list[str], epochs: int = 10,
                 cooldown_s: float = COOLDOWN_S, max_runs_per_day: int = MAX_RUNS_PER_DAY,
                 verify: Callable[[Path], object] | None = check_weights, clock: Callable[[], float] = time.time,
                 python: str = sys.executable):
        self.workdir, self.out_root = Path(workdir), Path(out_root)
        self.corpora, self.epochs = list(corpora), epochs
        self.cooldown_s, self.max_runs_per_day = float(cooldown_s), int(max_runs_per_day)
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
        self.runs: list[dict] = self._read_runs()

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
        tmp = self.workdir / f".{RUNS_FILE}.tmp"
        tmp.write_text(json.dumps(self.runs[-100:], indent=1))
        os.replace(tmp, self.workdir / RUNS_FILE)

    def _note_end(self) -> None:
        """Record when the current run ended (once)."""
        with self._runs_lock:
            self._note_end_locked()

    def _note_end_locked(self) -> None:
        if self.runs and self.runs[-1].get("ended") is None and self.proc is not None and self.proc.poll() is not None:
            self.runs[-1]["ended"] = self.clock()
            self.runs[-1]["state"] = "cancelled" if self.cancelled else ("done" if self.proc.returncode == 0 else "failed")
            self._write_runs()

    def next_start(self) -> tuple[float, str]:
        """``(seconds until a run may start, why)``; ``(0, "")`` when one may start now."""
        now = self.clock()
        if self.running:
            return math.inf, "a retraining run is in progress"
        self._note_end()
        waits = []
        if self.runs and self.cooldown_s > 0:
            last = self.runs[-1]
            since = last.get("ended") or last["started"]
            if now - since < self.cooldown_s:
                waits.append((since + self.cooldown_s - now, f"runs are {_duration(self.cooldown_s)} apart"))
        recent = sorted(r["started"] for r in self.runs if now - r["started"] < 86400)
        if len(recent) >= self.max_runs_per_day:
            oldest = recent[len(recent) - self.max_runs_per_day]
            waits.append((oldest + 86400 - now, f"at most {self.max_runs_per_day} runs a day"))
        if not waits:
            return 0.0, ""
        return max(waits)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, base_checkpoint: Path, base_card: dict, manifest: Path, extra_args: list[str] | None = None) -> Path:
        """Launch the fine-tuning run. Raises :class:`RetrainBusy` while one runs, :class:`RetrainRefused`
        during the cool-down, over the daily quota, or when the base checkpoint's weights do not load."""
        with self._lock:
            if self.running:
                raise RetrainBusy(f"a retraining run is already in progress ({self.out.name}); wait for it to "
                                  "finish or cancel it")
            wait_s, why = self.next_start()
            if wait_s > 0:
                raise RetrainRefused(f"retraining is limited ({why}): the next run can start in {_duration(wait_s)}")
            if self.verify is not None:
                self.verify(Path(base_checkpoint))
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{Path(base_checkpoint).name}-ft-{stamp}"
            n = 1
            while (self.out_root / name).exists() or (self.workdir / f"{name}.json").exists():  # same second
                n += 1
                name = f"{Path(base_checkpoint).name}-ft-{stamp}-{n}"
            self.out = self.out_root / name
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.out_root.mkdir(parents=True, exist_ok=True)
            recipe = dict(base_card.get("training", {}).get("config", {}))
            self.first_guess_s = FIRST_GUESS_S.get(str(recipe.get("model")), 300.0)
            recipe.update(name=name, out=str(self.out), init=str(base_checkpoint), epochs=self.epochs,
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
            compare = [self.python, "-m", "training.compare", str(base_checkpoint), str(self.out),
                       "--json", str(self.out / COMPARISON_FILE)]
            script = " ".join(map(_quote, fit)) + " && " + " ".join(map(_quote, compare))
            with open(self.log, "w") as logf:
                # its own process group: cancel() stops bash and every process the run started
                self.proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=env, stdout=logf,
                                             stderr=subprocess.STDOUT, start_new_session=True)
            self.started = time.time()
            self.cancelled = False
            with self._runs_lock:
                self.runs.append({"name": name, "started": self.clock(), "ended": None})
                self._write_runs()
            return self.out

    def prune(self, keep: int = 3) -> int:
        """Delete the outputs of all but the newest ``keep`` finished runs this retrainer made (their
        checkpoint folder under ``out_root`` and their config and log in ``workdir``); never the running
        run. Returns how many runs were removed. The disk budget's sweep calls it."""
        with self._lock:
            current = self.out.name if (self.out is not None and self.running) else None
            runs = sorted((p for p in self.out_root.glob("*-ft-*") if p.is_dir() and not p.is_symlink()),
                          key=lambda p: p.stat().st_mtime, reverse=True) if self.out_root.is_dir() else []
            runs = [p for p in runs if p.name != current]
            removed = 0
            for old in runs[max(0, keep):]:
                try:
                    shutil.rmtree(old)
                except OSError:
                    continue
                for extra in (self.workdir / f"{old.name}.json", self.workdir / f"{old.name}.log"):
                    extra.unlink(missing_ok=True)
                removed += 1
            return removed

    def cancel(self) -> bool:
        """Stop the running run (SIGTERM to its process group, SIGKILL after ``STOP_GRACE_S``); False when
        nothing runs. The cool-down counts from now."""
        with self._lock:
            proc = self.proc
            if proc is None or proc.poll() is not None:
                return False
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
        plus, from the progress file, ``step``, ``total_steps``, ``loss``, ``eta_s``, ``error`` and, while
        running, ``phase``: ``preparing`` (no step yet), ``training`` or ``comparing`` (training is done, the
        comparison with the previous model runs); ``current_epoch`` is the epoch the last step belongs to;
        ``next_start_s``: seconds until another run may start. ``out`` is the run's name (kept for callers
        that read it; never a path); ``reason`` (and ``tail``, its old name) says in one line why a run
        failed. Safe to return to any client: no server path, no traceback."""
        if self.proc is None:
            wait_s, _ = self.next_start()
            return {"state": "idle", "next_start_s": None if math.isinf(wait_s) else round(wait_s)}
        events = read_progress(self.out / PROGRESS_FILE)
        last = events[-1] if events else {}
        epochs = [e for e in events if e.get("event") == "epoch"]
        code = self.proc.poll()
        finished = code == 0 and (self.out / COMPARISON_FILE).exists()
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
        wait_s, _ = self.next_start()
        return {"state": state, "run": self.out.name, "out": self.out.name,
                "epoch": int(epochs[-1]["epoch"]) if epochs else 0,
                "of": int(last.get("epochs") or self.total_epochs),
                "dev_ua": epochs[-1].get("dev_ua") if epochs else None,
                "step": int(last.get("step") or 0), "total_steps": int(last.get("total_steps") or 0),
                "loss": losses[-1] if losses else None,
                # before the run's first line (its interpreter is starting): the recipe's first guess
                "eta_s": last.get("eta_s") if events else (getattr(self, "first_guess_s", None)
                                                            if state == "running" else None),
                "error": reason or None, "reason": reason, "tail": reason,
                "phase": phase, "current_epoch": int(last.get("epoch") or 0),
                "elapsed_s": time.time() - self.started,
                "next_start_s": None if math.isinf(wait_s) else round(wait_s)}

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
        result = self.comparison_result()
        return comparison_markdown(result) if result is not None else ""

    def wait(self, timeout: float | None = None) -> dict:
        if self.proc is not None:
            self.proc.wait(timeout)
        return self.status()


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


def comparison_markdown(result: dict) -> str:
    """A ``training.compare`` result as Markdown: one row per set, both models on the same clips."""
    speakers, left = result.get("speakers", []), result.get("left_out_speakers", {})
    lines = [f"Both models scored on the same {result.get('n', 0)} clips of {len(speakers)} speakers that "
             f"neither trained on ({', '.join(speakers) or 'none'})."]
    if left:
        lines.append("Left out: " + ", ".join(f"{s} ({why})" for s, why in sorted(left.items())) + ".")
    if result.get("note"):
        lines.append(f"Note: {result['note']}.")
    scores = result.get("scores")
    if scores:
        old, new = scores["previous"], scores["new"]
        lines += ["", "| set | previous UA | new UA | previous WA | new WA | n |", "|---|---|---|---|---|---|"]
        for k in new:
            if k in old:
                lines.append(f"| {k} | {old[k]['ua']:.3f} | {new[k]['ua']:.3f} | {old[k]['wa']:.3f} | "
                             f"{new[k]['wa']:.3f} | {new[k]['n']} |")
    return "\n".join(lines)
