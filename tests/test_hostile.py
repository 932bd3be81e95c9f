"""Issue 29, "Hold under hostile load": what a public Space's callers can send that the app must refuse with a
message or shrug off. Logins behind a forged X-Forwarded-For and guesses sent at once (item 7), retraining
runs that only their owner or an admin may stop or decide (item 8), non-text arguments, long echoed text,
log lines and names that look alike (item 9). No model runs here."""

import asyncio
import logging
import time
from types import SimpleNamespace

import numpy as np
import pytest

from tests.conftest import ROOT, harmonics


# --------------------------------------------------------------------------------------- item 7: logins
def _through_the_server(guard, trusted_hosts):
    """An ASGI app as Gradio's server stacks it: uvicorn's proxy-header middleware (``trusted_hosts`` as its
    config reads FORWARDED_ALLOW_IPS), then the middleware app.py installs, then the login guard."""
    from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

    from serdemo.uikit import LoginClientMiddleware

    async def login(scope, receive, send):
        scope["result"] = await guard.check(*scope["login"])

    return ProxyHeadersMiddleware(LoginClientMiddleware(login), trusted_hosts=trusted_hosts)


async def _attempt(app, user, password, peer="127.0.0.1", forwarded=None) -> bool:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    scope = {"type": "http", "client": (peer, 40000), "headers": headers, "login": (user, password)}

    async def nothing():
        return {"type": "http.request"}
    await app(scope, nothing, None)
    return scope["result"]


async def _no_wait(_seconds):
    return None


def test_a_forged_forwarded_for_from_the_same_machine_does_not_escape_the_lockout(monkeypatch):
    """Issue 29 item 7: uvicorn trusts X-Forwarded-For from 127.0.0.1 by default, so a guesser on the server's
    machine (or behind a local proxy) named a new address with every guess and was never locked. Unless a proxy
    is trusted, app.py now has uvicorn trust the header from nobody."""
    import uvicorn

    from serdemo.uikit import LoginGuard, configure_proxy_headers

    for name in ("SPACE_ID", "SERDEMO_TRUST_PROXY", "FORWARDED_ALLOW_IPS"):
        monkeypatch.setenv(name, "x")  # so that undoing restores each as it was
        monkeypatch.delenv(name)
    assert configure_proxy_headers() is False
    config = uvicorn.Config(app=None)  # as Gradio makes it: FORWARDED_ALLOW_IPS from the environment
    guard = LoginGuard({"alice": "s3cret"}, max_client_failures=6, sleep=_no_wait)
    app = _through_the_server(guard, config.forwarded_allow_ips)
    for i in range(8):  # a spray over names, each guess from a "new" address
        assert not asyncio.run(_attempt(app, f"user{i}", "pw", forwarded=f"203.0.113.{i}"))
    assert guard.client_locked_for("127.0.0.1") > 0  # the real peer is locked
    assert not asyncio.run(_attempt(app, "alice", "s3cret", forwarded="198.51.100.1"))


def test_behind_a_trusted_proxy_the_entry_it_added_is_the_client(monkeypatch):
    """On a Space (SPACE_ID) or with SERDEMO_TRUST_PROXY=1 the last X-Forwarded-For entry is the client; an
    operator's own FORWARDED_ALLOW_IPS is kept."""
    from serdemo.uikit import configure_proxy_headers, proxy_trusted

    assert proxy_trusted({"SPACE_ID": "me/serdemo"}) and proxy_trusted({"SERDEMO_TRUST_PROXY": "1"})
    assert not proxy_trusted({"SERDEMO_TRUST_PROXY": "yes please"})
    env = {"SPACE_ID": "me/serdemo"}
    assert configure_proxy_headers(env) is True and "FORWARDED_ALLOW_IPS" not in env
    env = {"FORWARDED_ALLOW_IPS": "10.0.0.2"}
    assert configure_proxy_headers(env) is False and env["FORWARDED_ALLOW_IPS"] == "10.0.0.2"
    env = {}
    assert configure_proxy_headers(env) is False and env["FORWARDED_ALLOW_IPS"] == ""


def test_failed_logins_sent_at_once_from_one_address_are_answered_one_after_another():
    """Issue 29 item 7: 20 wrong passwords sent at once were all answered after the longest delay (8.03 s for
    20). Answers to one address's failures now take turns: together they take the sum of their delays. A
    right password is not kept waiting behind them."""
    from serdemo.uikit import LoginGuard

    guard = LoginGuard({"alice": "s3cret", "bob": "pw"}, delay_s=0.01, max_delay_s=0.04)
    app = _through_the_server(guard, "")

    async def burst():
        guesses = [_attempt(app, f"user{i}", "wrong", peer="192.0.2.7") for i in range(12)]
        t0 = time.perf_counter()
        tasks = [asyncio.ensure_future(g) for g in guesses]
        await asyncio.sleep(0.02)
        right = await _attempt(app, "bob", "pw", peer="192.0.2.7")
        right_s = time.perf_counter() - t0
        results = await asyncio.gather(*tasks)
        return results, right, right_s, time.perf_counter() - t0

    results, right, right_s, total_s = asyncio.run(burst())
    assert not any(results) and right
    # in turn: 7 x 0.01 + 4 x 0.02 + 0.04 = 0.19 s (the delays grow with the address's failures); was 0.04 s
    assert total_s >= 0.18, total_s
    assert right_s < 0.2, right_s


def test_a_guesser_behind_a_shared_address_locks_what_it_guesses_not_everyones_login():
    """Issue 29 item 7: after 20 wrong passwords from one address every login from it was refused, the right
    passwords of other people behind the same address (an office, a university) too. Now the pair (address,
    name) is locked after 5, a name everywhere after 20, the whole address only after 60."""
    from serdemo.uikit import LoginGuard

    guard = LoginGuard({"alice": "s3cret", "bob": "pw"}, sleep=_no_wait)
    app = _through_the_server(guard, "")
    shared, elsewhere = "198.51.100.20", "203.0.113.5"
    for i in range(6):
        assert not asyncio.run(_attempt(app, "alice", f"guess{i}", peer=shared))
    for i in range(19):
        assert not asyncio.run(_attempt(app, f"user{i}", "pw", peer=shared))
    assert guard.client_locked_for(shared) == 0  # 25 failures: under the address's ceiling
    assert asyncio.run(_attempt(app, "bob", "pw", peer=shared))  # bob, behind the same address
    assert not asyncio.run(_attempt(app, "alice", "s3cret", peer=shared))  # the guessed pair is locked
    assert asyncio.run(_attempt(app, "alice", "s3cret", peer=elsewhere))  # alice from home is not
    for i in range(40):
        asyncio.run(_attempt(app, f"more{i}", "pw", peer=shared))
    assert guard.client_locked_for(shared) > 0  # 66 failures: the whole address is locked
    assert not asyncio.run(_attempt(app, "bob", "pw", peer=shared))


# --------------------------------------------------------------------------------------- the workbench
@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    from serdemo.store import as_stored
    from serdemo.workbench import Settings, Workbench

    b = Workbench(Settings(checkpoint_dirs=(ROOT / "checkpoints",), data_dir=tmp_path_factory.mktemp("hostile")))
    b.clip = b.store.add_clip(as_stored(harmonics(140, 0.5)), source_name="c.wav", predicted="happy",
                              confidence=0.5, checkpoint="default")
    return b


def page(name=None, session="s1"):
    """A request as Gradio hands it: logged in as ``name`` (None: nobody), from browser session ``session``."""
    return SimpleNamespace(username=name, session={}, session_hash=session)


# --------------------------------------------------------------------------------------- item 9: arguments
@pytest.mark.parametrize("call, says", [
    (lambda ep, c: ep.relabel(123, "sad", "ann"), "the clip id must be text, not int"),
    (lambda ep, c: ep.relabel(c, ["sad"], "ann"), "the label must be text, not list"),
    (lambda ep, c: ep.relabel(c, "sad", {"name": "ann"}), "the annotator name must be text, not dict"),
    (lambda ep, c: ep.confirm([c], "ann"), "the clip id must be text, not list"),
    (lambda ep, c: ep.save_on_tab(c, 7, "ann"), "the label must be text, not int"),
    (lambda ep, c: ep.queue(10, 5), "show must be text, not int"),
    (lambda ep, c: ep.export({"kind": 1}), "the export kind must be text, not dict"),
    (lambda ep, c: ep.model_card(["default"]), "the model name must be text, not list"),
    (lambda ep, c: ep.model_metrics(3.5), "the model name must be text, not float"),
    (lambda ep, c: ep.warp(1.0, 42, "default"), "the clip id must be text, not int"),
    (lambda ep, c: ep.retrain(["default"]), "the model name must be text, not list"),
    (lambda ep, c: ep.forget_voice(["alice"]), "the voice name must be text"),
    (lambda ep, c: ep.bench.history({"clip": c}), "the clip id must be text, not dict"),
    (lambda ep, c: ep.bench.retrain_plan(["default"]), "the model name must be text, not list"),
    (lambda ep, c: ep.relabel("x" * 100_000, "sad", "ann"), "100,000 characters long; at most 128"),
    (lambda ep, c: ep.relabel(c, "y" * 10_000_000, "ann"), "10,000,000 characters long; at most 256"),
])
def test_arguments_that_are_not_text_are_refused_with_a_message(bench, caplog, call, says):
    """Issue 29 item 9: a number, a list or a dict sent through the API where a clip id or a name goes raised a
    TypeError deep inside (a traceback in the log, ``{"error": null}`` to the client). Each is now refused at
    the boundary, naming the argument; a huge string is refused by its length, not echoed."""
    import gradio as gr

    from serdemo.endpoints import Endpoints

    with caplog.at_level(logging.WARNING, logger="serdemo.ui"), pytest.raises(gr.Error) as refused:
        call(Endpoints(bench), bench.clip)
    assert says in refused.value.message
    assert len(refused.value.message) < 300 and all(len(r.getMessage()) < 400 for r in caplog.records)


def test_an_echoed_text_is_capped_and_the_log_gets_no_control_or_bidi_characters(bench, caplog):
    import gradio as gr

    from serdemo.endpoints import Endpoints
    from serdemo.uikit import user_error

    with caplog.at_level(logging.WARNING, logger="serdemo.ui"), pytest.raises(gr.Error) as refused:
        Endpoints(bench).relabel(bench.clip, "z" * 250, "ann")  # under the argument's bound, over the echo's
    assert "is not one of the labels" in refused.value.message and len(refused.value.message) < 400
    assert "z" * 199 + "…" in refused.value.message and "z" * 201 not in refused.value.message
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="serdemo.ui"):
        error = user_error("no model named 'evil\x00\u202egnp.exe\u2066x\u2069'" + "w" * 5000)
    (line,) = [r.getMessage() for r in caplog.records]
    for bad in ("\x00", "\u202e", "\u2066", "\u2069"):
        assert bad not in line and bad not in error.message
    assert line.startswith("refused: no model named 'evilgnp.exex'") and len(line) <= 320
    assert len(error.message) <= 1000


def test_names_that_look_alike_are_one_annotator_and_mixed_alphabets_are_refused(bench):
    """Issue 29 item 9: ``Alice``, ``ａｌｉｃｅ`` (full width), ``@alice`` and ``ALICE`` were four annotators, and
    ``аlice`` (a Cyrillic а) passed for alice in every table. Now they are one person (NFKC, case folded, a
    leading @ dropped), filed under the spelling the store saw first, and a name mixing Latin with Cyrillic or
    Greek letters is refused with a message. The voice names use the same rule."""
    import gradio as gr

    from serdemo.endpoints import Endpoints
    from serdemo.store import as_stored
    from serdemo.uikit import voice_scope
    from serdemo.workbench import voice_name

    ep = Endpoints(bench)
    clip = bench.store.add_clip(as_stored(harmonics(180, 0.5)), source_name="alike.wav", predicted="sad",
                                confidence=0.3, checkpoint="default")
    for name in ("Alice", "ａｌｉｃｅ", "@alice", "  ALICE ", "аӏісе"):  # the last: all Cyrillic lookalikes
        status, _ = ep.relabel(clip, "sad", name)
        assert "by Alice" in status, status
    assert {e.annotator for e in bench.store.history(clip)} == {"Alice"}
    for mixed, alphabets in (("аlice", "Cyrillic and Latin"), ("bοb", "Greek and Latin")):
        with pytest.raises(gr.Error, match=f"mixes {alphabets} letters, which look alike: type it in one alphabet"):
            ep.relabel(clip, "sad", mixed)
    assert len(bench.store.history(clip)) == 5
    assert voice_name("@ＡＬＩＣＥ") == voice_name("alice") == "alice"
    with pytest.raises(gr.Error, match="mixes Cyrillic and Latin"):
        voice_name("аlice")
    assert voice_scope(page(), "ａｌｉｃｅ") == voice_scope(page(), "@Alice") == "annotator:alice"


def test_a_store_opened_with_older_labels_files_new_spellings_under_the_old_name(tmp_path):
    from serdemo.store import Store, as_stored

    store = Store(tmp_path)
    clip = store.add_clip(as_stored(harmonics(200, 0.5)), predicted="sad", confidence=0.5)
    store.label_clip(clip, "sad", "Bob")
    with store._write() as con:  # as a store from before annotators were keyed
        con.execute("DELETE FROM annotators")
    reopened = Store(tmp_path)
    assert reopened.label_clip(clip, "angry", "bob").annotator == "Bob"
    assert reopened.counts()["annotator"] == {"Bob": 2}


# --------------------------------------------------------------------------------------- item 8: retraining
def _running(bench, owner):
    """A stand-in run of ``owner`` (a sleeping process) as the workbench's retrainer holds it."""
    import subprocess
    import sys

    r = bench.retrainer
    r.out, r.log, r.started = bench.trained_dir / f"default-ft-{owner.split(':')[0]}", bench.retrainer.workdir / "x.log", time.time()
    r.out.mkdir(parents=True, exist_ok=True)
    r.log.parent.mkdir(parents=True, exist_ok=True)
    r.log.write_text("")
    r.proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    r.owner, r.cancelled = owner, False
    r.runs.append({"name": r.out.name, "base": "default", "started": r.clock(), "ended": None, "owner": owner})
    return r


def test_only_the_runs_owner_or_an_admin_may_cancel_it(bench, monkeypatch):
    """Issue 29 item 8: anyone could cancel, keep or discard anyone's run. Now only its owner (the login that
    started it) or an admin named in SERDEMO_ADMINS; the others get a message that says who may."""
    import gradio as gr

    monkeypatch.setenv("SERDEMO_AUTH", "alice:a,bob:b,carol:c")
    monkeypatch.setenv("SERDEMO_ADMINS", "Carol")
    r = _running(bench, "login:alice")
    try:
        with pytest.raises(gr.Error, match="only alice, who started it, or an admin \\(SERDEMO_ADMINS\\) may cancel"):
            bench.retrain_cancel(page("bob"))
        assert r.running
        assert bench.retrain_cancel(page("alice")).startswith("Cancelled")
        r = _running(bench, "login:alice")
        assert bench.retrain_cancel(page("carol")).startswith("Cancelled")  # an admin
        assert not r.running
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def test_without_logins_the_run_belongs_to_the_page_or_annotator_that_started_it(bench, monkeypatch):
    import gradio as gr

    monkeypatch.delenv("SERDEMO_AUTH", raising=False)
    monkeypatch.setenv("SERDEMO_ADMINS", "mallory")  # an admin needs a login: a typed name is nobody's proof
    r = _running(bench, "session:s1")
    try:
        for other in (page(session="s2"), None):
            with pytest.raises(gr.Error, match="only the page that started it or an admin"):
                bench.retrain_cancel(other)
        with pytest.raises(gr.Error, match="only the page that started it"):
            bench.retrain_cancel(page(session="s2"), "mallory")
        assert bench.retrain_cancel(page(session="s1")).startswith("Cancelled")
        r = _running(bench, "annotator:ann lee")
        with pytest.raises(gr.Error, match=r"only the annotator who started it \(ann lee\)"):
            bench.retrain_cancel(page(session="s1"))
        assert bench.retrain_cancel(page(session="s9"), "Ann  LEE").startswith("Cancelled")
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


# --------------------------------------------------------------------------------------- items 6, 2, 4
async def _asgi(app, method, path, body=b"", headers=(), client=("192.0.2.1", 5000), scope_extra=None):
    """One request through an ASGI app: ``(status, JSON body or None, whether the inner app ran)``."""
    import json

    scope = {"type": "http", "method": method, "path": path, "client": client,
             "headers": [(k.encode(), v.encode()) for k, v in headers], **(scope_extra or {})}
    chunks = [body[i:i + 65536] for i in range(0, len(body), 65536)] or [b""]
    messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    sent = []

    async def receive():
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)
    await app(scope, receive, send)
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    payload = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        return status, json.loads(payload), scope.get("ran", False)
    except ValueError:
        return status, None, scope.get("ran", False)


async def _inner(scope, receive, send):
    """The app behind the middleware: reads the whole body and answers 200 with its length."""
    size = 0
    while True:
        message = await receive()
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    scope["ran"] = True
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": str(size).encode()})


def test_a_huge_json_body_is_refused_before_gradio_reads_it():
    """Issue 29 item 6: a 10 MB JSON body (a 10 MB "name") was read, parsed and handed to the callback. Bodies
    outside uploads are now refused over 1 MB with a message (declared or not); uploads keep their own limit."""
    from serdemo.uikit import BodyLimitMiddleware

    app = BodyLimitMiddleware(_inner)
    small = b'{"data": ["abc", "sad", "ann"], "session_hash": "x"}'
    huge = b'{"data": ["' + b"x" * (10 << 20) + b'"]}'
    assert asyncio.run(_asgi(app, "POST", "/gradio_api/queue/join", small,
                             [("content-length", str(len(small)))]))[::2] == (200, True)
    for headers in ([("content-length", str(len(huge)))], []):  # declared, and sent without a length
        status, body, ran = asyncio.run(_asgi(app, "POST", "/gradio_api/call/relabel", huge, headers))
        assert (status, ran) == (413, False) and "too large" in body["detail"] and "upload audio as a file" in body["detail"]
    assert asyncio.run(_asgi(app, "POST", "/gradio_api/upload", huge, [("content-length", str(len(huge)))]))[::2] \
        == (200, True)


def test_one_client_flooding_the_queue_is_refused_its_excess_with_a_message():
    """Issue 29 item 2: one client could put any number of events in Gradio's queue ahead of everyone. Now a page
    session holds at most 16 waiting or running events and a client address 48; the rest is refused (503, as
    Gradio refuses a full queue) with a message, and others are served."""
    from serdemo.uikit import QueueLimitMiddleware

    def event(session, client):
        request = SimpleNamespace(scope={"client": (client, 1), "headers": []})
        return SimpleNamespace(session_hash=session, request=request)

    queue = SimpleNamespace(event_ids_to_events={})
    server = SimpleNamespace(get_blocks=lambda: SimpleNamespace(_queue=queue))
    app = QueueLimitMiddleware(_inner, per_session=3, per_client=5)

    def join(session, client):
        body = ('{"data": [], "fn_index": 1, "session_hash": "%s"}' % session).encode()
        status, payload, ran = asyncio.run(_asgi(app, "POST", "/gradio_api/queue/join", body, client=(client, 9),
                                                 scope_extra={"app": server}))
        if ran:
            queue.event_ids_to_events[f"{session}-{len(queue.event_ids_to_events)}"] = event(session, client)
        return status, payload

    assert [join("flood", "198.51.100.9")[0] for _ in range(5)] == [200, 200, 200, 503, 503]
    status, payload = join("flood", "198.51.100.9")
    assert "too many requests waiting: you have 3 in the queue already" in payload["detail"]
    assert [join(f"new{i}", "198.51.100.9")[0] for i in range(3)] == [200, 200, 503]  # fresh sessions: the address
    assert join("someone", "203.0.113.4")[0] == 200  # everyone else is served
    queue.event_ids_to_events.clear()  # the flood's events finished
    assert join("flood", "198.51.100.9")[0] == 200


def test_an_upload_is_checked_against_the_disk_budget_when_it_arrives(tmp_path):
    """Issue 29 item 4: the budget was enforced once a minute by the sweep, so uploads arriving meanwhile could
    fill the disk. An upload that would pass the budget now has the sweep run first (old files go) and is
    refused with a message if it still does not fit."""
    import os

    from serdemo.housekeeping import UploadBudget, UploadBudgetMiddleware

    cache, work = tmp_path / "gradio", tmp_path / "tmp"
    cache.mkdir()
    work.mkdir()
    old = cache / "old"
    old.mkdir()
    (old / "a.wav").write_bytes(b"\0" * 600_000)
    os.utime(old / "a.wav", (time.time() - 600, time.time() - 600))  # 10 min old: the sweep may take it
    os.utime(old, (time.time() - 600, time.time() - 600))
    budget = UploadBudget(cache, work, budget=1_000_000, max_age_s=3600)
    app = UploadBudgetMiddleware(_inner, budget)

    def upload(nbytes):
        return asyncio.run(_asgi(app, "POST", "/gradio_api/upload", b"x", [("content-length", str(nbytes))]))

    assert upload(300_000)[::2] == (200, True)  # 600 KB + 300 KB fit
    (cache / "young.wav").write_bytes(b"\0" * 300_000)  # what that upload wrote
    assert upload(300_000)[::2] == (200, True) and not old.exists()  # the sweep made room: the old file went
    (cache / "young2.wav").write_bytes(b"\0" * 300_000)
    status, body, ran = upload(600_000)  # only young files left: nothing may go
    assert (status, ran) == (507, False) and "temporary disk is full" in body["detail"]
    assert (cache / "young.wav").exists() and budget.refused == 1


def test_one_client_may_fill_only_its_share_of_the_upload_budget(tmp_path):
    """Issue 29 item 4: 60 x 45 MB uploads from one client filled the 1 GB budget in 16 s, and every other
    user's upload was then refused for minutes (nothing younger than 2 min may be swept). One client address
    may now upload its share (a quarter of the budget) per 10 minutes; past it, 429 with a message, while
    another address is still served."""
    from serdemo.housekeeping import UploadBudget, UploadBudgetMiddleware

    (tmp_path / "gradio").mkdir()
    budget = UploadBudget(tmp_path / "gradio", tmp_path, budget=1_000_000_000, per_client=250_000_000)
    app = UploadBudgetMiddleware(_inner, budget)

    def upload(client):
        return asyncio.run(_asgi(app, "POST", "/gradio_api/upload", b"x", [("content-length", str(45_000_000))],
                                 client=(client, 5000)))

    answers = [upload("203.0.113.66") for _ in range(8)]
    assert [a[0] for a in answers] == [200] * 5 + [429] * 3
    assert "you have uploaded 250 MB in the last 10 minutes" in answers[-1][1]["detail"]
    assert upload("198.51.100.7")[::2] == (200, True)


def test_an_export_is_served_from_gradios_cache_without_a_second_copy(bench):
    """Issue 29 item 4: each export left two copies of its zip (ours in the temp folder, and the copy Gradio
    made in its cache to serve it). The zip is now written into Gradio's cache, which Gradio serves as is."""
    import gradio as gr

    bench.store.label_clip(bench.clip, "sad", "exporter")
    path = bench.export("audiofolder")
    served = gr.File().move_resource_to_block_cache(path)
    assert str(served) == str(path)  # not copied
    from serdemo.housekeeping import gradio_cache_dir
    assert path.resolve().is_relative_to(gradio_cache_dir().resolve())


def test_the_pages_retrain_buttons_send_the_annotator_name(tmp_path, monkeypatch):
    """Without logins a run belongs to the annotator who started it (else the page), but the page's retrain,
    cancel, keep and discard buttons sent no annotator: a run started on one page could not be cancelled by the
    same annotator after a reload. Each now sends the name; the API keeps it optional."""
    import dataclasses

    import gradio as gr

    from serdemo.ui import Settings, build_app

    monkeypatch.delenv("SERDEMO_AUTH", raising=False)
    app = build_app(dataclasses.replace(Settings.from_env(), data_dir=tmp_path / "data",
                                        checkpoint_dirs=(ROOT / "checkpoints",)))
    annotator = next(b for b in app.blocks.values() if getattr(b, "elem_id", None) == "annotator")
    fns = {f.api_name: f for f in app.fns.values() if f.api_name}
    for name in ("retrain", "retrain_cancel", "retrain_keep", "retrain_discard"):
        assert annotator in fns[name].inputs, name
    info = app.get_api_info()["named_endpoints"]
    for name in ("/retrain_cancel", "/retrain_keep", "/retrain_discard"):
        assert all(p["parameter_has_default"] for p in info[name]["parameters"]), name
    bench = app.workbench
    r = _running(bench, "annotator:ann lee")
    cancel = fns["retrain_cancel"].fn
    try:  # as Gradio calls the button's function: its input, the request where the signature has it
        with pytest.raises(gr.Error, match="only the annotator who started it"):
            cancel(page(session="reloaded"), "bob")
        assert cancel(page(session="reloaded"), "Ann Lee").startswith("Cancelled")
    finally:
        if r.proc.poll() is None:
            r.proc.kill()
            r.proc.wait()


def test_the_queue_is_served_round_robin_by_client_not_first_come(monkeypatch):
    """Issue 29 item 2: 100 analyses from one client enqueued in 0.6 s made another user's 4-s analysis wait
    80.6 s behind them (the cap per client, 48, still leaves 48 ahead). Gradio's queue now picks each client's
    first waiting event before anyone's second: the other user's one event is next after the flood's first."""
    from serdemo.uikit import fair_queue

    def event(address, name):
        return SimpleNamespace(name=name, session_hash=name, request=SimpleNamespace(scope={"client": (address, 1)}))

    flood = [event("203.0.113.9", f"flood{i}") for i in range(40)]
    other = [event("198.51.100.4", "alice"), event("198.51.100.5", "bob")]
    group = SimpleNamespace(queue=flood[:30] + [other[0]] + flood[30:] + [other[1]])
    picked = []
    queue = SimpleNamespace(event_queue_per_concurrency_id={"analysis": group},
                            get_events=lambda: picked.append(group.queue.pop(0).name) or picked[-1])
    blocks = SimpleNamespace(_queue=queue)
    assert fair_queue(blocks) and fair_queue(blocks)  # installed once
    for _ in range(4):
        queue.get_events()
    assert picked == ["flood0", "alice", "bob", "flood1"]
    assert [e.name for e in group.queue[:3]] == ["flood2", "flood3", "flood4"]  # the flood keeps its own order
    # a client with an event running has had its turn: the next waiting user goes before the flood's next
    queue.active_jobs = [[flood[2]], None]
    group.queue[:] = [e for e in group.queue if e is not flood[2]] + [event("198.51.100.6", "carol")]
    picked.clear()
    queue.get_events()
    assert picked == ["carol"]


def test_a_client_whose_events_are_long_waits_until_the_others_have_had_as_much_time():
    """Issue 29 item 2, as the abuse benchmark found it: round-robin by turns still gave a flood of 59-s
    analyses half the workers (each of its turns is 15 times an ordinary clip's), so ordinary users' p95 rose
    2.8x. The queue is now shared by time: a client's recent seconds (halved every minute) plus what its
    waiting events will take decide when its next event runs."""
    from serdemo.uikit import FairShare, fair_queue

    def event(address, name):
        return SimpleNamespace(_id=name, name=name, session_hash=name,
                               request=SimpleNamespace(scope={"client": (address, 1)}))

    clock = [0.0]
    share = FairShare(half_life_s=60, clock=lambda: clock[0])
    flood = [event("203.0.113.9", f"flood{i}") for i in range(10)]
    users = [event(f"198.51.100.{i}", f"user{i}") for i in range(3)]
    group = SimpleNamespace(queue=list(flood))
    queue = SimpleNamespace(event_queue_per_concurrency_id={"a": group}, active_jobs=[None, None],
                            get_events=lambda: ([group.queue.pop(0)], False, "a"))
    fair_queue(SimpleNamespace(_queue=queue), share=share)
    for _ in range(2):  # the flood runs two of its 8-s analyses, one after the other
        queue.active_jobs[0] = queue.get_events()[0]
        clock[0] += 8
        queue.active_jobs[0][0].run_time = 8.0  # what Gradio counts for the event
        queue.active_jobs[0] = None
    users_first = [event("198.51.100.7", "late user")]
    group.queue += users + users_first
    picked = [queue.get_events()[0][0].name for _ in range(4)]
    assert picked == ["user0", "user1", "user2", "late user"]  # 16 s of the flood's lately: the others first
    assert share.share("203.0.113.9", clock[0]) == pytest.approx(8 * 0.5 ** (8 / 60) + 8)  # halved each minute
    for e in (*users, *users_first):
        e.run_time = 0.5
    clock[0] += 600  # ten minutes on, its history has faded: its turn comes
    assert queue.get_events()[0][0].name == "flood2"
