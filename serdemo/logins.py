"""Logins (Gradio side): the client's address (the socket's peer, or the last ``X-Forwarded-For`` entry only
where a proxy is trusted), the middleware that remembers it for each request, and :class:`LoginGuard`,
Gradio's ``auth=`` with constant-time comparison, lockouts per name, per address and per pair, and delays
that make wrong passwords slow and few. Split from :mod:`serdemo.uikit`, which re-exports every name here.
"""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import logging
import os
import threading
import time
from collections import OrderedDict

import gradio as gr

log = logging.getLogger("serdemo.ui")  # the page's log, as before the split

MAX_LOGIN_FAILURES = 5  # wrong passwords for one name from one client address before that pair is locked
MAX_NAME_FAILURES = 20  # wrong passwords for one name from any addresses before the name is locked everywhere
LOCKOUT_S = 300.0  # how long a lock lasts (a right password does not open it meanwhile)
FAIL_DELAY_S = 0.5  # the first wrong password's answer is delayed this long, doubling per failure ...
MAX_FAIL_DELAY_S = 8.0  # ... up to this
GLOBAL_FAILURES_PER_MIN = 30  # all names together: beyond this, every login is slowed (a spray over names)
MAX_TRACKED_NAMES = 10_000  # failure records kept (the oldest forgotten first), so names cannot fill memory
MAX_LOGIN_CHARS = 256  # a longer name or password is a wrong login, compared no further
MAX_CLIENT_FAILURES = 60  # wrong passwords from one client address (any names) before the whole address is locked
CLIENT_DELAY_FAILURES = 20  # an address's failures after which each of its answers waits the longest delay
MAX_ANSWER_WAIT_S = 120.0  # the longest a failed login waits for its turn among its address's answers

_login_client: contextvars.ContextVar[str | None] = contextvars.ContextVar("serdemo_login_client", default=None)


def proxy_trusted(env=None) -> bool:
    """Whether a proxy in front of the app adds the client's address to ``X-Forwarded-For``: on a Hugging Face
    Space (its ``SPACE_ID``: the Space's own proxy) or where ``SERDEMO_TRUST_PROXY=1`` says so."""
    env = os.environ if env is None else env
    return bool(env.get("SPACE_ID")) or env.get("SERDEMO_TRUST_PROXY", "") == "1"


def configure_proxy_headers(env=None) -> bool:
    """Before launch: decide whether ``X-Forwarded-For`` names the client. Returns :func:`proxy_trusted`.

    Gradio's server (uvicorn) replaces a request's client address with the header's entry whenever the peer is
    in ``FORWARDED_ALLOW_IPS``, by default 127.0.0.1: a client on the same machine (or anyone behind a local
    proxy that passes the header on) could name a new address with every guess and never be locked out. Unless
    a proxy is trusted, ``FORWARDED_ALLOW_IPS`` is set to nothing (an operator's own setting is kept), so the
    address the login guard counts is the socket's peer."""
    env = os.environ if env is None else env
    trusted = proxy_trusted(env)
    if not trusted and "FORWARDED_ALLOW_IPS" not in env:
        env["FORWARDED_ALLOW_IPS"] = ""
    return trusted


def client_address(scope: dict, trust_forwarded: bool = False) -> str | None:
    """The address a request came from: the socket's peer, or behind a proxy that appends it (a Space),
    the last ``X-Forwarded-For`` entry (the one that proxy added; the earlier ones are the client's word)."""
    if trust_forwarded:
        for key, value in scope.get("headers") or []:
            if key.lower() == b"x-forwarded-for":
                last = value.decode("latin-1").split(",")[-1].strip()
                if last:
                    return last[:64]
    client = scope.get("client")
    return str(client[0])[:64] if client else None


def request_client(request: gr.Request | None) -> str | None:
    """For a handler: the address its request came from (:func:`client_address`, the proxy trusted as
    :func:`proxy_trusted` says); None for a direct call."""
    scope = getattr(getattr(request, "request", None), "scope", None)
    if isinstance(scope, dict):
        return client_address(scope, proxy_trusted())
    client = getattr(request, "client", None)
    host = getattr(client, "host", None) if client is not None and not isinstance(request, dict) else None
    return str(host)[:64] if host else None


class LoginClientMiddleware:
    """A pure ASGI middleware that remembers each HTTP request's client address for :class:`LoginGuard`
    (Gradio hands ``auth`` only the name and the password). Pass it to ``launch(app_kwargs={"middleware":
    [starlette.middleware.Middleware(LoginClientMiddleware, trust_forwarded=...)]})``."""

    def __init__(self, app, trust_forwarded: bool = False):
        self.app, self.trust_forwarded = app, trust_forwarded

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        token = _login_client.set(client_address(scope, self.trust_forwarded))
        try:
            return await self.app(scope, receive, send)
        finally:
            _login_client.reset(token)


class LoginGuard:
    """Gradio's ``auth=`` as an async callable (``auth=guard.check``): constant-time comparison, and wrong
    passwords made slow and few.

    - Each wrong password is answered after a delay that doubles with the failures (``FAIL_DELAY_S`` ..
      ``MAX_FAIL_DELAY_S``); the answers to one client address's failures take turns (its budget of answer
      time), so 20 guesses sent at once take the sum of their delays, not the longest one.
    - A (client address, name) pair is locked for ``lockout_s`` after ``max_failures`` wrong passwords (even
      the right one is refused meanwhile); the name itself, from every address, after ``max_name_failures``;
      the whole address after ``max_client_failures`` over any names (a spray). So a guesser behind a shared
      address locks the names it guesses, not everyone's login, until it reaches that higher ceiling.
    - Every login is slowed when all names together fail more than ``global_per_min`` times a minute.

    Gradio hands the callable only the name and the password; with :class:`LoginClientMiddleware` installed
    the client's address is known (without it, every request counts as one unknown address, unserialised).
    The delays are ``await``ed: the server keeps serving others meanwhile."""

    def __init__(self, logins: dict[str, str], max_failures: int = MAX_LOGIN_FAILURES, lockout_s: float = LOCKOUT_S,
                 delay_s: float = FAIL_DELAY_S, max_delay_s: float = MAX_FAIL_DELAY_S,
                 global_per_min: int = GLOBAL_FAILURES_PER_MIN, max_client_failures: int = MAX_CLIENT_FAILURES,
                 clock=time.monotonic, sleep=asyncio.sleep, max_name_failures: int = MAX_NAME_FAILURES,
                 client_delay_failures: int = CLIENT_DELAY_FAILURES, max_answer_wait_s: float = MAX_ANSWER_WAIT_S):
        self.max_client_failures, self.max_name_failures = int(max_client_failures), int(max_name_failures)
        self.client_delay_failures, self.max_answer_wait_s = int(client_delay_failures), float(max_answer_wait_s)
        self.logins = {str(k): str(v) for k, v in logins.items()}
        self.max_failures, self.lockout_s = int(max_failures), float(lockout_s)
        self.delay_s, self.max_delay_s, self.global_per_min = float(delay_s), float(max_delay_s), int(global_per_min)
        self.clock, self.sleep = clock, sleep
        self._lock = threading.Lock()
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()  # key -> (count, last failure)
        self._answer_at: OrderedDict[str, float] = OrderedDict()  # client -> when its last queued answer goes out
        self._recent: list[float] = []  # times of failures, all names, within the last minute
        self.refused = 0

    @classmethod
    def from_env(cls, value: str, **kwargs) -> "LoginGuard | None":
        """``SERDEMO_AUTH="alice:pw,bob:pw2"`` -> a guard, or None when no pair is given."""
        pairs = [pair.split(":", 1) for pair in value.split(",") if ":" in pair]
        return cls({name.strip(): pw for name, pw in pairs if name.strip()}, **kwargs) if pairs else None

    @staticmethod
    def _pair(client: str | None, name: str) -> str:
        return f"p:{client}\x00{name}"

    def locked_for(self, username: str, client: str | None = None) -> float:
        """Seconds left of ``username``'s lockout from ``client`` (by default: an unknown address), or of the
        name's own lockout from every address; 0 when it may log in."""
        name = username[:MAX_LOGIN_CHARS]
        return max(self._locked_for(self._pair(client, name), self.max_failures),
                   self._locked_for("n:" + name, self.max_name_failures))

    def client_locked_for(self, client: str) -> float:
        """Seconds left of a client address's lockout (0 when it may try)."""
        return self._locked_for(f"c:{client}", self.max_client_failures)

    def _locked_for(self, key: str, limit: int) -> float:
        with self._lock:
            count, last = self._failures.get(key, (0, 0.0))
            if count < limit:
                return 0.0
            return max(0.0, self.lockout_s - (self.clock() - last))

    def _record_failure(self, key: str, now: float) -> int:
        """One more wrong password for ``key`` (a pair, a name or a client address); returns its count."""
        with self._lock:
            count, last = self._failures.pop(key, (0, 0.0))
            if now - last >= self.lockout_s:
                count = 0  # a lockout's length since the last failure: the count starts again
            self._failures[key] = (count + 1, now)
            while len(self._failures) > MAX_TRACKED_NAMES:
                self._failures.popitem(last=False)
            return count + 1

    def _note_failure(self, now: float) -> int:
        """Count a wrong password for the global limit; returns the failures in the last minute."""
        with self._lock:
            self._recent = [t for t in self._recent[-4 * self.global_per_min:] if now - t < 60.0] + [now]
            self.refused += 1
            return len(self._recent)

    def _turn(self, client: str, now: float, delay: float) -> float:
        """The wait of a failed login from ``client``: its delay, after the answers to that address's earlier
        failures (at most ``max_answer_wait_s``)."""
        with self._lock:
            start = max(now, self._answer_at.pop(client, now))
            until = min(start + delay, now + max(delay, self.max_answer_wait_s))
            self._answer_at[client] = until
            while len(self._answer_at) > MAX_TRACKED_NAMES:
                self._answer_at.popitem(last=False)
            return until - now

    async def check(self, username, password) -> bool:
        username, password = str(username or ""), str(password or "")
        name, now = username[:MAX_LOGIN_CHARS], self.clock()
        client = _login_client.get()
        pair = self._pair(client, name)
        with self._lock:
            busy = len([t for t in self._recent if now - t < 60.0]) > self.global_per_min
        if busy:  # a spray over many names: everyone waits a little, the sprayer most of all
            await self.sleep(self.delay_s)
        locked = self.locked_for(name, client) > 0 or (client is not None and self.client_locked_for(client) > 0)
        expected = self.logins.get(name) if len(username) <= MAX_LOGIN_CHARS else None
        ok = (not locked and expected is not None and len(password) <= MAX_LOGIN_CHARS
              and hmac.compare_digest(password.encode(), expected.encode()))
        if ok:
            with self._lock:
                self._failures.pop(pair, None)
            return True
        count, recent = self._record_failure(pair, now), self._note_failure(now)
        name_count = self._record_failure("n:" + name, now)
        client_count = self._record_failure(f"c:{client}", now) if client is not None else 0
        if (locked or count >= self.max_failures or name_count >= self.max_name_failures
                or client_count >= self.max_client_failures):
            log.warning("login refused: locked for %.0f s after repeated wrong passwords (for a name, a name from "
                        "one address, or an address)", self.lockout_s)
        # the delay doubles with the pair's failures and with the address's (the longest from
        # client_delay_failures failures on)
        steps = max(count, client_count * self.max_failures // max(1, self.client_delay_failures))
        delay = min(self.max_delay_s, self.delay_s * 2 ** (min(max(steps, 1), 16) - 1))
        if recent > self.global_per_min:
            delay = self.max_delay_s
        if client is not None:  # one address's failed answers take turns
            delay = self._turn(client, now, delay)
        await self.sleep(delay)
        return False

