"""Limits on what one client may send and hold (Gradio side): request bodies outside uploads
(:class:`BodyLimitMiddleware`), events waiting or running per page session and per client address
(:class:`QueueLimitMiddleware`), and the queue shared by time rather than turns (:class:`FairShare`,
:func:`fair_queue`). Split from :mod:`serdemo.uikit`, which re-exports every name here.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time

import numpy as np

from serdemo.logins import client_address

log = logging.getLogger("serdemo.ui")  # the page's log, as before the split

MAX_JSON_BODY = 1 << 20  # bytes of a request body other than an upload (an API call names its files: small)
UPLOAD_PATH = re.compile(r"/upload/?$")  # Gradio's upload route: its own limit (max_file_size)
QUEUE_JOIN = re.compile(r"/(queue/join|call/[^/]+)/?$")  # where events enter Gradio's queue
MAX_PENDING_PER_SESSION = 16  # events one page session may have waiting or running (a page's load fires ~8)
MAX_PENDING_PER_CLIENT = 48  # events one client address may have waiting or running (many pages behind one NAT)


async def refuse_request(send, status: int, message: str) -> None:
    """Answer an HTTP request with ``status`` and ``{"detail": message}`` (what Gradio's own refusals carry)."""
    body = json.dumps({"detail": message, "error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive, limit: int) -> tuple[list[dict], int, bool]:
    """The request's messages up to ``limit`` bytes of body: ``(messages, bytes, whole)``; ``whole`` is False
    when the body goes on past ``limit`` (or the client went away)."""
    held, size = [], 0
    while True:
        message = await receive()
        held.append(message)
        size += len(message.get("body", b""))
        if message.get("type") != "http.request":
            return held, size, False
        if not message.get("more_body"):
            return held, size, size <= limit
        if size > limit:
            return held, size, False


def replaying(held: list[dict], receive):
    """A ``receive`` that hands out ``held`` messages first, then the rest of the request."""
    async def replay():
        return held.pop(0) if held else await receive()
    return replay


def _content_length(scope) -> int | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class BodyLimitMiddleware:
    """A pure ASGI middleware that refuses (413, with a message) a request body over ``limit`` bytes on every
    route but uploads, before Gradio reads and parses it: an API call carries names and file references, so a
    10 MB JSON body (a "name" of 10 MB) is someone's attack, not a clip. Uploads keep Gradio's own limit
    (``SERDEMO_MAX_UPLOAD``)."""

    def __init__(self, app, limit: int = MAX_JSON_BODY):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") not in ("POST", "PUT", "PATCH") \
                or UPLOAD_PATH.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        declared = _content_length(scope)
        if declared is not None and declared <= self.limit:
            return await self.app(scope, receive, send)
        if declared is None:  # no length said: read up to the limit, then hand it on
            held, size, whole = await read_body(receive, self.limit)
            if whole:
                return await self.app(scope, replaying(held, receive), send)
        else:
            size = declared
        log.warning("refused: a request body of %s bytes (at most %d outside uploads)",
                    f"{size:,}" if declared is not None else f"over {self.limit:,}", self.limit)
        await refuse_request(send, 413, f"the request is too large ({size:,} bytes or more): an API call takes at "
                                        f"most {self.limit // 1024} KB of arguments; upload audio as a file")


def _event_client(event, trust_forwarded: bool) -> str | None:
    request = getattr(event, "request", None)
    scope = getattr(request, "scope", None)
    return client_address(scope, trust_forwarded) if isinstance(scope, dict) else None


class QueueLimitMiddleware:
    """A pure ASGI middleware that bounds what one caller holds in Gradio's queue: a new event is refused (503,
    with a message, as Gradio refuses a full queue) while its page session already has ``per_session`` events
    waiting or running, or its client address ``per_client`` (sessions are the caller's to invent; addresses
    are not). One client flooding ``/queue/join`` or ``/call/...`` can then delay the others by at most its
    share, not hold the queue."""

    def __init__(self, app, trust_forwarded: bool = False, per_session: int = MAX_PENDING_PER_SESSION,
                 per_client: int = MAX_PENDING_PER_CLIENT):
        self.app, self.trust_forwarded = app, trust_forwarded
        self.per_session, self.per_client = int(per_session), int(per_client)
        self.refused = 0

    def pending(self, queue, session: str | None, client: str | None) -> tuple[int, int]:
        """Events of ``session`` and of ``client`` now in ``queue`` (waiting or running)."""
        events = list(getattr(queue, "event_ids_to_events", {}).values())
        by_session = sum(1 for e in events if session and getattr(e, "session_hash", None) == session)
        by_client = sum(1 for e in events if client and _event_client(e, self.trust_forwarded) == client)
        return by_session, by_client

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not QUEUE_JOIN.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        server = scope.get("app")
        queue = getattr(server.get_blocks(), "_queue", None) if hasattr(server, "get_blocks") else None
        if queue is None:
            return await self.app(scope, receive, send)
        held, _size, whole = await read_body(receive, MAX_JSON_BODY)
        session = None
        if whole:
            try:
                session = json.loads(b"".join(m.get("body", b"") for m in held)).get("session_hash")
            except (ValueError, AttributeError):
                session = None
        client = client_address(scope, self.trust_forwarded)
        by_session, by_client = self.pending(queue, session if isinstance(session, str) else None, client)
        if by_session >= self.per_session or by_client >= self.per_client:
            self.refused += 1
            if self.refused <= 10 or self.refused % 100 == 0:  # a flood is logged, not every request of it
                log.warning("refused: a client with %d events in the queue (%d refused so far)",
                            max(by_session, by_client), self.refused)
            limit = self.per_session if by_session >= self.per_session else self.per_client
            return await refuse_request(send, 503, f"too many requests waiting: you have {limit} in the queue "
                                                   "already; wait for them to finish, then try again")
        return await self.app(scope, replaying(held, receive), send)


class FairShare:
    """Who has had how much of the queue's time lately, per client: the seconds its events ran, halved every
    ``half_life_s``, plus the time its running events have run so far; and how long its events take. Fed by
    :func:`fair_queue` with the events running at each pick (an event seen running, then gone, has ended)."""

    def __init__(self, half_life_s: float = 60.0, clock=time.monotonic, max_clients: int = 10_000):
        self.half_life_s, self.clock, self.max_clients = float(half_life_s), clock, int(max_clients)
        self._served: dict = {}  # client -> (seconds, when)
        self._cost: dict = {}  # client -> seconds an event of it takes (a moving average)
        self._running: dict = {}  # event id -> (client, started)

    def _decayed(self, who, now: float) -> float:
        seconds, at = self._served.get(who, (0.0, now))
        return seconds * 0.5 ** ((now - at) / self.half_life_s)

    def start(self, event_id, who, event=None, now: float | None = None) -> None:
        """An event of ``who`` was picked to run."""
        self._running.setdefault(event_id, (who, self.clock() if now is None else now, event))

    def observe(self, running: list, now: float | None = None) -> None:
        """``running``: (event id, client, event) of the events running now; those no longer running have
        ended, and count what they ran (the event's ``run_time``, else the time since they were seen starting)."""
        now = self.clock() if now is None else now
        current = {event_id: (who, event) for event_id, who, event in running}
        for event_id, (who, event) in current.items():
            self.start(event_id, who, event, now)
        for event_id in [e for e in self._running if e not in current]:
            who, started, event = self._running.pop(event_id)
            ran = getattr(event, "run_time", 0) or 0
            took = float(ran) if isinstance(ran, (int, float)) and 0 < ran < math.inf else max(0.0, now - started)
            self._served[who] = (self._decayed(who, now) + took, now)
            self._cost[who] = took if who not in self._cost else 0.7 * self._cost[who] + 0.3 * took
        if len(self._served) > self.max_clients:  # the least served lately are forgotten first
            for who in sorted(self._served, key=lambda w: self._decayed(w, now))[:len(self._served) // 2]:
                self._served.pop(who, None)
                self._cost.pop(who, None)

    def share(self, who, now: float | None = None) -> float:
        """Seconds of the queue's time ``who`` has had lately, its running events included."""
        now = self.clock() if now is None else now
        return self._decayed(who, now) + sum(now - t for w, t, _e in self._running.values() if w == who)

    def cost(self, who) -> float:
        if who in self._cost:
            return self._cost[who]
        return float(np.median(list(self._cost.values()))) if self._cost else 1.0


def fair_queue(blocks, trust_forwarded: bool = False, share: FairShare | None = None) -> bool:
    """Serve Gradio's queue by each client's share of its time instead of first come, first served (a client:
    the event's login where the app has logins, else its address):
    one client's flood (48 analyses of a 59-s clip, its share under :class:`QueueLimitMiddleware`) otherwise
    made everyone who came after it wait for all of them. Before Gradio picks the next event of a concurrency
    group, that group's waiting events are ordered by when their client's turn comes: the seconds its events
    ran lately (:class:`FairShare`, halved every minute, running ones included; Gradio's own ``run_time``
    of each event once it has ended) plus, for its n-th waiting
    event, n times what its events take (its running ones count among the n). With no history that is
    round-robin: every client's first, then every client's second; a client whose events are long waits until
    the others have had as much time. A client's own events keep their order. Call after ``blocks.queue()``;
    False without a queue."""
    queue = getattr(blocks, "_queue", None)
    if queue is None or not hasattr(queue, "get_events"):
        return False
    if getattr(queue, "_serdemo_fair", False):
        return True
    original = queue.get_events
    share = share if share is not None else FairShare()

    def client_of(event):
        # a login is one client wherever it connects from: users behind one address (an office's NAT, the
        # abuse benchmark's 16 on 127.0.0.1) are not one client beside a flood from a single login
        user = getattr(event, "username", None)
        if isinstance(user, str) and user:
            return ("login", user)
        return _event_client(event, trust_forwarded) or getattr(event, "session_hash", None)

    def get_events():
        now = share.clock()
        running = [(getattr(e, "_id", id(e)), client_of(e), e)
                   for job in list(getattr(queue, "active_jobs", None) or []) for e in (job or ())]
        share.observe(running, now)
        counts: dict = {}
        for _id, who, _event in running:
            counts[who] = counts.get(who, 0) + 1
        for group in list(getattr(queue, "event_queue_per_concurrency_id", {}).values()):
            waiting = group.queue
            if len(waiting) < 2:
                continue
            turns, ranked = dict(counts), []
            for position, event in enumerate(waiting):
                who = client_of(event)
                turn = turns.get(who, 0)
                turns[who] = turn + 1
                ranked.append((share.share(who, now) + turn * share.cost(who), position, event))
            if len(turns) > 1:
                ranked.sort(key=lambda t: (t[0], t[1]))
                waiting[:] = [event for _key, _position, event in ranked]
        picked = original()  # (events, batch, concurrency id) or None
        if isinstance(picked, tuple) and picked and isinstance(picked[0], list):
            for event in picked[0]:
                share.start(getattr(event, "_id", id(event)), client_of(event), event, now)
        return picked

    queue.get_events = get_events
    queue._serdemo_fair = True
    queue._serdemo_share = share
    return True

