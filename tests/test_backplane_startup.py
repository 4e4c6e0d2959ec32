"""Found by the nothing-lost soak (tests/test_soak.py): a burst of resuming
streams reaching a process whose RedisBackplane has not started yet (a
freshly spawned gunicorn worker, just after another worker died) must all
resume, not get ``gosse-reset`` because they overtook the first one while it
was reading the stream's position."""
import threading

from gosse import Broker, Event
from gosse.broker import RESET_EVENT
from redis_fixture import redis_prefix, redis_server  # noqa: F401


def test_concurrent_first_connects_all_resume(redis_server, redis_prefix):
    from gosse.backplane.redis import RedisBackplane

    publisher = Broker(auto_id=True, backplane=RedisBackplane(redis_server.url,
                                                              prefix=redis_prefix))
    fresh = []
    try:
        feed = publisher.connect("watcher", {"QUERY_STRING": ""})
        for i in range(5):
            publisher.broadcast(Event(f"e{i}"))
        chunks = b""
        for chunk in feed.stream:
            chunks += chunk
            if chunks.count(b"data: e") == 5:
                break
        feed.close()
        last_ids = [line[4:].decode() for line in chunks.split(b"\n")
                    if line.startswith(b"id: ")]
        assert len(last_ids) == 5
        resets = 0
        for _attempt in range(2):
            # A process that has not used its backplane yet, and 12 resuming
            # streams arriving at once.
            broker = Broker(auto_id=True, backplane=RedisBackplane(
                redis_server.url, prefix=redis_prefix))
            fresh.append(broker)
            barrier = threading.Barrier(12)
            conns = []

            def connect(k, broker=broker, barrier=barrier, conns=conns):
                environ = {"HTTP_LAST_EVENT_ID": last_ids[1], "QUERY_STRING": ""}
                barrier.wait(5)
                conns.append(broker.connect(f"c{k}", environ))

            threads = [threading.Thread(target=connect, args=(k,)) for k in range(12)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
            assert len(conns) == 12
            for conn in conns:
                first = next(iter(conn.stream))   # first bytes + the replay
                if RESET_EVENT.encode() in first:
                    resets += 1
                else:
                    assert first.count(b"data: e") == 3, first   # e2, e3, e4
                conn.close()
        assert resets == 0, f"{resets} of 24 resuming streams got {RESET_EVENT}"
    finally:
        for b in fresh:
            b.close()
        publisher.close()
