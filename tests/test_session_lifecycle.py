"""Issue 12: session lifetimes, replay ids and queue bounds, in-process.

These drive the WSGI body directly (what a server does, minus the socket):
nothing here crosses the network; the server-side behaviour over real
sockets is in test_delivery_defects.py and test_direct_write.py.
"""
import threading
import time

import pytest

from gosse import Broker, Event, UnknownClientError
from gosse.broker import RESET_EVENT
from gosse.parser import EventStreamParser


def open_stream(broker, client="c", headers=None, **kw):
    """connect() plus start_response, as a server does; returns (conn, body)."""
    environ = {"REQUEST_METHOD": "GET", **(headers or {})}
    conn = broker.connect(client, environ, **kw)
    return conn, iter(conn(environ, lambda status, headers: None))


def events_of(*chunks):
    parser = EventStreamParser()
    out = []
    for chunk in chunks:
        out += parser.feed(chunk)
    return out


def resume(broker, client, last_id, **kw):
    """The events a reconnect with ``Last-Event-ID: last_id`` starts with."""
    conn, body = open_stream(broker, client, {"HTTP_LAST_EVENT_ID": last_id}, **kw)
    first = next(body)
    conn.close()
    return events_of(first)


# -- replay ids (defects 2, 3, 6) ---------------------------------------------------

def test_auto_ids_never_repeat_across_broker_lifetimes():
    """A restarted broker must not give an old id to a new event: a client
    resuming from a previous process's id gets a reset, not a replay from
    the wrong place (defect 2)."""
    before = Broker(auto_id=True, history=10)
    old = [resume_id for resume_id in (_broadcast_id(before, f"old {i}") for i in range(3))]
    before.close()
    after = Broker(auto_id=True, history=10)
    new = [_broadcast_id(after, f"new {i}") for i in range(3)]
    assert not set(old) & set(new)
    [reset] = resume(after, "c", old[0])
    assert reset.event == RESET_EVENT and reset.data == old[0]
    after.close()


def _broadcast_id(broker, data):
    """Broadcast ``data`` to a listening session; return the id it got."""
    conn, body = open_stream(broker, "listener")
    next(body)
    broker.broadcast(Event(data))
    [event] = events_of(next(body))
    conn.close()
    return event.id


def test_send_to_an_unknown_client_records_nothing():
    """send() that raises UnknownClientError must neither keep the event for
    replay nor use up an id (defect 3): an app that retries it would get it
    delivered twice."""
    broker = Broker(auto_id=True, history=10)
    conn, body = open_stream(broker, "a")
    next(body)
    broker.broadcast(Event("one"))
    with pytest.raises(UnknownClientError):
        broker.send("nobody", Event("lost"))
    broker.broadcast(Event("two"))
    one, two = events_of(next(body))
    assert int(two.id.rsplit("-", 1)[-1]) == int(one.id.rsplit("-", 1)[-1]) + 1   # no id used up
    assert [e.data for e in resume(broker, "nobody", one.id)] == ["two"]
    broker.close()


def test_session_sends_are_resumable():
    """ClientConnection.send events get auto ids and are replayed to the
    same client's next session; an explicit id on one is a valid resume
    point (defect 6)."""
    broker = Broker(auto_id=True, history=20)
    conn, body = open_stream(broker, "a")
    next(body)
    broker.broadcast(Event("b0"))
    assert conn.send(Event("private"))
    broker.broadcast(Event("b1"))
    assert conn.send(Event("named", id="x1"))
    broker.broadcast(Event("b2"))
    got = events_of(next(body))
    assert [e.data for e in got] == ["b0", "private", "b1", "named", "b2"]
    assert all(e.id for e in got)
    assert [e.data for e in resume(broker, "a", got[0].id)] == ["private", "b1", "named", "b2"]
    assert [e.data for e in resume(broker, "other", got[0].id)] == ["b1", "b2"]
    assert [e.data for e in resume(broker, "a", "x1")] == ["b2"]
    broker.close()


# -- history lookups and replay bounds (defects 13, 14) -------------------------------

def test_unknown_last_event_id_is_found_out_in_constant_time():
    """An unknown Last-Event-ID used to scan the whole history under the
    broker lock (quadratically: seconds at a few 100k events).  A guard with
    a wide margin, not a benchmark: the old code took ~1.5 s here."""
    broker = Broker(history=400_000)
    for i in range(400_000):
        broker.broadcast(Event("x", id=str(i)))
    start = time.perf_counter()
    [reset] = resume(broker, "c", "not-an-id")
    assert time.perf_counter() - start < 0.3
    assert reset.event == RESET_EVENT
    assert [e.id for e in resume(broker, "c", "399998")] == ["399999"]
    broker.close()


def test_replay_longer_than_the_queue_is_delivered_not_dropped():
    """A replay of more events than queue_size used to get the resuming
    client dropped as a slow reader before its first byte (defect 14)."""
    broker = Broker(history=1000, queue_size=10)
    for i in range(100):
        broker.broadcast(Event(str(i), id=str(i)))
    conn, body = open_stream(broker, "c", {"HTTP_LAST_EVENT_ID": "0"})
    assert [e.data for e in events_of(next(body))] == [str(i) for i in range(1, 100)]
    broker.broadcast(Event("live", id="100"))
    assert [e.data for e in events_of(next(body))] == ["live"]
    assert conn.end_reason is None and not conn.done.is_set()
    broker.close()


def test_replay_beyond_the_byte_bound_is_a_reset():
    broker = Broker(history=100, queue_bytes=10_000)
    for i in range(50):
        broker.broadcast(Event("x" * 1000, id=str(i)))
    [reset] = resume(broker, "c", "0")
    assert reset.event == RESET_EVENT
    assert len(resume(broker, "c", "45")) == 4
    broker.close()


# -- queue bounds (defects 10, 15) ------------------------------------------------------

def test_queue_is_bounded_by_bytes():
    """queue_size counts events; a lagging session with large events must
    also be bounded in bytes (defect 15)."""
    broker = Broker(queue_size=1024, queue_bytes=1 << 20)
    conn, body = open_stream(broker, "c")
    next(body)
    reached = sum(broker.broadcast(Event("x" * 100_000)) for _ in range(20))
    assert 9 <= reached <= 11
    assert conn.session.mailbox.queued_bytes <= 1 << 20
    assert conn.wait(5) and conn.end_reason == "slow reader"
    broker.close()


def test_a_backlog_is_written_in_bounded_pieces():
    """Draining a lagging session must not join its whole backlog into one
    copy (defect 15): each next() takes at most about 256 KiB."""
    broker = Broker(queue_size=1024, queue_bytes=64 << 20)
    conn, body = open_stream(broker, "c")
    next(body)
    event = Event("y" * 100_000)
    for _ in range(50):
        broker.broadcast(event)
    sizes = []
    while sum(sizes) < 50 * len(event.encode()):
        sizes.append(len(next(body)))
    assert len(sizes) > 1 and max(sizes) <= 256 * 1024 + len(event.encode())
    broker.close()


def test_slow_drop_while_the_stream_drains_never_breaks_iteration():
    """A slow-reader drop that happens while the stream thread is taking
    events out of the queue used to clear the deque under it:
    ``IndexError: pop from an empty deque`` escaped the body (defect 10).
    The interleaving is forced: the drop runs inside the consumer's pop."""
    broker = Broker(queue_size=4)
    conn, body = open_stream(broker, "c")
    next(body)
    mailbox = conn.session.mailbox
    for i in range(3):
        broker.broadcast(Event(str(i)))

    class Interleaving(type(mailbox._items)):
        fired = False

        def popleft(self):
            item = super().popleft()
            if not Interleaving.fired:
                Interleaving.fired = True
                for _ in range(10):          # another thread's burst overflows now
                    broker.broadcast(Event("more"))
            return item

    mailbox._items = Interleaving(mailbox._items)
    chunks = []
    for chunk in body:      # must end with StopIteration, nothing else
        chunks.append(chunk)
    assert Interleaving.fired and conn.session.end_reason == "slow reader"
    assert conn.wait(5)
    broker.close()


# -- lifetimes (defects 7, 8, 9) --------------------------------------------------------

def test_a_response_nobody_serves_is_released():
    """connect() registers at once; a response that no server ever sends
    (the view returned something else, after_request raised after Flask
    took the first item) must not stay registered (defect 7)."""
    broker = Broker()
    calls = []
    broker.set_disconnect_callback(lambda c, s: calls.append(s))
    conn = broker.connect("ghost", {"REQUEST_METHOD": "GET"})
    conn2, body = open_stream(broker, "ghost")
    next(body)   # Flask takes the first item itself, before after_request runs
    ids = [conn.session_id, conn2.session_id]
    done = [conn.done, conn2.done]
    assert broker.stats()["sessions"] == 2
    del conn, conn2, body          # what the framework does with a failed response
    assert all(d.wait(5) for d in done)
    assert sorted(calls) == sorted(ids)
    stats = broker.stats()
    assert stats["sessions"] == 0 and stats["sessions_not_served"] == 2
    broker.close()


def test_a_session_held_but_never_served_expires(monkeypatch):
    import gosse.broker
    monkeypatch.setattr(gosse.broker, "PENDING_TIMEOUT", 1.0)
    broker = Broker()
    conn = broker.connect("held", {"REQUEST_METHOD": "GET"})
    assert conn.wait(5) and conn.end_reason == "not served"
    assert not broker.is_client_present("held")
    broker.close()


@pytest.mark.parametrize("how", ["close", "max_age", "broker_close"])
def test_iteration_end_releases_the_session_without_close(how):
    """A middleware that does not forward close() must not leak the session
    (defect 8): the end of the iteration releases it."""
    broker = Broker(max_connection_age=0.2 if how == "max_age" else None)
    released = threading.Event()
    broker.set_disconnect_callback(lambda c, s: released.set())
    conn, body = open_stream(broker, "m")
    next(body)
    if how == "close":
        conn.close()
    elif how == "broker_close":
        threading.Thread(target=broker.close).start()
    rest = list(body)          # the server iterates to the end; close() never comes
    assert rest == [] or all(isinstance(c, bytes) for c in rest)
    assert released.wait(5) and conn.done.is_set()
    assert broker.stats()["sessions"] == 0
    broker.close()


def test_close_of_a_stream_whose_server_thread_is_stuck_ends_in_bounded_time():
    """conn.close() while the server thread is stuck writing to a reader that
    stopped reading (here: it never asks for the next item) must still end the
    session within about the close timeout (defect 9)."""
    broker = Broker()
    calls = []
    broker.set_disconnect_callback(lambda c, s: calls.append(s))
    conn, body = open_stream(broker, "stuck")
    next(body)
    broker.broadcast(Event("a"))
    next(body)                  # served; the server is now "writing" this forever
    broker.broadcast(Event("b"))
    start = time.monotonic()
    conn.close(timeout=0.5)
    assert conn.wait(5)
    assert time.monotonic() - start < 3
    assert conn.end_reason == "closed" and calls == [conn.session_id]
    broker.close()


def test_an_end_during_the_hand_over_reaches_the_writer():
    """An end (conn.close(), SIGTERM's broker.close()) that lands while the
    stream hands its socket to the writer must not be lost: the writer must
    finish the session.  Forced: the end runs, from another thread, inside
    the hand-over, after its check and before it records the hand-over."""
    import socket as socketlib

    from gosse.session import Mailbox

    broker = Broker()
    conn, body = open_stream(broker, "h")
    next(body)
    session = conn.session
    session.served = True
    server, client = socketlib.socketpair()
    ended = threading.Event()

    class EndDuringHandOver(Mailbox):
        def retire(self):
            threading.Thread(target=lambda: (broker._end_session(session, "closed", 1.0),
                                             ended.set())).start()
            ended.wait(0.5)     # done at once without the fix; blocked with it
            return super().retire()

    mailbox = EndDuringHandOver(10, 1 << 20)
    session.mailbox = mailbox
    handed = broker._hand_over(session, server)
    assert handed is not None
    finished, _ = handed
    assert finished.acquire(timeout=5), "the writer was never told the session ended"
    assert ended.wait(5) and session.end_reason == "closed"
    broker.close()
    server.close()
    client.close()
