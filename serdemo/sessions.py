"""Page sessions bounded and released (Gradio side): Gradio keeps a state per session (every
``/gradio_api/call`` is a new one) and by default up to 10,000 of them, each with a copy of every component's
config (~250 kB here). :func:`lean_session_state` makes that copy lazy, :func:`max_page_sessions` caps how
many Gradio keeps, and :class:`SessionKeeper` (run by :class:`serdemo.housekeeping.Sweeper`'s sweep) forgets
sessions unused for ``SERDEMO_SESSION_IDLE_S`` and drops finished results nobody reads; freed heap goes back
to the system (:func:`release_freed_memory`). Split from :mod:`serdemo.housekeeping`, which re-exports every
name here.
"""

from __future__ import annotations

import ctypes
import datetime
import logging
import os
import time
from serdemo.envsettings import env_number

log = logging.getLogger("serdemo.housekeeping")  # the sweep's log, as before the split


SESSION_IDLE_S = 600.0  # a page session unused this long is forgotten (an open page polls every 2 s)
UNREAD_RESULT_S = 60.0  # a finished event's result nobody has read for this long is dropped (SERDEMO_UNREAD_RESULT_S)
MAX_PAGE_SESSIONS = 1000  # sessions Gradio keeps at most (its default: 10,000), the least recently used go first


def session_idle_s() -> float:
    return env_number("SERDEMO_SESSION_IDLE_S", SESSION_IDLE_S, low=1.0)


def unread_result_s() -> float:
    """``SERDEMO_UNREAD_RESULT_S`` (default 60; was 120): how long a finished result nobody reads is kept. A page
    and gradio_client read theirs at once; the abuse run's flood never reads its 48 (~5 MB each), and at 120 s
    those finished late in the load were still held when the benchmark measured, 120 s after it."""
    return env_number("SERDEMO_UNREAD_RESULT_S", UNREAD_RESULT_S, low=1.0)


def max_page_sessions() -> int:
    return env_number("SERDEMO_SESSIONS", MAX_PAGE_SESSIONS, low=10, kind=int)


def release_freed_memory() -> None:
    """Hand freed heap pages back to the system (glibc's ``malloc_trim``): a released live recording or a
    thousand forgotten sessions are many small blocks, which glibc otherwise keeps for the process."""
    import gc
    gc.collect()  # cycles among freed results and figures first
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                      "fsmblks", "uordblks", "fordblks", "keepcost")]


def memory_report(blocks=None) -> dict:
    """Where the process's memory is, for the sweep's log (``SERDEMO_MEMORY_LOG=1``): RSS; glibc's heap in use
    by live allocations, free but kept (fragmentation ``malloc_trim`` cannot return) and mmapped; Python's
    allocated blocks; and Gradio's per-session structures (sessions kept, sessions with unread messages,
    events known to the queue). MB unless said."""
    found: dict = {}
    try:
        with open("/proc/self/statm") as f:
            found["rss_mb"] = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        pass
    try:
        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = _MallInfo2
        info = libc.mallinfo2()
        found.update(heap_in_use_mb=info.uordblks / 1e6, heap_free_kept_mb=info.fordblks / 1e6,
                     mmapped_mb=info.hblkhd / 1e6)
    except (OSError, AttributeError):  # not glibc, or glibc before 2.33
        pass
    import sys
    found["python_blocks"] = sys.getallocatedblocks()
    if blocks is not None:
        holder = getattr(blocks, "state_holder", None)
        queue = getattr(blocks, "_queue", None)
        found["page_sessions"] = len(getattr(holder, "session_data", {}) or {})
        waiting = [len(getattr(m, "_queue", None) or ()) for m in
                   list((getattr(queue, "pending_messages_per_session", None) or {}).values())]
        found["sessions_with_unread"] = sum(1 for n in waiting if n)
        found["unread_messages"] = sum(waiting)
        found["queue_events"] = len(getattr(queue, "event_ids_to_events", {}) or {})
    return found


def log_memory(blocks=None) -> None:
    """Log :func:`memory_report` when ``SERDEMO_MEMORY_LOG`` is set (at WARNING: the app configures no logging,
    and Python shows only warnings then; the setting is the opt-in)."""
    if os.environ.get("SERDEMO_MEMORY_LOG", "") not in ("", "0"):
        log.warning("memory: %s", ", ".join(f"{k} {v:.0f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in memory_report(blocks).items()))


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

    def __init__(self, blocks, idle_s: float | None = None, clock=None, unread_s: float | None = None,
                 monotonic=time.monotonic):
        self.blocks = blocks
        self.idle_s = session_idle_s() if idle_s is None else float(idle_s)
        self.clock = clock or datetime.datetime.now
        self.unread_s, self.monotonic = unread_result_s() if unread_s is None else float(unread_s), monotonic
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

