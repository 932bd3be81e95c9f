"""``python -m serdemo.score INPUT... --out OUT.csv``: one emotion row per audio file, for a whole corpus.

INPUT: audio files, folders (searched recursively for :data:`AUDIO_EXTENSIONS`) or CSV manifests with a
``path`` column (relative paths resolved against the manifest's folder; every other column is copied to
the output). Each file gets one row: its input columns, ``label``, ``confidence``, ``p_<class>`` per class
of the checkpoint, ``voice_clips`` and ``status`` (``ok``, ``refused: <reason>`` for no speech, too short
or too long, ``error: <reason>`` for a file that cannot be read: the run goes on). Exit status 0 when every
row is ``ok`` or ``refused``, 1 when some are errors, 2 for a usage problem found before any work starts.

How the work is cut: the driver lists the files (and reads no audio) and cuts them into tasks of
:data:`TASK_FILES` files (with ``--voice-by``, one task per voice); a worker loads one
:class:`~serdemo.inference.Predictor` once and scores a task: it reads its files, finds their speech,
refuses what has too little, and runs the rest through :meth:`Predictor.predict_batch` in batches of
:data:`BATCH_SIZE`, sorted by length. The tasks are the same whatever the engine (``--engine local``: one
process per core; ``--engine ray``: :mod:`serdemo.engines`), so the same batches give the same numbers.
Rows are written in input order as they complete, into a temporary file renamed over ``OUT`` at the end.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from serdemo.audio import MAX_DURATION_S, MIN_DURATION_S, AudioError, AudioStream, check_duration, describe
from serdemo.csvsafe import write_csv

DEFAULT_CHECKPOINT = Path(__file__).resolve().parents[1] / "checkpoints" / "default"
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au", ".caf",
                    ".w64", ".rf64")  # what libsndfile (serdemo.audio's decoder) reads, by the usual names
TASK_FILES = 32  # files shipped to a worker at once (clip by clip)
BATCH_SIZE = 16  # clips per forward pass
OWN_COLUMNS = ("label", "confidence", "voice_clips", "status")  # plus p_<class>; an input column so named
# is kept as input_<name>


class UsageError(Exception):
    """A problem with the command line or the inputs, found before any work starts (exit status 2)."""


# ------------------------------------------------------------------------------------------ inputs
@dataclass
class Inputs:
    """What the driver holds: per file its path to read, its copied input cells (aligned with
    ``columns``) and its voice ("" = clip by clip). Tuples, not dicts: ~0.3 KB per file."""

    columns: list[str]
    files: list[tuple[str, tuple, str]]


def find_audio(folder: Path) -> list[Path]:
    """Audio files under ``folder`` (recursively), in a stable order."""
    out = []
    for root, dirs, names in os.walk(folder):
        dirs.sort()
        out.extend(Path(root) / n for n in sorted(names) if Path(n).suffix.lower() in AUDIO_EXTENSIONS)
    return out


def _manifest_header(path: Path) -> list[str]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), None)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read manifest '{path.name}': {type(exc).__name__}") from None
    if not header or "path" not in [h.strip() for h in header]:
        raise UsageError(f"manifest '{path.name}' has no 'path' column (its columns: "
                         f"{', '.join(h for h in (header or [])) or 'none'})")
    return [h.strip() for h in header]


def collect(inputs: list[str], voice_by: str | None = None) -> Inputs:
    """The files to score, in input order; raises :class:`UsageError` before any audio is read."""
    kinds = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise UsageError(f"input not found: {raw}")
        if p.is_dir():
            kinds.append(("folder", p, None))
        elif p.suffix.lower() == ".csv":
            kinds.append(("manifest", p, _manifest_header(p)))
        else:
            kinds.append(("file", p, None))
    manifests = [k for k in kinds if k[0] == "manifest"]
    if voice_by is not None:
        if not manifests:
            raise UsageError(f"--voice-by {voice_by} needs a CSV manifest with a '{voice_by}' column")
        for _, p, header in manifests:
            if voice_by not in header:
                raise UsageError(f"manifest '{p.name}' has no '{voice_by}' column for --voice-by "
                                 f"(its columns: {', '.join(header)})")
    columns = ["path"]
    for _, _, header in manifests:
        for h in header:
            name = f"input_{h}" if (h in OWN_COLUMNS or h.startswith("p_")) else h
            if name not in columns and h != "path":
                columns.append(name)
    position = {c: i for i, c in enumerate(columns)}
    files: list[tuple[str, tuple, str]] = []
    blank = ("",) * (len(columns) - 1)
    for kind, p, header in kinds:
        if kind == "file":
            files.append((os.path.abspath(p), (str(p),) + blank, ""))
        elif kind == "folder":
            files.extend((os.path.abspath(f), (str(f),) + blank, "") for f in find_audio(p))
        else:
            files.extend(_manifest_rows(p, header, position, voice_by))
    return Inputs(columns, files)


def _manifest_rows(path: Path, header: list[str], position: dict, voice_by: str | None):
    names = [f"input_{h}" if (h in OWN_COLUMNS or h.startswith("p_")) else h for h in header]
    base = path.resolve().parent
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue  # blank line
            row = dict(zip(header, cells))
            out = [""] * len(position)
            for name, h in zip(names, header):
                out[position[name]] = row.get(h, "")
            rel = row.get("path", "").strip()
            target = str(base / rel) if rel else ""
            voice = row.get(voice_by, "").strip() if voice_by else ""
            yield target, tuple(out), voice


# ------------------------------------------------------------------------------------------ tasks
def make_tasks(inputs: Inputs, task_files: int = TASK_FILES) -> list[tuple[int, bool, list[tuple[int, str]]]]:
    """``(task id, one voice?, [(row index, path), ...])``: clip-by-clip files in runs of ``task_files``
    in input order; with voices, one task per voice (all its clips, wherever they are in the input),
    placed where its first clip is. The same whatever the engine."""
    tasks: list[tuple[bool, list]] = []
    groups: dict[str, list] = {}
    run: list | None = None
    for i, (path, _, voice) in enumerate(inputs.files):
        if voice:
            if voice not in groups:
                groups[voice] = []
                tasks.append((True, groups[voice]))
            groups[voice].append((i, path))
            continue
        if run is None or len(run) >= task_files:
            run = []
            tasks.append((False, run))
        run.append((i, path))
    return [(k, voice, files) for k, (voice, files) in enumerate(tasks)]


# ------------------------------------------------------------------------------------------ worker
class Scorer:
    """A worker's side: one :class:`Predictor` (loaded once) that scores tasks of files.

    :meth:`score` returns, per file, ``{"index", "status", "label", "confidence", "probs" (list in
    :attr:`classes` order), "voice_clips", "duration_s"}``; a file's problem is its row's status, never
    an exception."""

    def __init__(self, checkpoint=None, device=None, threads: int = 1, max_duration_s: float = MAX_DURATION_S,
                 predictor=None, batch_size: int = BATCH_SIZE):
        import torch

        from serdemo.inference import Predictor

        self.predictor = predictor if predictor is not None else Predictor.from_checkpoint(checkpoint, device)
        if threads:
            torch.set_num_threads(int(threads))  # after loading: importing silero-vad sets torch to one thread
        self.classes = list(self.predictor.heads["emotion"])
        self.max_duration_s = float(max_duration_s)
        self.batch_size = int(batch_size)

    # one file -> (wave or None, status, seconds of audio)
    def read(self, path: str) -> tuple[np.ndarray | None, str, float]:
        if not path:
            return None, "error: the manifest row has an empty path", 0.0
        try:
            header = AudioStream(path, max_duration_s=float("inf"), min_duration_s=0.0)
        except AudioError as exc:
            return None, f"error: {exc}", 0.0
        except Exception as exc:  # noqa: BLE001 - a file's problem is its row, and messages name no folder
            return None, f"error: {describe(path)} could not be opened ({type(exc).__name__})", 0.0
        seconds = header.duration_s
        try:
            check_duration(seconds, header.label, self.max_duration_s, MIN_DURATION_S)
        except AudioError as exc:
            return None, f"refused: {exc}", seconds
        try:
            wave = self.predictor.load(path, self.max_duration_s)
        except AudioError as exc:
            text = str(exc)
            return None, (f"refused: {text}" if _is_refusal(text) else f"error: {text}"), seconds
        except Exception as exc:  # noqa: BLE001
            return None, f"error: {describe(path)} could not be decoded ({type(exc).__name__})", seconds
        return wave, "ok", len(wave) / self.predictor.features.sample_rate

    def _row(self, index: int, status: str, seconds: float, pred=None, voice_clips=None) -> dict:
        row = {"index": index, "status": status, "duration_s": seconds, "label": "", "confidence": None,
               "probs": None, "voice_clips": voice_clips}
        if pred is not None:
            probs = pred.probabilities["emotion"]
            row.update(label=pred.label(), confidence=pred.confidence(), probs=[probs[c] for c in self.classes],
                       voice_clips=int(getattr(pred, "voice_clips", 0) or 0))
        return row

    def _prepare(self, files: list[tuple[int, str]]):
        """Read every file and find its speech: (rows of files that are done, the speech clips left)."""
        from serdemo.vad import MIN_TOTAL_SPEECH_S

        done, waves = [], []
        for index, path in files:
            wave, status, seconds = self.read(path)
            if wave is None:
                done.append(self._row(index, status, seconds))
            else:
                waves.append((index, wave, seconds))
        masks = self.predictor.speech_masks([w for _, w, _ in waves]) if waves else []
        clips = []
        for (index, wave, seconds), mask in zip(waves, masks):
            if self.predictor.detector.speech_seconds(mask) < MIN_TOTAL_SPEECH_S:
                done.append(self._row(index, f"refused: no speech: less than {MIN_TOTAL_SPEECH_S:.1f} s of "
                                             "speech detected (noise, music or tones?)", seconds))
            else:
                clips.append((index, wave, mask, seconds))
        return done, clips

    def score(self, files: list[tuple[int, str]], voice: bool = False) -> list[dict]:
        """Score ``[(row index, path)]``: clip by clip, or (``voice``) as the clips of one voice."""
        done, clips = self._prepare(files)
        if voice and clips:
            return done + self._score_voice(clips)
        clips.sort(key=lambda c: len(c[1]))
        for start in range(0, len(clips), self.batch_size):
            batch = clips[start:start + self.batch_size]
            try:
                preds = self.predictor.predict_batch([c[1] for c in batch], speech=[c[2] for c in batch],
                                                     alpha=None)
            except Exception as exc:  # noqa: BLE001 - e.g. out of memory: these rows say so, the run goes on
                done.extend(self._row(c[0], f"error: the model failed on this clip ({type(exc).__name__})", c[3])
                            for c in batch)
                continue
            done.extend(self._row(c[0], "ok", c[3], p, 0) for c, p in zip(batch, preds))
        return done

    def score_task(self, payload) -> list[dict]:
        """:meth:`score` for a task as it travels (JSON): ``[one voice?, [[row index, path], ...]]``."""
        voice, files = payload
        return self.score([(int(i), str(p)) for i, p in files], bool(voice))

    def _score_voice(self, clips) -> list[dict]:
        """The clips of one voice, each adapted to all of them (:meth:`Predictor.predict_voice`), in batches
        sorted by length; a checkpoint that does not adapt reads them clip by clip (``voice_clips`` 0)."""
        clips = sorted(clips, key=lambda c: len(c[1]))
        try:
            preds = self.predictor.predict_voice([c[1] for c in clips], speech=[c[2] for c in clips], alpha=None,
                                                 batch_size=self.batch_size)
        except Exception as exc:  # noqa: BLE001
            return [self._row(c[0], f"error: the model failed on this voice ({type(exc).__name__})", c[3])
                    for c in clips]
        return [self._row(c[0], "ok", c[3], p) for c, p in zip(clips, preds)]


def _is_refusal(text: str) -> bool:
    """The decoder's refusals that are not a broken file: too short or too long once decoded (a
    compressed file's header may be a little off), or digital silence (no speech at all)."""
    return ("ms long; at least" in text) or (" lasts " in text) or ("digital silence" in text)


# ------------------------------------------------------------------------------------------ engines
_WORKER: dict = {}


def _init_worker(checkpoint, device, threads, max_duration_s) -> None:
    _WORKER["scorer"] = Scorer(checkpoint, device, threads, max_duration_s)


def _score_task(task) -> tuple[int, list[dict]]:
    key, voice, files = task
    return key, _WORKER["scorer"].score(files, voice)


def run_local(tasks, workers: int, scorer_args: tuple, scorer: Scorer | None = None) -> Iterator[tuple[int, list[dict]]]:
    """Tasks -> ``(task id, rows)`` as they complete: in this process with one worker (or a given
    ``scorer``), else in ``workers`` spawned processes, each loading its Predictor once."""
    if scorer is not None or workers <= 1:
        scorer = scorer or Scorer(*scorer_args)
        for key, voice, files in tasks:
            yield key, scorer.score(files, voice)
        return
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = iter(tasks)
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                             initargs=scorer_args) as pool:
        running = set()
        while True:
            while len(running) < 2 * workers:  # a bounded window: the driver holds few tasks' rows
                task = next(pending, None)
                if task is None:
                    break
                running.add(pool.submit(_score_task, task))
            if not running:
                return
            finished, running = wait(running, return_when=FIRST_COMPLETED)
            for fut in finished:
                yield fut.result()


# ------------------------------------------------------------------------------------------ output
class Progress:
    """tqdm on stderr: files, hours of audio, ETA (by files)."""

    def __init__(self, total: int, desc: str = "score"):
        from tqdm import tqdm

        self.bar = tqdm(total=total, desc=desc, unit="file", dynamic_ncols=True, file=sys.stderr)
        self.seconds = 0.0

    def update(self, files: int, seconds: float) -> None:
        self.seconds += seconds
        self.bar.set_postfix_str(f"{self.seconds / 3600:.2f} h audio", refresh=False)
        self.bar.update(files)

    def close(self) -> None:
        self.bar.close()


def output_rows(inputs: Inputs, classes: list[str], results: Iterable[tuple[int, list[dict]]],
                progress: Progress | None = None, counts: dict | None = None) -> Iterator[dict]:
    """Worker rows -> output rows in input order, each yielded as soon as every earlier one is in."""
    pending: dict[int, dict] = {}
    nxt = 0
    counts = {} if counts is None else counts
    for _, rows in results:
        for r in rows:
            pending[r["index"]] = r
        if progress is not None:
            progress.update(len(rows), sum(r["duration_s"] for r in rows))
        while nxt in pending:
            r = pending.pop(nxt)
            kind = r["status"].split(":", 1)[0]
            counts[kind] = counts.get(kind, 0) + 1
            yield _out_row(inputs, classes, nxt, r)
            nxt += 1
    if pending or nxt != len(inputs.files):  # a worker lost or doubled a file: never write a partial table
        raise RuntimeError(f"{len(inputs.files) - nxt} of {len(inputs.files)} files came back without a row")


def _out_row(inputs: Inputs, classes: list[str], index: int, r: dict) -> dict:
    row = dict(zip(inputs.columns, inputs.files[index][1]))
    ok = r["probs"] is not None
    row["label"] = r["label"]
    row["confidence"] = round(r["confidence"], 6) if ok else ""
    for c, p in zip(classes, r["probs"] or [None] * len(classes)):
        row[f"p_{c}"] = round(p, 6) if ok else ""
    row["voice_clips"] = r["voice_clips"] if r["voice_clips"] is not None else ""
    row["status"] = r["status"]
    return row


# ------------------------------------------------------------------------------------------ command line
class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2, no usage block
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m serdemo.score",
                description="Emotion per audio file for folders, files and CSV manifests: one CSV row each.")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="audio files, folders (searched recursively) or CSV manifests with a 'path' column")
    p.add_argument("--out", required=True, help="the CSV to write (atomically)")
    p.add_argument("--checkpoint", default=os.environ.get("SERDEMO_CHECKPOINT") or str(DEFAULT_CHECKPOINT),
                   help="checkpoint folder (default: the shipped checkpoints/default, or SERDEMO_CHECKPOINT)")
    p.add_argument("--voice-by", default=None, metavar="COLUMN",
                   help="manifest column naming the voice (e.g. speaker): clips of one voice are adapted "
                        "together; an empty value is scored clip by clip")
    p.add_argument("--workers", type=int, default=None,
                   help="workers, each with its own model (default: one per core; with Ray, one per GPU of the "
                        "cluster, else one per --threads CPUs of the cluster)")
    p.add_argument("--task-files", type=int, default=TASK_FILES,
                   help=f"files sent to a worker at once (default {TASK_FILES}); with --voice-by a voice is one task")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    p.add_argument("--device", default=os.environ.get("SERDEMO_DEVICE") or None, help="cpu or cuda (default: best)")
    p.add_argument("--max-duration", type=float, default=MAX_DURATION_S,
                   help=f"longer files are refused (seconds, default {MAX_DURATION_S:.0f})")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: a pool of Ray actors")
    p.add_argument("--address", default=None,
                   help="with --engine ray: an existing Ray cluster (e.g. auto, or HEAD:6379); default: a "
                        "local Ray started for this run")
    return p


def run(args, scorer: Scorer | None = None) -> int:
    """The command after parsing; raises :class:`UsageError` for what must stop it before any work."""
    from serdemo.checkpoint import CheckpointError, read_card

    if min(1 if args.workers is None else args.workers, args.threads, args.task_files) < 1:
        raise UsageError("--workers, --threads and --task-files must be at least 1")
    if not args.max_duration > 0:
        raise UsageError("--max-duration must be positive")
    out = Path(args.out)
    if not out.parent.is_dir():
        raise UsageError(f"the folder of --out does not exist: {out.parent}")
    if args.address and args.engine != "ray":
        raise UsageError("--address needs --engine ray")
    if scorer is None:
        try:
            card = read_card(args.checkpoint)
            classes = list(card["heads"]["emotion"])
            adapts = card["model"].get("hparams", {}).get("voice", "none") not in (None, "none")
        except (CheckpointError, OSError, KeyError, TypeError, AttributeError) as exc:
            raise UsageError(f"cannot use checkpoint {args.checkpoint}: {exc}") from None
    else:
        classes = scorer.classes
        adapts = bool(getattr(scorer.predictor, "adapts", False))
        scorer.max_duration_s = float(args.max_duration)
    inputs = collect(args.inputs, args.voice_by)
    if args.voice_by and not adapts:
        print(f"note: checkpoint {Path(args.checkpoint).name} does not adapt to voices: --voice-by changes "
              "nothing (voice_clips 0)", file=sys.stderr)
    tasks = make_tasks(inputs, args.task_files)
    scorer_args = (os.path.abspath(args.checkpoint), args.device, args.threads, args.max_duration)
    if args.engine == "ray":
        try:
            import ray  # noqa: F401 - only here: the local engine needs no Ray
        except ImportError as exc:
            raise UsageError(f"--engine ray needs Ray (pip install ray): {exc}") from None
        from serdemo.engines import ray_score, start_ray

        start_ray(args.address)  # before the bar: a cluster that cannot be reached stops here (EngineError)
        results = ray_score(tasks, scorer_args, workers=args.workers, address=args.address)
    else:
        workers = args.workers or os.cpu_count() or 1
        results = run_local(tasks, min(workers, max(1, len(tasks))), scorer_args, scorer)
    fieldnames = inputs.columns + ["label", "confidence"] + [f"p_{c}" for c in classes] + ["voice_clips", "status"]
    progress = Progress(len(inputs.files))
    counts: dict[str, int] = {}
    t0 = time.perf_counter()
    try:
        write_csv(out, fieldnames, output_rows(inputs, classes, results, progress, counts))
    finally:
        progress.close()
        if args.engine == "ray":
            from serdemo.engines import stop_ray

            stop_ray()
    print(f"{len(inputs.files)} files in {time.perf_counter() - t0:.1f} s ({progress.seconds / 3600:.2f} h of "
          f"audio): {counts.get('ok', 0)} ok, {counts.get('refused', 0)} refused, {counts.get('error', 0)} "
          f"errors -> {out}", file=sys.stderr)
    return 1 if counts.get("error") else 0


def main(argv: list[str] | None = None, scorer: Scorer | None = None) -> int:
    from concurrent.futures.process import BrokenProcessPool

    from serdemo.checkpoint import CheckpointError
    from serdemo.engines import EngineError

    args = parser().parse_args(argv)
    try:
        return run(args, scorer)
    except UsageError as exc:
        print(f"python -m serdemo.score: error: {exc}", file=sys.stderr)
        return 2
    except (CheckpointError, BrokenProcessPool, EngineError) as exc:  # a worker could not load the model: nothing written
        print(f"python -m serdemo.score: error: {exc or type(exc).__name__}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
