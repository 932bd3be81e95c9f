"""The disk budget outside the store, and the sweep that enforces it.

What the server writes outside its store is temporary: Gradio's upload cache (every uploaded file,
every file a route returns), served exports, timeline exports and live recordings (``serdemo-*``
folders in the temp folder), and retraining runs' outputs. :func:`sweep` deletes what is older than
``max_age_s`` and, while the total is over ``budget_bytes``, the oldest first (never anything younger
than ``min_age_s``: a request may still be reading it). :class:`Sweeper` runs it every ``every_s`` in a
daemon thread, with the live sessions' idle check (:func:`serdemo.live.release_idle`) and the page
sessions' (:class:`SessionKeeper`): Gradio keeps a state per session (every ``/gradio_api/call`` is a new one)
and by default up to 10,000 of them, each with a copy of every component's config (~250 kB here); the keeper
makes that copy lazy (:func:`lean_session_state`) and forgets sessions unused for ``SERDEMO_SESSION_IDLE_S``.
"""

from __future__ import annotations

import ctypes
import datetime
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


# ------------------------------------------------------------------------------------------- page sessions
SESSION_IDLE_S = 600.0  # a page session unused this long is forgotten (an open page polls every 2 s)
UNREAD_RESULT_S = 120.0  # a finished event's result nobody has read for this long is dropped
MAX_PAGE_SESSIONS = 1000  # sessions Gradio keeps at most (its default: 10,000), the least recently used go first


def session_idle_s() -> float:
    try:
        return max(1.0, float(os.environ.get("SERDEMO_SESSION_IDLE_S", SESSION_IDLE_S)))
    except ValueError:
        return SESSION_IDLE_S


def max_page_sessions() -> int:
    try:
        return max(10, int(os.environ.get("SERDEMO_SESSIONS", MAX_PAGE_SESSIONS)))
    except ValueError:
        return MAX_PAGE_SESSIONS


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc's ``malloc_trim``): a released live recording or a
    thousand forgotten sessions are many small blocks, which glibc otherwise keeps for the process."""
    import gc
    gc.collect()  # cycles among freed results and figures first
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Have glibc keep at most ``arenas`` malloc arenas (``M_ARENA_MAX``; by default 8 per core): every worker
    thread that decodes or analyses otherwise grows an arena of its own that it seldom gives back, and the
    server's memory stays high long after a burst. Call at start, before the threads. False where not glibc."""
    try:
        return bool(ctypes.CDLL(None).mallopt(-8, int(arenas)))  # M_ARENA_MAX
    except (OSError, AttributeError):
        return False


def lean_session_state() -> bool:
    """Make Gradio's per-session state cheap: its ``SessionState`` builds, for every new session, the config
    of every component of the page (``config_values``: ~250 kB and ~0.1 s of CPU here), which only Gradio's
    deep links read. :class:`LeanSessionState` builds a component's config when it is read or updated. Installed
    once, in place of the class in the Gradio modules that make sessions; False when this Gradio has no such
    class (then sessions cost what they cost, bounded by :class:`SessionKeeper`)."""
    import gradio.blocks
    import gradio.route_utils
    import gradio.state_holder
    original = getattr(gradio.state_holder, "SessionState", None)
    if original is None or getattr(original, "_serdemo_lean", False):
        return original is not None
    lean = _lean_class(original)
    for module in (gradio.state_holder, gradio.blocks, gradio.route_utils):
        if getattr(module, "SessionState", None) is original:
            module.SessionState = lean
    try:
        import gradio.mcp
        if getattr(gradio.mcp, "SessionState", None) is original:
            gradio.mcp.SessionState = lean
    except ImportError:  # pragma: no cover - gradio without its MCP extra
        pass
    return True


def _lean_class(original):
    class LeanSessionState(original):
        """Gradio's ``SessionState`` whose per-component configs are made when read (see
        :func:`lean_session_state`); everything else as Gradio's."""
        _serdemo_lean = True

        def __init__(self, blocks):
            from copy import copy
            self.blocks_config = copy(blocks.default_config)
            self._shown = [k for k in self.blocks_config.blocks if k in blocks.blocks]
            self.config_values = {}  # made on demand: see components
            self.state_data = {}
            self._state_ttl = {}
            self.is_closed = False
            self.STATE_TTL_WHEN_CLOSED = 1 if os.getenv("GRADIO_IS_E2E_TEST", None) else 3600

        @property
        def components(self):
            for key in self._shown:
                if key not in self.config_values and key in self.blocks_config.blocks:
                    self.config_values[key] = self.blocks_config.config_for_block(
                        key, [], self.blocks_config.blocks[key])
            for config in list(self.config_values.values()):
                if config:
                    yield config

    return LeanSessionState


class SessionKeeper:
    """Bounds the page sessions Gradio keeps (``blocks.state_holder``): a session unused for ``idle_s`` is
    forgotten with its state (a live recording's audio, a loaded timeline), unless an event of it is still in
    the queue. An open page polls every 2 s, so only closed pages and one-shot API sessions go. Gradio's own
    ``state_session_capacity`` (``max_page_sessions``, app.py) caps how many are kept meanwhile."""

    def __init__(self, blocks, idle_s: float | None = None, clock=None, unread_s: float = UNREAD_RESULT_S,
                 monotonic=time.monotonic):
        self.blocks = blocks
        self.idle_s = session_idle_s() if idle_s is None else float(idle_s)
        self.clock = clock or datetime.datetime.now
        self.unread_s, self.monotonic = float(unread_s), monotonic
        self._unread: dict[str, tuple[int, float]] = {}  # session -> (its oldest unread message, seen since)

    def drop_unread(self, now: float | None = None) -> int:
        """Drop the results nobody reads: Gradio keeps every finished event's messages for its session until
        they are read, and a ``/gradio_api/call`` whose result is never fetched (a flood of 48 analyses of a
        59-s clip: ~5 MB each, figures included) or a page closed mid-run left them for good (up to 2,000
        sessions). A session with no event waiting or running whose oldest message has waited ``unread_s``
        has its messages dropped; how many sessions."""
        queue = getattr(self.blocks, "_queue", None)
        cache = getattr(queue, "pending_messages_per_session", None)
        if cache is None:
            return 0
        now = self.monotonic() if now is None else now
        pending = getattr(queue, "pending_event_ids_session", {}) or {}
        # events waiting or running (Gradio keeps a finished event's id pending until its result is read)
        alive = getattr(queue, "event_ids_to_events", {}) or {}
        seen, dropped = {}, 0
        for session, messages in list(cache.items()):
            waiting = getattr(messages, "_queue", None)
            if not waiting or any(e in alive for e in list(pending.get(session) or ())):
                continue
            oldest = id(waiting[0])
            mark = self._unread.get(session)
            if mark is None or mark[0] != oldest:
                seen[session] = (oldest, now)
            elif now - mark[1] >= self.unread_s:
                cache.pop(session, None)
                pending.pop(session, None)
                dropped += 1
            else:
                seen[session] = mark
        self._unread = seen
        return dropped

    def holder(self):
        return getattr(self.blocks, "state_holder", None)

    def count(self) -> int:
        holder = self.holder()
        return len(holder.session_data) if holder is not None else 0

    def drop_idle(self) -> int:
        """Forget every session unused for ``idle_s``; how many."""
        holder = self.holder()
        if holder is None:
            return 0
        cutoff = self.clock() - datetime.timedelta(seconds=self.idle_s)
        queue = getattr(self.blocks, "_queue", None)
        busy = set(getattr(queue, "pending_event_ids_session", {}) or {}) if queue is not None else set()
        busy = {s for s in busy if (queue.pending_event_ids_session.get(s) or ())}
        with holder.lock:
            idle = [s for s in list(holder.session_data)
                    if s not in busy and holder.time_last_used.get(s, cutoff) <= cutoff]
        dropped = 0
        for session in idle:
            with holder.lock:  # used again meanwhile: kept
                if holder.time_last_used.get(session, cutoff) > cutoff:
                    continue
                state = holder.session_data.pop(session, None)
                holder.time_last_used.pop(session, None)
            if state is None:
                continue
            dropped += 1
            try:
                for component, value, _expired in list(state.state_components):
                    component.delete_callback(value)  # what Gradio runs when a state expires
            except Exception as exc:  # noqa: BLE001 - the session is forgotten regardless
                log.warning("a forgotten session's state callback failed: %s", type(exc).__name__)
        return dropped


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

        from serdemo.uikit import client_address
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
