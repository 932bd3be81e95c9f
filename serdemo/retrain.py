"""Retraining from the app: one background ``python -m training.fit`` process at a time.

The app exports the store as a manifest, fine-tunes the selected checkpoint on it plus the
configured corpora with the checkpoint's own recipe, and reports progress by reading the run's
``OUT/progress.jsonl`` (one JSON object per line; the schema is documented in
``training/progress.py``). When the run is done, ``python -m training.compare`` scores the previous and
the new checkpoint on the same clips of speakers neither trained on (``OUT/comparison.json``). Nothing
here imports ``training``: it is run as a separate process, so a crash or a long run never blocks the app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

PROGRESS_FILE = "progress.jsonl"  # written by training.fit into its output folder
COMPARISON_FILE = "comparison.json"  # written by training.compare: old and new model on the same clips


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
    pass


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


class Retrainer:
    def __init__(self, workdir: Path, out_root: Path, corpora: list[str], epochs: int = 10):
        self.workdir, self.out_root = Path(workdir), Path(out_root)
        self.corpora, self.epochs = list(corpora), epochs
        self._lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.out: Path | None = None
        self.log: Path | None = None
        self.total_epochs = epochs
        self.started = 0.0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, base_checkpoint: Path, base_card: dict, manifest: Path, extra_args: list[str] | None = None) -> Path:
        """Launch the fine-tuning run; raises :class:`RetrainBusy` if one is already running."""
        with self._lock:
            if self.running:
                raise RetrainBusy(f"a retraining run is already in progress ({self.out.name}); wait for it to finish")
            stamp = time.strftime("%Y%m%d-%H%M%S")
            name = f"{Path(base_checkpoint).name}-ft-{stamp}"
            self.out = self.out_root / name
            self.workdir.mkdir(parents=True, exist_ok=True)
            self.out_root.mkdir(parents=True, exist_ok=True)
            recipe = dict(base_card.get("training", {}).get("config", {}))
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
            fit = [sys.executable, "-m", "training.fit", "--config", str(config), *extra_args]
            # both models scored on the same clips, of speakers neither trained on: like for like
            compare = [sys.executable, "-m", "training.compare", str(base_checkpoint), str(self.out),
                       "--json", str(self.out / COMPARISON_FILE)]
            script = " ".join(map(_quote, fit)) + " && " + " ".join(map(_quote, compare))
            with open(self.log, "w") as logf:
                self.proc = subprocess.Popen(["bash", "-c", script], cwd=root, env=env, stdout=logf,
                                             stderr=subprocess.STDOUT)
            self.started = time.time()
            return self.out

    def status(self) -> dict:
        """``{"state": idle|running|done|failed, "epoch", "of", "dev_ua", "out", "elapsed_s", "tail"}`` plus,
        from the progress file, ``step``, ``total_steps``, ``loss``, ``eta_s``, ``error`` and, while running,
        ``phase``: ``preparing`` (no step yet), ``training`` or ``comparing`` (training is done, the
        comparison with the previous model runs); ``current_epoch`` is the epoch the last step belongs to."""
        if self.proc is None:
            return {"state": "idle"}
        text = self.log.read_text(errors="replace") if self.log and self.log.exists() else ""
        events = read_progress(self.out / PROGRESS_FILE)
        last = events[-1] if events else {}
        epochs = [e for e in events if e.get("event") == "epoch"]
        code = self.proc.poll()
        finished = code == 0 and (self.out / COMPARISON_FILE).exists()
        state = "running" if code is None else ("done" if finished else "failed")
        errors = [e.get("message") for e in events if e.get("event") == "error"]
        losses = [e["loss"] for e in events if e.get("loss") is not None]
        if state != "running":
            phase = state
        elif any(e.get("event") == "done" for e in events):
            phase = "comparing"
        else:
            phase = "training" if last.get("step") else "preparing"
        return {"state": state, "epoch": int(epochs[-1]["epoch"]) if epochs else 0,
                "of": int(last.get("epochs") or self.total_epochs),
                "dev_ua": epochs[-1].get("dev_ua") if epochs else None,
                "step": int(last.get("step") or 0), "total_steps": int(last.get("total_steps") or 0),
                "loss": losses[-1] if losses else None, "eta_s": last.get("eta_s"), "error": errors[-1] if errors else None,
                "phase": phase, "current_epoch": int(last.get("epoch") or 0),
                "out": str(self.out), "elapsed_s": time.time() - self.started,
                "tail": "\n".join(text.strip().splitlines()[-4:])}

    def comparison(self) -> str:
        """Markdown: the new checkpoint against the previous one, both scored on the same clips of speakers
        neither of them trained on (``training.compare``)."""
        path = self.out / COMPARISON_FILE if self.out is not None else None
        if path is None or not path.exists():
            return ""
        return comparison_markdown(json.loads(path.read_text()))

    def wait(self, timeout: float | None = None) -> dict:
        if self.proc is not None:
            self.proc.wait(timeout)
        return self.status()


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
