"""Issue 29 item 1: every ``/gradio_api/call`` is a new page session, and Gradio kept each one (up to 10,000) with
a copy of every component's config: ~250 kB a call, linearly (3 x 1,000 calls: 754 -> 1,475 MB). Sessions are
now cheap (the configs are made when read), capped, and forgotten when idle, with their state's callbacks run
(a live recording's audio released). No model runs here."""

import dataclasses
import datetime
import gc
import json
import tracemalloc
import urllib.request
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The app as app.py serves it (lean sessions, a session cap), in this process, on a free port."""
    import os

    from serdemo import housekeeping
    from serdemo.ui import Settings, build_app
    from tests.test_app import free_port

    tmp = tmp_path_factory.mktemp("sessions")
    old = os.environ.get("GRADIO_TEMP_DIR")
    os.environ["GRADIO_TEMP_DIR"] = str(tmp / "gradio")
    lean = getattr(housekeeping, "lean_session_state", None)  # (looked up: the old code measures as it was)
    assert lean is None or lean()
    app = build_app(dataclasses.replace(Settings.from_env(), data_dir=tmp / "data",
                                        checkpoint_dirs=(ROOT / "checkpoints",)))
    app.queue(default_concurrency_limit=2)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
               state_session_capacity=50)
    keeper = getattr(housekeeping, "SessionKeeper", None)
    yield SimpleNamespace(app=app, url=f"http://127.0.0.1:{port}", keeper=keeper and keeper(app, idle_s=600))
    app.close()
    if old is None:
        os.environ.pop("GRADIO_TEMP_DIR", None)
    else:
        os.environ["GRADIO_TEMP_DIR"] = old


def call(url: str, api: str = "agreement", session: str | None = None) -> str:
    body = {"data": []} if session is None else {"data": [], "session_hash": session}
    req = urllib.request.Request(f"{url}/gradio_api/call/{api}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=60) as r:
        event = json.loads(r.read())["event_id"]
    with urllib.request.urlopen(f"{url}/gradio_api/call/{api}/{event}", timeout=60) as r:
        text = r.read().decode()
    assert "event: complete" in text, text[-300:]
    return text


def test_a_new_session_per_call_costs_kilobytes_not_a_copy_of_the_page(served):
    """The issue's 250 kB per call was Gradio's SessionState building every component's config for each new
    session; here 60 calls, each its own session, may add at most 40 kB of Python memory apiece (traced)."""
    for _ in range(5):
        call(served.url)  # warm: routes, caches
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        n = 60
        for _ in range(n):
            call(served.url)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown / n < 40_000, f"{grown / n / 1e3:.0f} kB per new-session call"


def test_sessions_are_capped_and_idle_ones_forgotten_with_their_state(served):
    """Gradio keeps at most state_session_capacity sessions (app.py: SERDEMO_SESSIONS); the keeper forgets
    those unused for its idle time, runs their states' delete callbacks (the live recording's release), and
    keeps a session in use."""
    import gradio as gr

    holder = served.app.state_holder
    for _ in range(70):
        call(served.url)
    assert len(holder.session_data) <= 50
    call(served.url, session="in-use")
    released = []
    live_state = next(b for b in served.app.blocks.values()
                      if isinstance(b, gr.State) and getattr(b, "delete_callback", None) is not None
                      and "live" in getattr(b.delete_callback, "__qualname__", ""))
    holder["in-use"][live_state._id] = SimpleNamespace(release=released.append)  # as a live stream leaves it
    holder["stale"][live_state._id] = SimpleNamespace(release=released.append)
    long_ago = datetime.datetime.now() - datetime.timedelta(hours=1)
    for session in list(holder.session_data):
        if session != "in-use":
            holder.time_last_used[session] = long_ago
    dropped = served.keeper.drop_idle()
    assert dropped >= 2 and list(holder.session_data) == ["in-use"]
    assert released == ["session"]  # the stale session's live recording was released, the one in use kept
    call(served.url, session="in-use")  # it goes on being served
    gc.collect()


def test_the_server_sets_up_what_bounds_sessions():
    """app.py installs the lean sessions, Gradio's session cap and the keeper in the sweep (read, not run)."""
    text = (ROOT / "app.py").read_text()
    assert "lean_session_state()" in text and "state_session_capacity=max_page_sessions()" in text
    assert "sessions=SessionKeeper(app)" in text


def test_results_nobody_reads_are_dropped_after_a_while():
    """The abuse benchmark's queue flood (48 /gradio_api/call analyses of a 59-s clip whose results were never
    fetched) left ~500 MB after the load: Gradio keeps a finished event's messages until they are read. A
    session with nothing pending whose oldest message has waited UNREAD_RESULT_S loses them; one still being
    read, or with an event pending, keeps them."""
    import asyncio
    from collections import OrderedDict

    from serdemo.housekeeping import SessionKeeper

    def messages(*items):
        q = asyncio.Queue()
        for item in items:
            q.put_nowait(item)
        return q
    cache = OrderedDict(flood=messages("result 1", "result 2"), reading=messages("a"), busy=messages("b"),
                        empty=messages())
    # Gradio keeps a finished event's id pending until its result is read: "flood"'s e0 ended, "busy"'s e1 runs
    queue = SimpleNamespace(pending_messages_per_session=cache, event_ids_to_events={"e1": object()},
                            pending_event_ids_session={"busy": {"e1"}, "flood": {"e0"}})
    clock = [0.0]
    keeper = SessionKeeper(SimpleNamespace(_queue=queue), unread_s=120, monotonic=lambda: clock[0])
    assert keeper.drop_unread() == 0  # first seen
    clock[0] = 60
    cache["reading"].get_nowait()  # its reader took the old message; a new one came
    cache["reading"].put_nowait("c")
    assert keeper.drop_unread() == 0
    clock[0] = 130
    assert keeper.drop_unread() == 1 and "flood" not in cache and "flood" not in queue.pending_event_ids_session
    assert set(cache) == {"reading", "busy", "empty"}
