"""The disk budget outside the store, and the sweep that enforces it.

What the server writes outside its store is temporary: Gradio's upload cache (every uploaded file,
every file a route returns), served exports, timeline exports and live recordings (``serdemo-*``
folders in the temp folder), and retraining runs' outputs. :func:`sweep` deletes what is older than
``max_age_s`` and, while the total is over ``budget_bytes``, the oldest first (never anything younger
than ``min_age_s``: a request may still be reading it). :class:`Sweeper` runs it every ``every_s`` in a
daemon thread, with the live sessions' idle check (:func:`serdemo.live.release_idle`) and the page
sessions' (:class:`SessionKeeper`, :mod:`serdemo.sessions`): Gradio keeps a state per session (every ``/gradio_api/call`` is a new one)
and by default up to 10,000 of them, each with a copy of every component's config (~250 kB here); the keeper
makes that copy lazy (:func:`lean_session_state`) and forgets sessions unused for ``SERDEMO_SESSION_IDLE_S``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from serdemo.envsettings import env_number
from serdemo.export import EXPORT_PREFIX, remove_old_exports
from serdemo.sessions import (MAX_PAGE_SESSIONS, SESSION_IDLE_S, UNREAD_RESULT_S, SessionKeeper,  # noqa: F401
                              lean_session_state, limit_malloc_arenas, log_memory, max_page_sessions,
                              memory_report, release_freed_memory, session_idle_s)

UPLOAD_ROUTE = "/upload"  # Gradio's upload route (under its API prefix)
MEASURE_EVERY_S = 5.0  # the disk use an upload is checked against is measured at most this often

log = logging.getLogger("serdemo.housekeeping")

LIVE_PREFIX = "serdemo-live-"
TEMP_PREFIXES = (EXPORT_PREFIX, LIVE_PREFIX)  # serdemo's own folders in the temp folder (timeline exports included)
DISK_BUDGET_BYTES = 1 << 30  # 1 GiB outside the store: Gradio's cache + serdemo's temp folders
MAX_AGE_S = 3600.0  # uploads, exports and recordings are kept an hour
MIN_AGE_S = 120.0  # never delete what is younger: a request may still be reading or serving it
SWEEP_EVERY_S = 60.0
KEEP_RUNS = 3  # retraining runs whose outputs are kept (the newest; never the running one)


def budget_bytes() -> int:
    """``SERDEMO_DISK_BUDGET_MB`` (default 1024) in bytes."""
    return max(1, int(env_number("SERDEMO_DISK_BUDGET_MB", DISK_BUDGET_BYTES >> 20) * (1 << 20)))


def temp_max_age_s() -> float:
    """``SERDEMO_TEMP_MAX_AGE_S`` (default 3600): how long uploads, exports and recordings are kept."""
    return env_number("SERDEMO_TEMP_MAX_AGE_S", MAX_AGE_S, low=0.0)


def gradio_cache_dir() -> Path:
    """Where Gradio keeps uploads and served files (its own rule: GRADIO_TEMP_DIR or <temp>/gradio)."""
    return Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")


def size_of(path: Path) -> int:
    """Bytes under ``path`` (a file or a folder; links not followed; vanished files count 0)."""
    try:
        if path.is_symlink() or path.is_file():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` or anything under it (a folder's files count)."""
    try:
        latest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for root, _dirs, files in os.walk(path):
            for name in files:
                try:
                    latest = max(latest, os.lstat(os.path.join(root, name)).st_mtime)
                except OSError:
                    pass
    return latest


def _remove(path: Path) -> bool:
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("could not remove a temporary entry (%s)", type(exc).__name__)
        return False



SWEPT_PREFIX = ".serdemo-swept-"  # a file being swept is renamed to this first (then deleted, or put back)


def _remove_stale_files(folder: Path, older_than: float) -> tuple[int, bool]:
    """Delete the files under one of Gradio's cache folders last modified before ``older_than``, each on its
    own, never the folder at once: Gradio's upload folders are named by content, so a re-upload of the same
    clip lands in a folder the sweep may be walking (``rmtree`` took it with the folder). Each file is renamed
    aside first and looked at again: one that a re-upload replaced meanwhile is fresh and is put back. A folder
    left empty goes if nothing had been written into it for as long (one a re-upload just wrote into is kept).
    Returns (bytes freed, whether the folder is gone or left empty)."""
    freed, kept = 0, 0
    before = {}  # each folder's own time before the sweep renamed anything in it
    for root, _dirs, _files in os.walk(folder):
        try:
            before[root] = os.lstat(root).st_mtime
        except OSError:
            pass
    for root, dirs, files in os.walk(folder, topdown=False):
        for name in files:
            path = os.path.join(root, name)
            kept += 1
            try:
                if os.lstat(path).st_mtime >= older_than:
                    continue
                aside = os.path.join(root, f"{SWEPT_PREFIX}{name}" if not name.startswith(SWEPT_PREFIX) else name)
                if aside != path:
                    os.rename(path, aside)
                st = os.lstat(aside)
                if st.st_mtime >= older_than:  # replaced by a re-upload between the look and the rename
                    os.rename(aside, path)  # same folder, same name: the same content
                    continue
                os.unlink(aside)
                freed += st.st_size
                kept -= 1
            except FileNotFoundError:
                kept -= 1
                continue
            except OSError as exc:
                log.warning("could not remove a temporary file (%s)", type(exc).__name__)
        for name in dirs:
            _rmdir_if_stale(Path(root) / name, older_than, before.get(os.path.join(root, name), older_than))
    return freed, _rmdir_if_stale(folder, older_than, before.get(str(folder), older_than)) or kept == 0


def _rmdir_if_stale(folder: Path, older_than: float, mtime: float) -> bool:
    """Remove ``folder`` if it is empty and nothing was written into it since ``older_than`` (``mtime``: its
    time before the sweep renamed files in it)."""
    try:
        if folder.is_symlink() or mtime >= older_than:
            return False
        folder.rmdir()  # only when empty
        return True
    except FileNotFoundError:
        return True
    except OSError:  # not empty (something landed), or not ours to remove
        return False


class UploadsInUse:
    """The files that events waiting in Gradio's queue or running reference (an ``/analyze``'s upload, a live
    chunk): the sweep never deletes them, and touches them so that a file's age counts from its last use, not
    its upload. Gradio passes an uploaded file's path through to the function untouched, so an upload whose
    event waited past the age limit (the benchmark's 60 s) was deleted before it was read: "does not exist.
    Upload it again". ``blocks`` is the app (its ``_queue``)."""

    MAX_VALUES = 10_000  # values looked at per event (arguments are bounded by the body limit anyway)

    def __init__(self, blocks):
        self.blocks = blocks

    def events(self) -> list:
        queue = getattr(self.blocks, "_queue", None)
        if queue is None:
            return []
        found = []
        try:
            found += list((getattr(queue, "event_ids_to_events", None) or {}).values())
            for job in list(getattr(queue, "active_jobs", None) or []):
                found += list(job or ())
            for group in list((getattr(queue, "event_queue_per_concurrency_id", None) or {}).values()):
                found += list(getattr(group, "queue", None) or ())
        except RuntimeError:  # changed while read: the next sweep looks again
            pass
        return found

    def __call__(self) -> set[str]:
        paths: set[str] = set()
        for event in self.events():
            body = getattr(event, "data", None)
            paths_in(getattr(body, "data", None), paths, self.MAX_VALUES)
        return paths


def paths_in(value, found: set[str], budget: int = 10_000) -> int:
    """Add every file path in ``value`` (Gradio's file payloads: ``{"path": ...}`` or objects with ``.path``,
    nested in lists and dicts; absolute path strings) to ``found``; returns the values left to look at."""
    stack = [value]
    while stack and budget > 0:
        item = stack.pop()
        budget -= 1
        if isinstance(item, str):
            if os.path.isabs(item) and len(item) < 4096:
                found.add(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            path = getattr(item, "path", None)
            if isinstance(path, str):
                found.add(path)
    return budget


def busy_entries(in_use, gradio_dir: Path, now: float | None = None) -> set[str]:
    """The names of the entries of Gradio's cache that hold a file in use (``in_use``: a callable returning
    paths, or paths); each such file is touched (its age counts from this use)."""
    if in_use is None:
        return set()
    try:
        paths = in_use() if callable(in_use) else in_use
    except Exception as exc:  # noqa: BLE001 - the sweep then keeps only what is young
        log.warning("could not list the files in use (%s)", type(exc).__name__)
        return set()
    root = os.path.realpath(gradio_dir)
    names = set()
    for path in paths or ():
        real = os.path.realpath(path)
        if not real.startswith(root + os.sep):
            continue
        names.add(real[len(root) + 1:].split(os.sep, 1)[0])
        try:
            os.utime(real, (now, now) if now is not None else None)
        except OSError:
            pass
    return names


@dataclass
class SweepReport:
    removed: int = 0
    freed_bytes: int = 0
    used_bytes: int = 0  # after the sweep
    runs_removed: int = 0
    sessions_released: int = 0
    page_sessions_dropped: int = 0
    results_dropped: int = 0
    entries: list[str] = field(default_factory=list)


def temp_entries(gradio_dir: Path, work_dir: Path) -> list[Path]:
    """Everything the budget covers: each entry of Gradio's cache, and serdemo's folders in ``work_dir``."""
    found: list[Path] = []
    if gradio_dir.is_dir():
        found += [p for p in gradio_dir.iterdir()]
    if work_dir.is_dir() and work_dir.resolve() != gradio_dir.resolve():
        found += [p for p in work_dir.iterdir() if p.name.startswith(TEMP_PREFIXES)]
    return found


def sweep(gradio_dir=None, work_dir=None, budget: int | None = None, max_age_s: float | None = None,
          min_age_s: float = MIN_AGE_S, now: float | None = None, retrainer=None,
          keep_runs: int = KEEP_RUNS, sessions: "SessionKeeper | None" = None, in_use=None) -> SweepReport:
    """Delete temporary files past ``max_age_s``, then the oldest until under ``budget`` bytes; prune old
    retraining runs (``retrainer.prune``); forget idle page sessions (``sessions``). Returns what it did.
    ``in_use`` (:class:`UploadsInUse`, or paths): files a waiting or running event references; they are
    never deleted, and their age counts from now. In Gradio's cache each file goes on its own age
    (:func:`_remove_stale_files`), so a re-upload into a folder being swept survives."""
    gradio_dir = Path(gradio_dir) if gradio_dir is not None else gradio_cache_dir()
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    budget = budget_bytes() if budget is None else budget
    max_age_s = temp_max_age_s() if max_age_s is None else max_age_s
    now = time.time() if now is None else now
    report = SweepReport()
    for prefix in TEMP_PREFIXES:  # serdemo's own folders by age (the export module's rule)
        report.removed += remove_old_exports(work_dir, older_than_s=max_age_s, now=now, prefix=prefix)
    busy = busy_entries(in_use, gradio_dir, now)
    cache = gradio_dir.resolve() if gradio_dir.is_dir() else gradio_dir

    def remove(entry: Path, older_than: float) -> tuple[int, bool]:
        if entry.parent.resolve() == cache and entry.is_dir() and not entry.is_symlink():
            return _remove_stale_files(entry, older_than)
        size = size_of(entry)
        return (size, True) if _remove(entry) else (0, False)

    aged = []
    for entry in temp_entries(gradio_dir, work_dir):
        if entry.name in busy and entry.parent.resolve() == cache:
            aged.append((now, size_of(entry), entry))  # in use: counted, never removed
            continue
        mtime, size = newest_mtime(entry), size_of(entry)
        if now - mtime > max_age_s:
            freed, gone = remove(entry, now - max_age_s)
            report.freed_bytes += freed
            if gone:
                report.removed += 1
                report.entries.append(entry.name)
            if freed >= size or gone:
                continue
            size -= freed
        aged.append((mtime, size, entry))
    used = sum(size for _m, size, _e in aged)
    for mtime, size, entry in sorted(aged, key=lambda t: t[0]):  # oldest first, while over the budget
        if used <= budget:
            break
        if now - mtime < min_age_s or (entry.name in busy and entry.parent.resolve() == cache):
            continue
        freed, gone = remove(entry, now - min_age_s)
        used -= freed
        report.freed_bytes += freed
        if gone:
            report.removed += 1
            report.entries.append(entry.name)
    report.used_bytes = used
    if retrainer is not None:
        report.runs_removed = retrainer.prune(keep=keep_runs)
    try:
        from serdemo.live import release_idle
        report.sessions_released = release_idle()
    except ImportError:  # pragma: no cover - live needs torch; the sweep does not
        pass
    if sessions is not None:
        report.page_sessions_dropped = sessions.drop_idle()
        report.results_dropped = sessions.drop_unread()
    release_freed_memory()  # what the sweep, released recordings and forgotten sessions freed, and analyses
    log_memory(getattr(sessions, "blocks", None))  # SERDEMO_MEMORY_LOG=1: where the memory is, each sweep
    if (report.removed or report.runs_removed or report.sessions_released or report.page_sessions_dropped
            or report.results_dropped):
        log.info("housekeeping: removed %d temporary entries (%.1f MB), %d retraining runs, released %d idle "
                 "live sessions, forgot %d idle page sessions and %d sessions' unread results; %.1f MB of %.0f MB "
                 "used", report.removed, report.freed_bytes / 1e6, report.runs_removed, report.sessions_released,
                 report.page_sessions_dropped, report.results_dropped, used / 1e6, budget / 1e6)
    return report


def upload_bytes(size: str) -> int:
    """Gradio's ``max_file_size`` text (``50mb``, ``1gb``, ``500kb``, a number of bytes) in bytes."""
    text = str(size).strip().lower()
    for suffix, scale in (("gb", 1 << 30), ("mb", 1 << 20), ("kb", 1 << 10), ("b", 1)):
        if text.endswith(suffix):
            try:
                return int(float(text[:-len(suffix)]) * scale)
            except ValueError:
                break
    try:
        return int(float(text))
    except ValueError:
        return 50 << 20


def temp_usage(gradio_dir=None, work_dir=None) -> int:
    """Bytes the budget covers now (Gradio's cache and serdemo's temporary folders)."""
    gradio_dir = Path(gradio_dir) if gradio_dir is not None else gradio_cache_dir()
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    return sum(size_of(entry) for entry in temp_entries(gradio_dir, work_dir))


CLIENT_UPLOAD_WINDOW_S = 600.0  # a client address's uploads are counted over this long ...
CLIENT_UPLOAD_SHARE = 0.25  # ... and may reach this share of the disk budget (SERDEMO_UPLOAD_PER_CLIENT_MB)


def client_upload_bytes() -> int:
    try:
        return int(float(os.environ["SERDEMO_UPLOAD_PER_CLIENT_MB"]) * 1e6)
    except (KeyError, ValueError):
        return int(budget_bytes() * CLIENT_UPLOAD_SHARE)


class UploadBudget:
    """The disk budget checked when an upload arrives, not only by the minute's sweep: an upload that would
    take the temporary folders over :func:`budget_bytes` first has the sweep run (what is old or over the budget
    goes, oldest first), and is refused if it still does not fit. Use is measured at most every
    :data:`MEASURE_EVERY_S` seconds; the uploads admitted meanwhile are added to it. One client address may
    upload at most ``per_client`` bytes (:func:`client_upload_bytes`, a quarter of the budget) in
    :data:`CLIENT_UPLOAD_WINDOW_S`, so one client's burst (60 x 45 MB) cannot fill the disk for everyone."""

    def __init__(self, gradio_dir=None, work_dir=None, budget: int | None = None, clock=time.monotonic,
                 per_client: int | None = None, **sweep_kwargs):
        self.gradio_dir, self.work_dir, self.budget, self.clock = gradio_dir, work_dir, budget, clock
        self.per_client = per_client
        self.sweep_kwargs = sweep_kwargs
        self._lock = threading.Lock()
        self._used, self._measured = 0, -math.inf
        self._by_client: dict[str, list[tuple[float, int]]] = {}  # address -> [(when, bytes)] in the window
        self.refused = 0
        self.refused_client = 0

    def client_share(self) -> int:
        return client_upload_bytes() if self.per_client is None else int(self.per_client)

    def admit_client(self, client: str | None, nbytes: int) -> bool:
        """Whether ``client`` may upload ``nbytes`` more within its share (it is then counted)."""
        if not client:
            return True
        with self._lock:
            now = self.clock()
            for key in [k for k, v in self._by_client.items() if not v or now - v[-1][0] > CLIENT_UPLOAD_WINDOW_S]:
                del self._by_client[key]  # forgotten once its newest upload leaves the window
            recent = [(t, n) for t, n in self._by_client.get(client, []) if now - t <= CLIENT_UPLOAD_WINDOW_S]
            if sum(n for _t, n in recent) + nbytes > self.client_share():
                self._by_client[client] = recent
                self.refused_client += 1
                return False
            recent.append((now, nbytes))
            self._by_client[client] = recent
            return True

    def _limit(self) -> int:
        return budget_bytes() if self.budget is None else int(self.budget)

    def admit(self, nbytes: int) -> bool:
        """Whether an upload of ``nbytes`` fits (it is then counted as used); runs a sweep when it does not."""
        with self._lock:
            now = self.clock()
            if now - self._measured > MEASURE_EVERY_S:
                self._used, self._measured = temp_usage(self.gradio_dir, self.work_dir), now
            if self._used + nbytes > self._limit():
                sweep(self.gradio_dir, self.work_dir, budget=max(0, self._limit() - nbytes), **self.sweep_kwargs)
                self._used, self._measured = temp_usage(self.gradio_dir, self.work_dir), self.clock()
            if self._used + nbytes > self._limit():
                self.refused += 1
                return False
            self._used += nbytes
            return True


class UploadBudgetMiddleware:
    """A pure ASGI middleware that asks :class:`UploadBudget` before Gradio stores an upload (its declared
    length; ``max_upload`` bytes when it does not declare one), and refuses it (507, with a message) when the
    temporary disk is full even after a sweep."""

    def __init__(self, app, budget: UploadBudget | None = None, max_upload: int = 50 << 20,
                 trust_forwarded: bool = False):
        self.app, self.budget, self.max_upload = app, budget if budget is not None else UploadBudget(), int(max_upload)
        self.trust_forwarded = trust_forwarded

    async def __call__(self, scope, receive, send):
        path = scope.get("path", "").rstrip("/")
        if scope.get("type") != "http" or scope.get("method") != "POST" or not path.endswith(UPLOAD_ROUTE):
            return await self.app(scope, receive, send)
        declared = next((v for k, v in scope.get("headers") or [] if k.lower() == b"content-length"), None)
        try:
            nbytes = int(declared) if declared is not None else self.max_upload
        except ValueError:
            nbytes = self.max_upload
        import anyio.to_thread

        from serdemo.logins import client_address
        if not self.budget.admit_client(client_address(scope, self.trust_forwarded), nbytes):
            share = self.budget.client_share()
            if self.budget.refused_client <= 10 or self.budget.refused_client % 100 == 0:
                log.warning("refused: an upload of %d bytes from a client past its share (%.0f MB in %.0f min)",
                            nbytes, share / 1e6, CLIENT_UPLOAD_WINDOW_S / 60)
            message = (f"you have uploaded {share / 1e6:.0f} MB in the last {CLIENT_UPLOAD_WINDOW_S / 60:.0f} "
                       "minutes, this server's share per client; try again later")
            body = json.dumps({"detail": message, "error": message}).encode()
            await send({"type": "http.response.start", "status": 429,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        if await anyio.to_thread.run_sync(self.budget.admit, nbytes):  # the disk is walked off the event loop
            return await self.app(scope, receive, send)
        log.warning("refused: an upload of %d bytes (the temporary disk budget of %.0f MB is used up)", nbytes,
                    self.budget._limit() / 1e6)
        message = ("the server's temporary disk is full just now; try again in a few minutes (uploads are kept an "
                   "hour at most)")
        body = json.dumps({"detail": message, "error": message}).encode()
        await send({"type": "http.response.start", "status": 507,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class Sweeper(threading.Thread):
    """Runs :func:`sweep` every ``every_s`` seconds until :meth:`stop`; errors are logged in one line. Pass
    ``sessions=SessionKeeper(app)`` to forget idle page sessions in the same sweep."""

    def __init__(self, every_s: float = SWEEP_EVERY_S, **sweep_kwargs):
        super().__init__(name="serdemo-housekeeping", daemon=True)
        self.every_s, self.kwargs = every_s, sweep_kwargs
        self._stop_event = threading.Event()
        self.last: SweepReport | None = None

    def run(self) -> None:
        while not self._stop_event.is_set():
            try:
                self.last = sweep(**self.kwargs)
            except Exception as exc:  # noqa: BLE001 - the sweeper must outlive one bad sweep
                log.warning("housekeeping sweep failed: %s", type(exc).__name__)
            self._stop_event.wait(self.every_s)

    def stop(self) -> None:
        self._stop_event.set()
