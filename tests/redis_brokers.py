"""Brokers with a RedisBackplane, each on its own Werkzeug server, for the
backplane tests: ``brokers(**kw) -> (broker, url)`` (all closed at the end
of the test), ``sse(url, client, ...)`` a raw SSE reader of ``/sse``."""
import threading

import pytest

from broker_app import make_app
from gosse import Broker
from servers import SSEReader, werkzeug_server


def redis_threads():
    return [t for t in threading.enumerate() if t.name.startswith("gosse-redis-")]


class BrokerGroup:
    """Brokers, each served by its own Werkzeug server, all closed by
    ``close()`` (the fixtures below and in the HA and presence tests)."""

    def __init__(self):
        self.made, self.servers = [], []

    def add(self, backplane, **broker_kw):
        """(broker, url) of a new broker on ``backplane``."""
        broker = Broker(**{"heartbeat_interval": 0.2, **broker_kw}, backplane=backplane)
        self.made.append(broker)
        cm = werkzeug_server(make_app(broker))
        self.servers.append(cm)
        return broker, cm.__enter__()

    def close(self):
        for b in self.made:
            b.close()
        for cm in self.servers:
            cm.__exit__(None, None, None)


#: Backplane settings that make the fault tests quick.
QUICK = {"presence_ttl": 3.0, "max_backoff": 0.2}


@pytest.fixture
def brokers(redis_server, redis_prefix):
    """start(url=None, backplane_kw=None, **broker_kw) -> (broker, url):
    brokers sharing one Redis prefix, each served by its own Werkzeug
    server; all closed afterwards."""
    from gosse.backplane.redis import RedisBackplane
    group = BrokerGroup()

    def start(url=None, backplane_kw=None, **kw):
        bp = RedisBackplane(url or redis_server.url, prefix=redis_prefix,
                            **{**QUICK, **(backplane_kw or {})})
        return group.add(bp, **kw)

    yield start
    group.close()


def sse(url, client, topics=(), last_id=None):
    headers = {"Last-Event-ID": last_id} if last_id is not None else None
    query = f"?client={client}" + (f"&topics={','.join(topics)}" if topics else "")
    return SSEReader(f"{url}/sse{query}", headers=headers)


def local(broker, client, n=1):
    return lambda: len(broker.sessions(client)) >= n
