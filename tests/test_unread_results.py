"""Issue 29, memory after the load: the sweep dropped a finished result nobody read after 120 s, so the abuse
benchmark's flood results that finished late in the load (48 analyses of a 59-s clip, ~5 MB each, never read)
were still held when it measured RSS 120 s after the load. They now go after 60 s (SERDEMO_UNREAD_RESULT_S)."""

from types import SimpleNamespace


def test_unread_results_go_after_a_minute_by_default(monkeypatch):
    from serdemo.sessions import SessionKeeper
    monkeypatch.delenv("SERDEMO_UNREAD_RESULT_S", raising=False)
    clock = [0.0]
    messages = SimpleNamespace(_queue=["a 5-MB analysis nobody reads"])
    queue = SimpleNamespace(pending_messages_per_session={"flood": messages},
                            pending_event_ids_session={"flood": {"e1"}}, event_ids_to_events={})
    keeper = SessionKeeper(SimpleNamespace(_queue=queue), monotonic=lambda: clock[0])
    assert keeper.drop_unread() == 0  # first seen
    clock[0] = 61
    assert keeper.drop_unread() == 1 and "flood" not in queue.pending_messages_per_session


def test_the_setting_keeps_them_longer(monkeypatch):
    from serdemo.sessions import SessionKeeper
    monkeypatch.setenv("SERDEMO_UNREAD_RESULT_S", "300")
    assert SessionKeeper(SimpleNamespace()).unread_s == 300

