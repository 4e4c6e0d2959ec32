"""How feeds end: close() from a signal handler, a feed nobody references,
many feeds on one session (issue 13: defects 3, 4 and 15)."""
import gc
import os
import subprocess
import sys
import textwrap
import time
import weakref

import pytest
import requests

from gosse.client import connect_with_sse_feed
from rawserver import RawServer, sse
from servers import HERE, ROOT

pytestmark = pytest.mark.timeout(60)

SIGNAL_SCRIPT = textwrap.dedent("""
    import queue, random, signal, sys
    sys.path.insert(0, sys.argv[1])
    from rawserver import RawServer
    from gosse import FeedClosedError, connect_with_sse_feed

    def firehose(conn):
        conn.start()
        try:
            for _ in range(100000):          # until the client goes away
                conn.write(b"data: x\\n\\n" * 8)
        except OSError:
            pass

    rng = random.Random(int(sys.argv[2]))
    with RawServer(firehose) as server:
        for i in range(int(sys.argv[3])):
            feed = connect_with_sse_feed(server.url())
            sub = feed.subscribe()
            signal.signal(signal.SIGALRM, lambda *a: feed.close())
            signal.setitimer(signal.ITIMER_REAL, rng.uniform(0.005, 0.03))
            try:
                for _ in range(10 ** 7):     # the main loop of a worker
                    sub.get(timeout=5)
            except FeedClosedError:
                pass
            feed._thread.join(3)
            assert not feed._thread.is_alive()
    print("ok", flush=True)
""")


def test_close_from_a_signal_handler_while_the_main_thread_reads():
    """SIGALRM arrives while the main thread is inside sub.get() (often
    holding the queue's lock); the handler's close() must not deadlock."""
    procs = [subprocess.Popen([sys.executable, "-c", SIGNAL_SCRIPT, HERE, str(seed), "25"],
                              env={**os.environ, "PYTHONPATH": ROOT},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for seed in range(3)]
    hung = []
    deadline = time.monotonic() + 30
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            hung.append(proc)
            continue
        assert proc.returncode == 0 and out.strip().endswith(b"ok"), out[-2000:]
    assert not hung, f"{len(hung)} of {len(procs)} processes hung in close() from a signal handler"


@pytest.mark.parametrize("request_kwargs", [{}, {"method": "POST", "json": {"q": 1},
                                                 "reconnect": True}])
def test_a_feed_nobody_references_is_closed_and_its_thread_ends(request_kwargs):
    with RawServer(sse(b"data: a\n\n", hold=False)) as server:   # ends: reconnects
        feed = connect_with_sse_feed(server.url(), retry=20, **request_kwargs)
        sub = feed.subscribe()
        assert sub.get(timeout=3).data == "a"
        thread = feed._thread
        ref = weakref.ref(feed)
        del feed, sub
        gc.collect()
        assert ref() is None, "the reader thread keeps the dropped feed alive"
        thread.join(3)
        assert not thread.is_alive(), "the dropped feed's reader still runs"
        requests_made = len(server.requests)
        assert server.wait_idle(3)
        assert len(server.requests) == requests_made


def test_a_kept_subscription_keeps_its_feed():
    with RawServer(sse(b"data: a\n\n", b"data: b\n\n")) as server:
        sub = connect_with_sse_feed(server.url()).subscribe()
        gc.collect()
        assert [sub.get(timeout=3).data for _ in range(2)] == ["a", "b"]
        sub._parent.close()


def test_many_feeds_on_one_session_log_no_pool_warnings(caplog):
    caplog.set_level("WARNING")
    session = requests.Session()
    with RawServer(sse(b"data: a\n\n")) as server:
        feeds = [connect_with_sse_feed(server.url(), session=session) for _ in range(30)]
        for feed in feeds:
            assert feed.subscribe().get(timeout=5).data == "a"
        for feed in feeds:
            feed.close()
    warnings = [r for r in caplog.records if "pool is full" in r.getMessage()]
    assert not warnings, f"{len(warnings)} 'pool is full' warnings"
    # The session still works afterwards.
    with RawServer(sse(b"data: again\n\n")) as server:
        with connect_with_sse_feed(server.url(), session=session) as feed:
            assert feed.subscribe().get(timeout=5).data == "again"
    session.close()
