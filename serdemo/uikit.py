"""What every tab of the page shares (Gradio side): the ZeroGPU decorator, user errors, who is
annotating, the live stream's chunk record, and the page's keyboard shortcuts and CSS. Imported by ``ui`` and
``timeline_ui``; imports neither. Logins (:mod:`serdemo.logins`) and the limits on bodies and the queue
(:mod:`serdemo.request_limits`) are their own modules; their names stay importable from here."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import sys
import threading
import types
from collections import OrderedDict

import gradio as gr

from serdemo.audio import AudioError
from serdemo.retrain_access import check_may_retrain
from serdemo.store import StoreError, name_key

from serdemo.logins import (CLIENT_DELAY_FAILURES, FAIL_DELAY_S, GLOBAL_FAILURES_PER_MIN, LOCKOUT_S,  # noqa: F401
                            MAX_ANSWER_WAIT_S, MAX_CLIENT_FAILURES, MAX_FAIL_DELAY_S, MAX_LOGIN_CHARS,
                            MAX_LOGIN_FAILURES, MAX_NAME_FAILURES, MAX_TRACKED_NAMES, LoginClientMiddleware,
                            LoginGuard, client_address, configure_proxy_headers, proxy_trusted, request_client)
from serdemo.request_limits import (MAX_JSON_BODY, MAX_PENDING_PER_CLIENT, MAX_PENDING_PER_SESSION,  # noqa: F401
                                    QUEUE_JOIN, UPLOAD_PATH, BodyLimitMiddleware, FairShare, QueueLimitMiddleware,
                                    fair_queue, read_body, refuse_request, replaying)

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
    from serdemo.retrain_access import RetrainRefused
    try:
        check_may_retrain(login_name(request))
    except RetrainRefused as exc:
        raise user_error(exc) from None



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


