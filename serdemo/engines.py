"""The Ray engine behind ``--engine ray`` of ``python -m serdemo.score`` and ``python -m serdemo.timeline``.

Only this module imports Ray, and only when a run asks for it: the local engine needs no Ray installed.

What runs where. The driver (the command) lists the inputs and cuts them into *tasks* (a few dozen file
paths, or one voice's paths, or one recording for the timeline) exactly as the local engine does, so both
engines run the same batches and give the same numbers. The tasks, as small JSON strings, go to a pool of
plain Ray actors (:func:`ray_map`), each of which builds its worker object (a
:class:`serdemo.score.Scorer` or :class:`serdemo.timeline_cli.TimelineWorker`: one Predictor, loaded once
per actor) and runs task after task, two deep; the actor reads the audio files itself (paths travel, audio
does not) and returns small JSON results, which the driver receives as they complete. (Ray Data's
``map_batches`` on an actor pool did the same first; its scheduling loop and helper actors cost 24-39 % on
this 2-core machine, the plain pool 12-22 %: ``benchmarks/ray_overhead.py``.)

Resources: one GPU per actor where the cluster has GPUs (as many actors as GPUs), else ``threads`` CPUs per
actor (as many actors as CPUs allow). A dying actor (killed, out of memory, its node lost) is restarted by
Ray and its task retried on it (``max_restarts=-1``, ``max_task_retries``); a task's result is one value
returned whole, and the driver keeps only the first result of each task, so no file is lost or doubled. A file's own problem (unreadable, no speech) is its row or report line, never a task
failure. Test hook: with ``SERDEMO_TEST_DIE_ONCE=FILE`` set and FILE present, the first actor to start a
task deletes FILE and exits (``os._exit``), as a killed worker would.
"""

from __future__ import annotations

import importlib
import json
import os
import socket
from collections.abc import Iterable, Iterator
from pathlib import Path

TASK_RETRIES = 3  # a task that kills its actor this many times more fails the run (a poison file)
DIE_ONCE_ENV = "SERDEMO_TEST_DIE_ONCE"
PASSED_ENV = ("HF_HUB_OFFLINE", "SERDEMO_BF16", "SERDEMO_DEVICE", "SERDEMO_MAX_TIMELINE_S", "SERDEMO_CACHE",
              DIE_ONCE_ENV)  # the driver's settings the actors see too
ROOT = Path(__file__).resolve().parents[1]


class EngineError(RuntimeError):
    """Ray could not be started or reached (a message a person can act on)."""


_STARTED: list = []  # the Ray this module started itself (local), to stop at the end of the command


def start_ray(address: str | None = None):
    """Ray, connected: the running instance if this process already called ``ray.init``, else the cluster at
    ``address`` (``auto``, ``HOST:6379``, ``ray://HOST:10001``), else a local one on this machine's cores
    (whose workers inherit this process's environment, so they need no runtime environment of their own).
    Ray's usage statistics stay off unless ``RAY_USAGE_STATS_ENABLED`` says otherwise."""
    try:
        import ray
    except ImportError as exc:
        raise EngineError(f"--engine ray needs Ray: pip install ray ({exc})") from None
    if ray.is_initialized():
        return ray
    # no usage report (no network to send it to, and 1-2 s of the start-up on a small machine)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    kwargs = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True)
    if address:
        check_reachable(address)
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            os.environ["PYTHONPATH"] = _runtime_env()["env_vars"]["PYTHONPATH"]
            # a Ray for this command alone: nobody reads its metrics, whose agent would take CPU from the actors
            ray.init(num_cpus=os.cpu_count() or 1, _system_config={"enable_metrics_collection": False}, **kwargs)
            _STARTED.append(ray)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise EngineError(f"cannot start or reach Ray{f' at {address}' if address else ''}: {exc}") from None
    return ray


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` address must answer within ``timeout_s`` (Ray itself would retry for minutes);
    ``auto`` and ``ray://`` addresses are left to Ray."""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise EngineError(f"no Ray cluster answers at {address} ({type(exc).__name__}); start one there with "
                          "`ray start --head`, or leave out --address for a local Ray") from None


def stop_ray() -> None:
    """Shut down the local Ray that :func:`start_ray` started (a cluster, or a Ray the caller started, stays)."""
    while _STARTED:
        _STARTED.pop().shutdown()


def _runtime_env() -> dict:
    """What an actor needs to import serdemo the way this driver does (the repository on every node at the
    same path, or serdemo installed there) and the driver's serdemo settings."""
    env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(path))
    return {"env_vars": env}


class _Actor:
    """One actor of the pool: builds ``factory(*args)`` once, then calls its ``method`` on each task."""

    def __init__(self, factory: str, args: tuple, method: str):
        module, name = factory.split(":")
        self.worker = getattr(importlib.import_module(module), name)(*args)
        self.method = getattr(self.worker, method)

    def __call__(self, batch: dict) -> dict:
        flag = os.environ.get(DIE_ONCE_ENV)
        if flag:
            try:
                os.unlink(flag)
            except FileNotFoundError:
                pass
            else:
                os._exit(1)  # noqa: SLF001 - the test hook: a worker killed mid-run
        results = [json.dumps(self.method(json.loads(str(t)))) for t in batch["task"]]
        return {"key": batch["key"], "result": results}


def resources(ray, workers: int | None, threads: int) -> tuple[int, dict]:
    """``(actors, per-actor resources)``: one GPU each where the cluster has GPUs, else ``threads`` CPUs."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    if gpus:
        return max(1, min(workers or gpus, gpus)), {"num_gpus": 1, "num_cpus": 1}
    cpus = int(total.get("CPU", 1))
    return max(1, workers or cpus // max(1, threads)), {"num_cpus": threads}


class _CoreActor(_Actor):
    """:class:`_Actor` as a Ray actor: one task (a JSON string) per call, the same test hook."""

    def run(self, task: str) -> str:
        return self({"key": [0], "task": [task]})["result"][0]


def ray_map(tasks: Iterable[tuple[int, object]], factory: str, args: tuple, method: str, *,
            workers: int | None = None, threads: int = 1, address: str | None = None) -> Iterator[tuple[int, object]]:
    """Run ``factory(*args).method(payload)`` for every ``(key, payload)`` on a pool of Ray actors; yield
    ``(key, result)`` as tasks complete, each key once. Payloads and results must be JSON-able.

    A pool of plain Ray actors, each kept two tasks deep (one running, one waiting, so an actor never idles
    while the driver answers), rather than Ray Data's ``map_batches`` (tried first: on this 2-core machine its
    scheduling loop and helper actors made a run 24-39 % slower than the local engine; the plain pool does the
    same work with nothing between the driver and the actors). A dying actor is restarted by Ray and its task
    retried on it (``max_restarts=-1``, ``max_task_retries``); the driver keeps each key's first result."""
    import collections

    ray = start_ray(address)
    items = [(int(k), json.dumps(p)) for k, p in tasks]
    if not items:
        return
    actors, res = resources(ray, workers, threads)
    actors = min(actors, len(items))
    remote = ray.remote(max_restarts=-1, max_task_retries=TASK_RETRIES, **res)(_CoreActor)
    options = {} if _STARTED else {"runtime_env": _runtime_env()}
    pool = [remote.options(**options).remote(factory, args, method) for _ in range(actors)]
    waiting = collections.deque(items)
    running: dict = {}  # object ref -> (key, actor)

    def submit(actor) -> None:
        if waiting:
            key, task = waiting.popleft()
            running[actor.run.remote(task)] = (key, actor)

    for actor in pool:
        submit(actor)
        submit(actor)
    seen: set[int] = set()
    try:
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            key, actor = running.pop(done[0])
            result = ray.get(done[0])
            submit(actor)
            if key in seen:  # never a file twice, whatever a retry did
                continue
            seen.add(key)
            yield key, json.loads(result)
    except ray.exceptions.RayError as exc:
        last = (str(exc).strip().splitlines() or [""])[-1][:300]
        raise EngineError(f"the Ray job failed ({type(exc).__name__}): {last}") from None
    finally:
        for actor in pool:
            ray.kill(actor)
    if len(seen) != len(items):
        raise EngineError(f"{len(items) - len(seen)} of {len(items)} tasks came back without a result")


def ray_score(tasks, scorer_args: tuple, workers: int | None = None, address: str | None = None) -> Iterator[tuple[int, list[dict]]]:
    """:func:`serdemo.score.run_local`'s results, from a Ray actor pool (one :class:`Scorer` per actor)."""
    threads = int(scorer_args[2]) if len(scorer_args) > 2 and scorer_args[2] else 1
    payloads = ((key, [voice, files]) for key, voice, files in tasks)
    for key, rows in ray_map(payloads, "serdemo.score:Scorer", tuple(scorer_args), "score_task", workers=workers,
                             threads=threads, address=address):
        yield key, rows


__all__ = ["EngineError", "ray_map", "ray_score", "resources", "start_ray", "stop_ray"]
