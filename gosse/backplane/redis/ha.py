"""Which Redis deployments the backplane runs on: a standalone server, or a
master and replicas managed by **Sentinel** (followed through failovers).
**Redis Cluster** is refused at start-up.

Sentinel
--------

:func:`sentinel_factory` turns sentinel addresses and a service name into a
client factory: each client it makes (the command pool, the listener's own
connection) asks the sentinels for the current master whenever it opens a
connection, so after a failover every call, and the listener's next
``XREAD``, goes to the promoted replica.  A connection still open to a
demoted master answers ``READONLY``, which redis-py turns into a lost
connection: it reconnects through the sentinels.  What the listener saw
before the failover and the new master no longer has (asynchronous
replication) is found by the listener's position check and becomes
``gosse-reset`` for the streams (:mod:`.listener`).

Why not Cluster
---------------

The backplane is one stream in one order: every entry of ``<prefix>:events``
follows the previous one, numbered from ``<prefix>:state``, and presence and
metadata keys sit beside it.  In a cluster those keys hash to different
slots (different shards): the append script would fail with ``CROSSSLOT``,
presence with ``MOVED``, while reading would work, so a backplane on a
cluster would half-work.  Hash-tagging every key into one slot would put all
of it on one shard anyway, with none of the cluster's benefits.  So a server
with ``cluster_enabled:1`` (``INFO cluster``), or a
``redis.cluster.RedisCluster`` client, is refused with
:class:`~gosse.BackplaneConfigError`.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, cast

from ...errors import BackplaneConfigError
from .connection import OUTAGES

__all__ = ["resolve", "sentinel_factory", "sentinel_label", "check_not_cluster",
           "refuse_cluster_client", "CLUSTER_REFUSED", "SentinelWatch"]

ClientFactory = Callable[..., Any]

#: Seconds between two questions to the sentinels about the master (besides
#: those redis-py asks when it connects): at most this long, writes can go to
#: a replaced master that is still running.
SENTINEL_CHECK_EVERY = 0.5

CLUSTER_REFUSED = (
    "Redis Cluster is not supported by the gosse Redis backplane: it keeps one "
    "stream of events in one order (plus presence keys beside it), which cannot "
    "span the slots of a cluster, and would only half-work (reads working, "
    "appends failing with CROSSSLOT or MOVED). Use a standalone Redis, or a "
    "master with replicas managed by Sentinel: RedisBackplane(sentinels=[(host, "
    "port), ...], service_name=...)")


def _check_sentinels(sentinels: Any, service_name: Any) -> List[Tuple[str, int]]:
    if not isinstance(service_name, str) or not service_name:
        raise BackplaneConfigError(f"service_name must be the non-empty name of the "
                                   f"master the sentinels monitor, not {service_name!r}")
    if isinstance(sentinels, (str, bytes)) or not isinstance(sentinels, Sequence) \
            or not sentinels:
        raise BackplaneConfigError(f"sentinels must be a non-empty list of (host, port) "
                                   f"pairs, not {sentinels!r}")
    out = []
    for item in sentinels:
        if (not isinstance(item, (tuple, list)) or len(item) != 2
                or not isinstance(item[0], str) or not item[0]
                or type(item[1]) is not int or not 0 < item[1] < 65536):
            raise BackplaneConfigError(f"each sentinel must be a (host, port) pair, "
                                       f"not {item!r}")
        out.append((item[0], item[1]))
    return out


class SentinelWatch:
    """Asks the sentinels for the master again, for one connection pool at a
    time, at most every ``every`` seconds per pool: before a publish (the
    command pool), after each read of the listener (its own pool).

    redis-py asks only when it opens a connection, so a pooled connection
    to a master that Sentinel replaced but that is still running (``SENTINEL
    FAILOVER``, a healed partition: Sentinel demotes it about 10 s later)
    keeps taking writes that are then lost (measured: hundreds of
    acknowledged events in those 10 s).  When the answer changes, redis-py's
    pool closes its idle connections and drops busy ones when released.
    """

    def __init__(self, every: float) -> None:
        self.every = every
        self._next: Dict[int, float] = {}   # id(pool) -> when to ask next
        self._lock = threading.Lock()       # one question at a time; the others go on

    def moved(self, pool: Any) -> bool:
        """Whether ``pool``'s master changed (now, or since last asked)."""
        now = time.monotonic()
        key = id(pool)
        if now < self._next.get(key, 0.0) or not self._lock.acquire(blocking=False):
            return False
        try:
            self._next[key] = now + self.every
            before = getattr(pool, "master_address", None)
            try:
                after = pool.get_master_address()
            except Exception:   # no sentinel answers: the commands' own errors tell
                return False
            return before is not None and tuple(after) != tuple(before)
        finally:
            self._lock.release()


def sentinel_label(sentinels: Sequence[Tuple[str, int]], service_name: str) -> str:
    """How a Sentinel configuration is named in logs and errors (no secret)."""
    hosts = ",".join(f"{host}:{port}" for host, port in sentinels)
    return f"sentinel://{hosts}/{service_name}"


def sentinel_factory(sentinels: Any, service_name: Any, *, socket_timeout: float,
                     connect_timeout: float,
                     sentinel_options: Optional[Dict[str, Any]] = None
                     ) -> Tuple[ClientFactory, str, SentinelWatch]:
    """``(factory, label, watch)``: ``factory(**options)`` returns a client
    of the current master of ``service_name`` (``Sentinel.master_for``,
    redis-py 4.5 and later); ``label`` names it in messages; ``watch``
    re-asks the sentinels for the clients made (see :class:`SentinelWatch`).

    ``sentinel_options`` are keyword arguments for the connections to the
    sentinels themselves (e.g. ``password`` when the sentinels require one;
    the master's own options go in ``redis_options``).
    """
    from redis.backoff import NoBackoff
    from redis.retry import Retry
    from redis.sentinel import Sentinel

    pairs = _check_sentinels(sentinels, service_name)
    if sentinel_options is not None and not isinstance(sentinel_options, dict):
        raise BackplaneConfigError(f"sentinel_options must be a dict, not "
                                   f"{type(sentinel_options).__name__}")
    # Without sentinel_kwargs redis-py gives the sentinel connections only the
    # socket_* options of the Sentinel() call: none here, so no timeout at all.
    options: Dict[str, Any] = dict(socket_timeout=socket_timeout,
                                   socket_connect_timeout=connect_timeout,
                                   retry=Retry(NoBackoff(), 0))
    options.update(sentinel_options or {})
    manager: Any = cast(Any, Sentinel)(pairs, sentinel_kwargs=options)

    def factory(**client_options: Any) -> Any:
        return manager.master_for(service_name, **client_options)

    return factory, sentinel_label(pairs, service_name), SentinelWatch(SENTINEL_CHECK_EVERY)


def _is_cluster_client(client: Any) -> bool:
    try:
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - redis-py before 4.1
        return False
    return isinstance(client, RedisCluster)


def refuse_cluster_client(client: Any) -> None:
    """Raise :class:`~gosse.BackplaneConfigError` for a cluster client."""
    if _is_cluster_client(client):
        raise BackplaneConfigError(CLUSTER_REFUSED + " (client_factory returned a "
                                   "redis.cluster.RedisCluster)")


def check_not_cluster(client: Any, label: str) -> bool:
    """Ask the server behind ``client`` whether it runs in cluster mode;
    raise :class:`~gosse.BackplaneConfigError` if so.

    Returns True once settled, False when Redis could not be reached (ask
    again later).  A server that refuses ``INFO`` (an ACL without it)
    settles it too: the commands' own errors (``CROSSSLOT``, ``MOVED``) then
    tell.
    """
    refuse_cluster_client(client)
    try:
        info = client.info("cluster")
    except OUTAGES:
        return False
    except Exception:   # an error reply (NOPERM...): cannot tell this way
        return True
    if str(info.get("cluster_enabled", 0)) == "1":
        raise BackplaneConfigError(f"{CLUSTER_REFUSED}. {label} runs with "
                                   "cluster-enabled yes.")
    return True


DEFAULT_URL = "redis://127.0.0.1:6379/0"


def resolve(url: Optional[str], sentinels: Any, service_name: Any,
            sentinel_options: Optional[Dict[str, Any]], client_factory: Any, *,
            socket_timeout: float, connect_timeout: float
            ) -> Tuple[str, Optional[ClientFactory], Optional[str], Optional[SentinelWatch]]:
    """``(url, factory, label, watch)``: the first three for
    :class:`~.connection.Connection`, from the one way of reaching Redis a
    backplane or publisher was given (a URL, sentinels and a service name,
    or a client factory); ``watch`` with sentinels."""
    given = [name for name, value in (("url", url), ("sentinels", sentinels),
                                      ("client_factory", client_factory))
             if value is not None]
    if len(given) > 1:
        raise BackplaneConfigError(f"give one of url, sentinels (with service_name) or "
                                   f"client_factory, not {' and '.join(given)}")
    if sentinels is None and (service_name is not None or sentinel_options is not None):
        raise BackplaneConfigError("service_name and sentinel_options go with sentinels=")
    if sentinels is not None:
        factory, label, watch = sentinel_factory(sentinels, service_name,
                                                 socket_timeout=socket_timeout,
                                                 connect_timeout=connect_timeout,
                                                 sentinel_options=sentinel_options)
        return label, factory, label, watch
    if client_factory is not None:
        if not callable(client_factory):
            raise BackplaneConfigError(f"client_factory must be a callable returning a "
                                       f"redis.Redis, not {client_factory!r}")
        name = getattr(client_factory, "__qualname__", type(client_factory).__name__)
        label = f"client_factory {name}"
        return label, client_factory, label, None
    if url is not None and not isinstance(url, str):
        raise BackplaneConfigError(f"url must be a str, not {type(url).__name__}")
    return url or DEFAULT_URL, None, None, None
