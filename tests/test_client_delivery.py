"""What a subscriber receives however it reads: leaving a loop early loses
nothing, an unread subscription cannot freeze the others, and the Go-style
queues end (issue 13: defects 1, 2 and 13)."""
import itertools
import queue
import sys
import threading
import time

import pytest

from gosse import FeedClosedError, FeedShutDown, SubscriptionStalledError
from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse

pytestmark = pytest.mark.timeout(60)

TEN = b"".join(b"id: %d\ndata: %d\n\n" % (i, i) for i in range(10))


def ten_events_then_end():
    return sse(TEN, hold=False)


def wait_queued(sub, n, timeout=5):
    deadline = time.monotonic() + timeout
    while sub.feed.qsize() < n and not sub.closed:
        assert time.monotonic() < deadline, f"only {sub.feed.qsize()} of {n} queued"
        time.sleep(0.01)


@pytest.mark.parametrize("leave", ["break", "islice", "next"])
def test_leaving_an_iteration_early_loses_nothing(leave):
    with RawServer(ten_events_then_end()) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            wait_queued(sub, 10)
            got = []
            if leave == "break":
                for event in sub:
                    got.append(event.data)
                    if len(got) == 3:
                        break
            elif leave == "islice":
                got = [e.data for e in itertools.islice(sub, 3)]
            else:
                got = [next(iter(sub)).data for _ in range(3)]
            assert got == ["0", "1", "2"]
            assert sub.get(timeout=3).data == "3"           # the next get() ...
            assert [e.data for e in sub] == [str(i) for i in range(4, 10)]   # ... then the rest


def test_an_unread_subscription_is_ended_after_stall_timeout_and_the_others_go_on():
    events = b"".join(b"data: %d\n\n" % i for i in range(40))
    with RawServer(sse(events)) as server:
        with connect_with_sse_feed(server.url(), queue_size=4, stall_timeout=0.5) as feed:
            forgotten = feed.subscribe()            # kept, never read
            reader = feed.subscribe()
            started = time.monotonic()
            got = [reader.get(timeout=5).data for _ in range(40)]
            assert got == [str(i) for i in range(40)]
            assert time.monotonic() - started < 4
            error = forgotten.err_feed.get(timeout=3)
            assert isinstance(error, SubscriptionStalledError)
            assert "stall_timeout" in str(error)
            assert forgotten.done.wait(3)
            # What it had queued is still handed out, then the error.
            assert [forgotten.get(timeout=1).data for _ in range(4)] == ["0", "1", "2", "3"]
            with pytest.raises(SubscriptionStalledError):
                forgotten.get(timeout=1)
            assert not feed.closed and not reader.closed


def test_stall_timeout_none_keeps_the_old_unbounded_wait():
    events = b"".join(b"data: %d\n\n" % i for i in range(10))
    with RawServer(sse(events)) as server:
        with connect_with_sse_feed(server.url(), queue_size=2, stall_timeout=None) as feed:
            slow = feed.subscribe()
            wait_queued(slow, 2)
            time.sleep(0.6)                  # longer than any stall_timeout used here
            assert slow.err_feed.empty() and not slow.closed
            assert [slow.get(timeout=3).data for _ in range(10)] == [str(i) for i in range(10)]


def test_go_style_get_raises_after_the_end_and_join_returns():
    with RawServer(ten_events_then_end()) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            got = []
            with pytest.raises(FeedShutDown):
                while len(got) < 100:               # bounded Go-style loop
                    got.append(sub.feed.get(timeout=3).data)
                    sub.feed.task_done()
            assert got == [str(i) for i in range(10)]
            assert sub.done.is_set()
            joined = threading.Event()
            threading.Thread(target=lambda: (sub.feed.join(), joined.set()), daemon=True).start()
            assert joined.wait(3), "sub.feed.join() did not return"
            with pytest.raises(FeedClosedError):    # a gosse error ...
                sub.feed.get_nowait()
            if sys.version_info >= (3, 13):         # ... and the stdlib's notion
                with pytest.raises(queue.ShutDown):
                    sub.feed.get()
            else:
                with pytest.raises(EOFError):
                    sub.feed.get()


def test_join_returns_once_iteration_received_everything():
    with RawServer(ten_events_then_end()) as server:
        with connect_with_sse_feed(server.url(), reconnect=False) as feed:
            sub = feed.subscribe()
            assert len(list(sub)) == 10
            joined = threading.Event()
            threading.Thread(target=lambda: (sub.feed.join(), joined.set()), daemon=True).start()
            assert joined.wait(3)


def test_done_is_set_when_the_feed_is_closed_and_the_queue_still_works():
    with RawServer(sse(b"data: a\n\n")) as server:
        feed = connect_with_sse_feed(server.url())
        sub = feed.subscribe()
        assert sub.get(timeout=3).data == "a"
        assert not sub.done.is_set()
        feed.close()
        assert sub.done.wait(3)
        with pytest.raises(FeedShutDown):
            sub.feed.get(timeout=1)
        assert sub.feed.qsize() == 0 and sub.feed.empty()
