"""``python -m serdemo.timeline FILE... --out DIR`` (or ``python -m serdemo.timeline_cli``): emotion over
time for a batch of files, CSV, JSON and a label track each, with a progress bar in seconds of audio; one
worker process per core (and the GPU when there is one). A bad file is reported by name and skipped
(exit status 1).

``--engine ray`` (``--address`` for an existing cluster) analyses the files on a pool of Ray actors
(:mod:`serdemo.engines`): each actor loads one Predictor (:class:`TimelineWorker`), reads its recordings
itself (paths travel, audio does not) and returns the three exports as text, which this process writes
into ``--out``, so only the driver needs that folder. The files are the same as the local engine's."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from serdemo.audio import AudioError, AudioStream
from serdemo.fsutil import atomic_write
from serdemo.inference import Predictor
from serdemo.timeline import HOP_S, MAX_TIMELINE_S, MIN_GAP_S, WINDOW_S, Progress, analyze


def _analyze_one(args, progress: Progress | None = None) -> tuple[str, dict | str]:
    """Worker: one file -> (file name, written paths or the error message a person can act on)."""
    path, stem, out, checkpoint, device, threads, opts = args
    predictor = _PREDICTORS.get((checkpoint, device)) or Predictor.from_checkpoint(checkpoint, device)
    _PREDICTORS[(checkpoint, device)] = predictor
    torch.set_num_threads(threads)  # after loading: importing silero-vad sets torch to one thread
    try:
        tl = analyze(path, predictor, progress=progress, **opts)
    except AudioError as exc:
        return Path(path).name, str(exc)
    paths = tl.export(out, stem)
    return Path(path).name, {"paths": {k: str(v) for k, v in paths.items()}, "segments": len(tl.segments),
                             "duration_s": tl.duration_s, "elapsed_s": tl.elapsed_s}


_PREDICTORS: dict = {}  # per worker process: (checkpoint, device) -> Predictor


class TimelineWorker:
    """A Ray actor's side (``--engine ray``): one Predictor, loaded once; a recording in, its exports out."""

    def __init__(self, checkpoint, device=None, threads: int = 1):
        self.predictor = Predictor.from_checkpoint(checkpoint, device)
        torch.set_num_threads(int(threads))  # after loading, as _analyze_one does

    def analyze_task(self, payload) -> dict:
        """``[path, analyze options]`` -> the three exports' texts and the report's numbers, or ``error``."""
        path, opts = payload
        try:
            tl = analyze(path, self.predictor, **opts)
        except AudioError as exc:
            return {"error": str(exc)}
        return {"csv": tl.csv_text(), "json": tl.json_text(), "labels": tl.label_track(),
                "segments": len(tl.segments), "duration_s": tl.duration_s, "elapsed_s": tl.elapsed_s}


def write_exports(folder, stem: str, texts: dict) -> dict[str, Path]:
    """What :meth:`Timeline.export` writes (same names, atomically), from texts a worker sent."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"csv": folder / f"{stem}.csv", "json": folder / f"{stem}.json", "labels": folder / f"{stem}.labels.txt"}
    for key, path in paths.items():
        data = texts[key].encode("utf-8")
        atomic_write(path, lambda f, d=data: f.write(d))
    return paths


def _run_ray(work: list, args, threads: int, seconds: dict, bar) -> int:
    """The files on a Ray actor pool; the exports written here as they come back. Returns the failures."""
    from serdemo.engines import ray_map

    checkpoint = os.path.abspath(args.checkpoint)
    payloads = [(k, [os.path.abspath(w[0]), w[6]]) for k, w in enumerate(work)]
    failed = 0
    for k, res in ray_map(payloads, "serdemo.timeline_cli:TimelineWorker", (checkpoint, args.device, threads),
                          "analyze_task", workers=args.jobs or None, threads=threads, address=args.address):
        path, stem = work[k][0], work[k][1]
        if "error" in res:
            result: dict | str = res["error"]
        else:
            paths = write_exports(args.out, stem, res)
            result = {"paths": {key: str(v) for key, v in paths.items()}, "segments": res["segments"],
                      "duration_s": res["duration_s"], "elapsed_s": res["elapsed_s"]}
        failed += isinstance(result, str)
        bar.done(seconds[path], _message(Path(path).name, result))
    return failed


def _seconds(path) -> float:
    """The file's length from its header (for the progress bar); 0 for a file its worker will refuse."""
    try:
        return AudioStream(path, max_duration_s=float("inf"), min_duration_s=0.0).duration_s
    except AudioError:
        return 0.0


class _Bar:
    """tqdm over seconds of audio (tqdm is in requirements.txt); a plain line per file without it."""

    def __init__(self, total_s: float):
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=round(total_s, 1), desc="timeline", unit="s audio", dynamic_ncols=True,
                            file=sys.stderr)
        except ImportError:  # pragma: no cover
            self.bar = None
        self.base = 0.0

    def partial(self, seconds: float, fraction: float) -> None:
        if self.bar is not None:
            self.bar.n = round(self.base + fraction * seconds, 1)
            self.bar.refresh()

    def done(self, seconds: float, message: str) -> None:
        self.base += seconds
        if self.bar is None:
            print(message, file=sys.stderr)
            return
        self.bar.write(message, file=sys.stderr)
        self.bar.n = round(self.base, 1)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _message(name: str, result: dict | str) -> str:
    if isinstance(result, str):
        return f"{name}: skipped: {result}"
    p = result["paths"]
    return (f"{name}: {result['segments']} segments in {result['duration_s']:.1f} s of audio "
            f"({result['elapsed_s']:.1f} s) -> {Path(p['csv']).name}, {Path(p['json']).name}, "
            f"{Path(p['labels']).name}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serdemo.timeline",
                                description="Emotion over time for long recordings: CSV, JSON and a label "
                                            "track per file.")
    p.add_argument("files", nargs="+", help="audio files (wav, flac, ogg, mp3)")
    p.add_argument("--out", required=True, help="folder for FILE.csv, FILE.json and FILE.labels.txt")
    p.add_argument("--checkpoint", default=os.environ.get("SERDEMO_CHECKPOINT", "checkpoints/default"),
                   help="checkpoint folder (default checkpoints/default, or SERDEMO_CHECKPOINT)")
    p.add_argument("--device", default=os.environ.get("SERDEMO_DEVICE") or None, help="cpu or cuda (default: best)")
    p.add_argument("--jobs", type=int, default=0,
                   help="files analysed at once, each in its own worker process (default: one per core, at most "
                        "one per file)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads per worker (default 1: the windows are small, so one process per core "
                        "beats threads; on this 2-core machine, beside another busy process, 2 threads were "
                        "6x slower than 1)")
    p.add_argument("--max-duration", type=float, default=None, help=f"seconds (default {MAX_TIMELINE_S:.0f}, "
                   "or SERDEMO_MAX_TIMELINE_S)")
    p.add_argument("--window", type=float, default=WINDOW_S, help="window length in seconds")
    p.add_argument("--hop", type=float, default=HOP_S, help="step between windows in seconds")
    p.add_argument("--min-gap", type=float, default=MIN_GAP_S, help="shorter pauses stay inside a segment")
    p.add_argument("--no-adapt-voice", dest="adapt_voice", action="store_false",
                   help="read every window on its own (default: relative to the recording's voice, README "
                        "\"Adapting to the voice\")")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: worker processes on this machine (default); ray: a pool of Ray actors (--jobs "
                        "actors, default one per GPU of the cluster, else one per --threads CPUs)")
    p.add_argument("--address", default=None,
                   help="with --engine ray: an existing Ray cluster (auto, or HEAD:6379); default: a local Ray "
                        "started for this run")
    args = p.parse_args(argv)
    if args.address and args.engine != "ray":
        p.error("--address needs --engine ray")
    opts = dict(max_duration_s=args.max_duration, window_s=args.window, hop_s=args.hop, min_gap_s=args.min_gap,
                adapt_voice=args.adapt_voice)
    cores = os.cpu_count() or 1
    jobs = max(1, min(args.jobs or cores, len(args.files)))
    threads = max(1, args.threads)
    seconds = {f: _seconds(f) for f in args.files}
    stems: dict[str, int] = {}
    work = []
    for f in args.files:  # two inputs with the same name (in different folders) get -2, -3... outputs
        stem = Path(f).stem
        stems[stem] = stems.get(stem, 0) + 1
        work.append((f, stem if stems[stem] == 1 else f"{stem}-{stems[stem]}", args.out, args.checkpoint,
                     args.device, threads, opts))
    bar = _Bar(sum(seconds.values()))
    failed = 0
    try:
        if args.engine == "ray":
            from serdemo.engines import start_ray, stop_ray

            try:
                start_ray(args.address)
                failed = _run_ray(work, args, threads, seconds, bar)
            finally:
                stop_ray()
        elif jobs == 1:
            for w in work:
                name, result = _analyze_one(w, lambda f, _d, s=seconds[w[0]]: bar.partial(s, f))
                failed += isinstance(result, str)
                bar.done(seconds[w[0]], _message(name, result))
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            with ProcessPoolExecutor(jobs, mp_context=mp.get_context("spawn")) as pool:
                futures = {pool.submit(_analyze_one, w): w[0] for w in work}
                for fut in as_completed(futures):
                    name, result = fut.result()
                    failed += isinstance(result, str)
                    bar.done(seconds[futures[fut]], _message(name, result))
    except (OSError, RuntimeError, ValueError) as exc:  # e.g. the checkpoint cannot be read
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
