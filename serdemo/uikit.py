"""What every tab of the page shares (Gradio side): the ZeroGPU decorator, user errors, who is
annotating, and the page's keyboard shortcuts and CSS. Imported by ``ui`` and ``timeline_ui``; imports
neither."""

from __future__ import annotations

import asyncio
import contextvars
import hmac
import json
import logging
import math
import os
import re
import sys
import threading
import time
import types
from collections import OrderedDict

import gradio as gr
import numpy as np

from serdemo.audio import AudioError
from serdemo.retrain import check_may_retrain
from serdemo.store import StoreError, name_key

log = logging.getLogger("serdemo.ui")

try:  # ZeroGPU on Hugging Face Spaces: GPU work runs inside spaces.GPU; elsewhere a no-op
    import spaces

    gpu = spaces.GPU
except ImportError:
    def gpu(fn=None, **_kwargs):
        return fn if fn is not None else (lambda f: f)

# Keyboard shortcuts act on the visible tab only, on that tab's own clip: keys 1-9 pick a label, "s"
# saves it, "c" confirms the model's prediction. Each key says what it did in a hint at the bottom of
# the page (the save itself answers in the tab's status line); on a tab without shortcuts it says so.
# Keys typed into a text field are left alone.
SHORTCUT_SCOPES = {  # tab elem_id -> its clip id box, label radio, save and confirm buttons
    "tab-analyse": {"clip": "#clip-id", "labels": "#label-choice", "save": "#save-label", "confirm": "#confirm-label"},
    "tab-annotate": {"clip": "#q-clip", "labels": "#q-label-choice", "save": "#q-save", "confirm": "#q-confirm"},
}
SHORTCUTS_JS = """
<script>
(() => {
const SCOPES = %s;
const visible = (el) => !!el && (el.checkVisibility ? el.checkVisibility() : el.offsetParent !== null);
function hint(text) {
  let box = document.getElementById('shortcut-hint');
  if (!box) {
    box = document.createElement('div'); box.id = 'shortcut-hint'; box.setAttribute('role', 'status');
    box.style.cssText = 'position:fixed;bottom:16px;right:16px;z-index:1000;pointer-events:none;padding:8px 12px;'
      + 'border-radius:6px;background:#222;color:#fff;font:14px sans-serif;box-shadow:0 2px 8px rgba(0,0,0,.3)';
    document.body.appendChild(box);
  }
  box.textContent = text; box.style.display = 'block';
  clearTimeout(box._timer); box._timer = setTimeout(() => { box.style.display = 'none'; }, 4000);
}
document.addEventListener('keydown', (e) => {
  const t = e.target;
  const typing = t && (t.tagName === 'TEXTAREA' || t.isContentEditable || t.tagName === 'SELECT' ||
    (t.tagName === 'INPUT' && !['radio', 'checkbox', 'button', 'range'].includes(t.type)));
  if (typing || e.ctrlKey || e.metaKey || e.altKey || !/^([1-9]|s|c)$/.test(e.key)) return;
  const tab = Object.keys(SCOPES).find((id) => visible(document.getElementById(id)));
  if (!tab) { hint('Shortcuts (1-9, s, c) work on the Analyse and Annotate tabs only'); return; }
  const s = SCOPES[tab], box = document.querySelector(`${s.clip} textarea, ${s.clip} input`);
  const clip = box && box.value ? `clip ${box.value.slice(0, 12)}` : 'no clip yet';
  const radios = document.querySelectorAll(`${s.labels} input[type=radio]`);
  const chosen = [...radios].find((r) => r.checked);
  e.preventDefault();
  if (/^[1-9]$/.test(e.key)) {
    if (radios.length < +e.key) { hint(`No label ${e.key} here (${radios.length} labels)`); return; }
    radios[+e.key - 1].click(); hint(`${e.key}: label ${radios[+e.key - 1].value} for ${clip}`);
  } else if (e.key === 's') {
    hint(`s: saving ${chosen ? chosen.value : 'no label'} for ${clip}`); document.querySelector(s.save)?.click();
  } else {
    hint(`c: confirming the model's prediction for ${clip}`); document.querySelector(s.confirm)?.click();
  }
});
})();
</script>
""" % json.dumps(SHORTCUT_SCOPES)


def checked_by_the_callback(slider: gr.Slider) -> gr.Slider:
    """``slider`` (the page's widget, unchanged) hands an API caller's value to the callback as it was sent.

    Gradio's slider checks a value itself before any callback runs: a word fails inside that check with a bare
    "Error" (and a traceback in the log), a number out of range with "Value 5 is greater than maximum value
    1.2", which names no control. The callback checks the value instead and says what it must be
    (:func:`serdemo.workbench.checked_alpha` for the VTLP warp factor). Done on the instance, not in a
    subclass: Gradio writes a ``.pyi`` stub beside the module of every component class it sees defined."""
    slider.preprocess = lambda payload: payload
    return slider


def model_picker(bench, label: str = "Model", **kwargs) -> gr.Dropdown:
    """A checkpoint picker listing ``bench``'s checkpoints (default first), set to the default. It accepts a name
    it does not list: a checkpoint an API caller reloaded (``/models`` returns values, so the page's own list
    is not updated); the workbench checks every name it is given."""
    return gr.Dropdown(bench.choices(), value=bench.default_choice(), allow_custom_value=True, label=label, **kwargs)


MAX_ECHO_CHARS = 200  # characters of a caller's text (a name, a label, a model) repeated in a message
MAX_MESSAGE_CHARS = 1000  # characters of a message shown to a client
MAX_LOG_CHARS = 300  # characters of a refusal in the server log
MAX_TEXT_ARG = 4096  # characters of a text argument an endpoint takes (names, ids, labels are far shorter)
# what never reaches the log or a message: NUL and other controls, bidirectional overrides and isolates
# (U+202A-U+202E, U+2066-U+2069), which would make a log line read other than it is
_UNSHOWN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def clean_text(text, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``text`` fit to show or log: controls and bidirectional overrides removed, at most ``limit`` characters
    (cut with an ellipsis)."""
    text = _UNSHOWN.sub("", str(text))
    return text if len(text) <= limit else text[:limit - 1] + "…"


def echo(value, limit: int = MAX_ECHO_CHARS) -> str:
    """A caller's value as a message repeats it: one line, cleaned, at most ``limit`` characters."""
    return clean_text(" ".join(str(value).split()), limit)


def text_arg(value, what: str, max_chars: int = MAX_TEXT_ARG) -> str:
    """A text argument of an endpoint, checked at the boundary: None is "", anything but a string (a number,
    a list, a dict sent through the API) and text over ``max_chars`` are refused with a message that names
    ``what`` (a user error, no traceback)."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise user_error(f"{what} must be text, not {type(value).__name__}")
    if len(value) > max_chars:
        raise user_error(f"{what} is {len(value):,} characters long; at most {max_chars:,} are accepted")
    return value


def user_error(problem: Exception | str, source: str | None = None, duration: float | None = 10) -> gr.Error:
    """A problem the user can fix, as a ``gr.Error`` to raise: one log line, no traceback, no path.

    An :class:`AudioError` is worded for ``source`` (the microphone or an upload). The message (and its log
    line, shorter) has no control or bidirectional characters and is bounded (:func:`clean_text`), whatever a
    caller's text it repeats.
    """
    message = problem.for_source(source) if isinstance(problem, AudioError) else str(problem)
    log.warning("refused: %s", clean_text(" ".join(message.split()), MAX_LOG_CHARS))
    return gr.Error(clean_text(message), duration=duration, print_exception=False)


def login_name(request: gr.Request | None) -> str | None:
    """Who is logged in: Gradio auth (``SERDEMO_AUTH``) or a Space's Hugging Face login; None otherwise."""
    if request is None:
        return None
    if getattr(request, "username", None):
        return request.username
    try:
        info = request.session.get("oauth_info") or {}
    except (AttributeError, AssertionError, KeyError):  # no session middleware: no Space login
        return None
    return (info.get("userinfo") or {}).get("preferred_username") or None


def resolve_annotator(name: str, request: gr.Request | None) -> str:
    """The login name where the app has one, else the name typed on the page (text, checked here: a number or
    a list sent through the API is refused with a message)."""
    user = login_name(request)
    if user:
        return str(user).strip()
    return text_arg(name, "the annotator name").strip()


def voice_scope(request: gr.Request | None, annotator: str | None = "") -> str:
    """Whose voice names an Analyse-tab call uses: the login's where the app has logins, else the annotator
    name typed on the page (case and spacing aside), else this browser session's (an API client's own);
    "" without any (a direct call)."""
    user = login_name(request)
    if user:
        return f"login:{user}"
    try:  # the annotator's name as the store identifies it (name_key): ａｌｉｃｅ and @alice are alice
        who = name_key(annotator[:256], "annotator name") if isinstance(annotator, str) else ""
    except StoreError:
        who = ""  # a name the store refuses scopes nothing: this session's voices
    if who:
        return f"annotator:{who}"
    session = getattr(request, "session_hash", None) if request is not None else None
    return f"session:{session}" if session else ""


def requester(request: gr.Request | None, annotator: str | None = "") -> str:
    """Who asks, for what belongs to a person (a retraining run's owner): ``login:NAME`` where the app has
    logins, else ``annotator:NAME`` (the name typed on the page, as the store identifies it), else this
    browser session's ``session:ID``; "" for a direct call. The same rule as :func:`voice_scope`."""
    return voice_scope(request, annotator)


def annotator_field(remembered: str | None, request: gr.Request | None):
    """On load: a logged-in user annotates under the login name (fixed); otherwise the name typed once,
    which this browser remembers across reloads."""
    user = login_name(request)
    if user:
        return gr.update(value=user, interactive=False, info="your login name")
    return gr.update(value=remembered) if remembered else gr.skip()


def require_retrain_login(request: gr.Request | None) -> None:
    """For the workbench's retrain action: with logins configured (``SERDEMO_AUTH``), someone who is not
    logged in is refused with a message (a ``gr.Error``, no traceback); otherwise nothing happens."""
    from serdemo.retrain import RetrainRefused
    try:
        check_may_retrain(login_name(request))
    except RetrainRefused as exc:
        raise user_error(exc) from None


# ---------------------------------------------------------------------------------------------- logins
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


# ------------------------------------------------------------------------------- request bodies and the queue
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
    """Serve Gradio's queue by each client address's share of its time instead of first come, first served:
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


# ------------------------------------------------------------------------------- streamed chunks
STREAM_POST = re.compile(r"/stream/[^/]+$")  # Gradio's route for a stream's next chunk: POST .../stream/{event}
MAX_STREAM_BODY = 64 * 1024  # a chunk's post names a file in a few hundred bytes; a larger body is not read here


class StreamedChunks:
    """Every chunk a page posts to a Gradio stream, in order, per page session (its ``session_hash``).

    Gradio's stream route keeps only the latest chunk while the stream's handler runs (it replaces the event's
    data), and the browser sends an audio chunk every 0.1 s: whenever the handler is late, a chunk is lost. So
    :class:`StreamChunkMiddleware` records each post's streamed file here before Gradio sees it, and the handler
    takes every chunk posted since it last looked (:meth:`take`). Bounded: ``max_sessions`` sessions (the least
    recently posting forgotten first), ``max_pending`` chunks each (the oldest dropped)."""

    def __init__(self, max_sessions: int = 64, max_pending: int = 1200):
        self.max_sessions, self.max_pending = int(max_sessions), int(max_pending)
        self._lock = threading.Lock()
        self._pending: OrderedDict[str, list[str]] = OrderedDict()

    def record(self, session: str, path: str) -> None:
        with self._lock:
            chunks = self._pending.pop(session, [])
            chunks.append(path)
            self._pending[session] = chunks[-self.max_pending:]
            while len(self._pending) > self.max_sessions:
                self._pending.popitem(last=False)

    def record_post(self, body: bytes) -> None:
        """Record the streamed file of one ``POST .../stream/{event}`` body (JSON: ``session_hash`` and ``data``,
        whose first input is the streamed component's file); anything else is ignored."""
        try:
            post = json.loads(body)
            first = post["data"][0]
            session, path = post["session_hash"], first["path"]
        except (ValueError, TypeError, KeyError, IndexError):
            return
        if isinstance(session, str) and isinstance(path, str) and 0 < len(session) <= 128 and len(path) <= 4096:
            self.record(session, path)

    def take(self, session: str | None) -> list[str] | None:
        """The chunks ``session`` posted since the last call, oldest first; None when nothing was ever recorded for
        it (no middleware, or a session forgotten): then only the handler's own chunk is known."""
        with self._lock:
            if not session or session not in self._pending:
                return None
            chunks, self._pending[session] = self._pending[session], []
            return chunks

    def forget(self, session: str | None) -> None:
        with self._lock:
            self._pending.pop(session or "", None)


STREAMED = StreamedChunks()  # the app's one record (app.py installs the middleware that fills it)


class StreamChunkMiddleware:
    """A pure ASGI middleware that records every stream chunk a page posts (:class:`StreamedChunks`) before
    Gradio replaces the waiting one; the request then goes on unchanged. Install with ``launch(app_kwargs=
    {"middleware": [starlette.middleware.Middleware(StreamChunkMiddleware)]})``."""

    def __init__(self, app, chunks: StreamedChunks | None = None):
        self.app, self.chunks = app, chunks if chunks is not None else STREAMED

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http" or scope.get("method") != "POST" or not STREAM_POST.search(scope.get("path", "")):
            return await self.app(scope, receive, send)
        held, size, whole = [], 0, False
        while size <= MAX_STREAM_BODY:
            message = await receive()
            held.append(message)
            size += len(message.get("body", b""))
            if message.get("type") != "http.request" or not message.get("more_body"):
                whole = message.get("type") == "http.request"
                break
        if whole and size <= MAX_STREAM_BODY:
            self.chunks.record_post(b"".join(m.get("body", b"") for m in held))

        async def replay():
            return held.pop(0) if held else await receive()
        return await self.app(scope, replay, send)


def streamed_files(request: gr.Request | None) -> list[str] | None:
    """For a stream's handler: the files its page posted since the handler last looked (:class:`StreamedChunks`),
    oldest first, keeping only files in Gradio's upload folder; None when none were recorded for this page."""
    from gradio.utils import get_upload_folder, is_in_or_equal

    posted = STREAMED.take(getattr(request, "session_hash", None))
    if posted is None:
        return None
    folder = get_upload_folder()
    return [p for p in posted if is_in_or_equal(p, folder) and os.path.isfile(p)]


def stream_closer(request: gr.Request | None):
    """For a stream's handler: a function that ends this page session's pending stream events in Gradio's
    queue, as Gradio does when a page disconnects, or None where that cannot be reached. A released live
    recording (idle, or past its lifetime) calls it, so an abandoned stream frees its place in the stream's
    concurrency limit at once instead of holding it up to the stream's time limit (30 min): without it, a
    client that opens the limit's number of streams and walks away shuts the microphone for everyone.

    Call it from the handler (a worker thread of Gradio's event loop); the function it returns may be called
    from any thread."""
    import anyio.from_thread

    session = getattr(request, "session_hash", None)
    server = getattr(getattr(request, "request", None), "app", None)
    if session is None or not hasattr(server, "get_blocks"):
        return None
    try:
        loop = anyio.from_thread.run_sync(asyncio.get_running_loop)
    except Exception:  # noqa: BLE001 - not inside Gradio's worker thread (a test, a direct call)
        return None

    def end_streams() -> None:  # runs in the event loop: Gradio's queue is not thread-safe
        queue = server.get_blocks()._queue
        for event_id in list(queue.pending_event_ids_session.get(session, ())):
            event = queue.event_ids_to_events.get(event_id)
            if event is not None and event.streaming and not event.closed:
                event.run_time, event.closed = float("inf"), True
                event.signal.set()

    return lambda: loop.call_soon_threadsafe(end_streams)


# ------------------------------------------------------------------------- refused paths in the log
def _client_input_refusal(exc: BaseException | None) -> str | None:
    """What to log, in one line, when ``exc`` is Gradio refusing a request's inputs before any of our code
    ran (a file path outside the allowed folders, a value a component cannot read such as a word for a
    slider, too few inputs); None for anything else (that keeps its traceback)."""
    from gradio.exceptions import InvalidPathError
    if exc is None:
        return None
    if isinstance(exc, InvalidPathError) or isinstance(exc.__cause__, InvalidPathError):
        return "refused: a request named a file outside the allowed folders"
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "preprocess_data" and code.co_filename.replace("\\", "/").endswith("gradio/blocks.py"):
            return f"refused: a request's inputs could not be read ({type(exc).__name__})"
        tb = tb.tb_next
    return None


def _short_print_exc(original):
    """``traceback.print_exc`` that writes one short line for a request Gradio refused on its inputs
    (:func:`_client_input_refusal`) instead of the traceback; everything else is printed as before."""

    def print_exc(*args, **kwargs):
        line = _client_input_refusal(sys.exc_info()[1])
        if line is not None:
            log.warning(line)
            return None
        return original(*args, **kwargs)
    return print_exc


def quiet_refused_paths() -> None:
    """Make Gradio log a refused file path in a request (a client naming ``/etc/passwd`` as its audio), and any
    request whose inputs it cannot read (a word for a number, too few values), as one short line instead of
    1.7-3 KB of traceback, so a client cannot fill the log. Gradio prints those
    tracebacks with ``traceback.print_exc`` in its queue and routes; each of those modules gets a
    ``traceback`` whose ``print_exc`` knows the refusal. Idempotent."""
    import traceback

    import gradio.queueing
    import gradio.routes
    import gradio.utils
    for module in (gradio.queueing, gradio.routes, gradio.utils):
        current = getattr(module, "traceback", None)
        if current is None or getattr(current, "_serdemo_quiet", False):
            continue
        shim = types.ModuleType("traceback")
        shim.__dict__.update({k: v for k, v in vars(traceback).items() if not k.startswith("__")})
        shim.print_exc = _short_print_exc(traceback.print_exc)
        shim._serdemo_quiet = True
        module.traceback = shim


CSS = """
#clip-id input, #q-clip input { font-family: monospace; text-overflow: ellipsis; }
#voice-row { align-items: flex-end; }
#queue table td, #agreement-clips table td { white-space: nowrap; }
#model-metrics table, #retrain-plan table { display: block; width: max-content; max-width: 100%; overflow-x: auto;
  white-space: nowrap; }
#model-metrics td:first-child { white-space: normal; min-width: 10em; }
.comparison th, .comparison td { padding: 4px 10px; text-align: right; }
.comparison th:first-child, .comparison td:first-child { text-align: left; }
.comparison thead th { border-bottom: 2px solid var(--border-color-primary); }
"""


