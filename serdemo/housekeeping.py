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

from serdemo.export import EXPORT_PREFIX, remove_old_exports
from serdemo.sessions import (MAX_PAGE_SESSIONS, SESSION_IDLE_S, UNREAD_RESULT_S, SessionKeeper,  # noqa: F401
                              lean_session_state, limit_malloc_arenas, max_page_sessions, release_freed_memory,
                              session_idle_s)

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
    try:
        return max(1, int(float(os.environ.get("SERDEMO_DISK_BUDGET_MB", DISK_BUDGET_BYTES >> 20)) * (1 << 20)))
    except ValueError:
        return DISK_BUDGET_BYTES


def temp_max_age_s() -> float:
    """``SERDEMO_TEMP_MAX_AGE_S`` (default 3600): how long uploads, exports and recordings are kept."""
    try:
        return max(0.0, float(os.environ.get("SERDEMO_TEMP_MAX_AGE_S", MAX_AGE_S)))
    except ValueError:
        return MAX_AGE_S


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
          keep_runs: int = KEEP_RUNS, sessions: "SessionKeeper | None" = None) -> SweepReport:
    """Delete temporary files past ``max_age_s``, then the oldest until under ``budget`` bytes; prune old
    retraining runs (``retrainer.prune``); forget idle page sessions (``sessions``). Returns what it did."""
    gradio_dir = Path(gradio_dir) if gradio_dir is not None else gradio_cache_dir()
    work_dir = Path(work_dir) if work_dir is not None else Path(tempfile.gettempdir())
    budget = budget_bytes() if budget is None else budget
    max_age_s = temp_max_age_s() if max_age_s is None else max_age_s
    now = time.time() if now is None else now
    report = SweepReport()
    for prefix in TEMP_PREFIXES:  # serdemo's own folders by age (the export module's rule)
        report.removed += remove_old_exports(work_dir, older_than_s=max_age_s, now=now, prefix=prefix)
    aged = []
    for entry in temp_entries(gradio_dir, work_dir):
        mtime, size = newest_mtime(entry), size_of(entry)
        if now - mtime > max_age_s:
            if _remove(entry):
                report.removed += 1
                report.freed_bytes += size
                report.entries.append(entry.name)
            continue
        aged.append((mtime, size, entry))
    used = sum(size for _m, size, _e in aged)
    for mtime, size, entry in sorted(aged, key=lambda t: t[0]):  # oldest first, while over the budget
        if used <= budget:
            break
        if now - mtime < min_age_s:
            continue
        if _remove(entry):
            used -= size
            report.removed += 1
            report.freed_bytes += size
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
