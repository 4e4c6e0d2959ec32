"""The backplane's connections to Redis, and what a failure means.

Three kinds of failure are told apart, because each asks for a different
answer:

* an **outage** (connection refused or lost, a timeout before anything was
  sent): Redis is unreachable; the backplane is marked down and retries;
* a **refusal** (``READONLY``, ``OOM``, ``NOPERM``, ``WRONGPASS``, any error
  reply): Redis is there and said no; the backplane stays up and the caller
  gets the reason;
* an **unknown outcome** (a command sent whose answer never came): a publish
  may have happened, so it is reported as such and never repeated locally.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..._redact import Redactor, redact_url

__all__ = ["Connection", "OUTAGES", "is_refusal", "was_sent"]

#: What a lost or unreachable Redis raises (an AuthenticationError is a
#: ConnectionError in redis-py, but a refusal here: see is_refusal).
OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError)


def is_refusal(exc: BaseException) -> bool:
    """Whether Redis answered ``exc`` (an error reply), rather than not at all."""
    return isinstance(exc, (ResponseError, AuthenticationError))


class Connection:
    """The clients of one backplane: ``client`` for commands (a pool), and
    ``listen_client`` with one connection whose read timeout outlasts the
    listener's ``XREAD BLOCK``.

    ``factory`` (Sentinel, or the user's ``client_factory``), if given,
    makes both clients instead of ``url``: it is called with the keyword
    arguments of ``redis.Redis`` that gosse needs, and ``label`` names it in
    messages."""

    def __init__(self, url: str, *, socket_timeout: float, connect_timeout: float,
                 block: Optional[float], redis_options: Optional[Dict[str, Any]] = None,
                 factory: Optional[Callable[..., Any]] = None, label: Optional[str] = None
                 ) -> None:
        self.url = url
        self.label = label
        self.redact = Redactor(url)
        common: Dict[str, Any] = dict(socket_timeout=socket_timeout,
                                      socket_connect_timeout=connect_timeout,
                                      retry=Retry(NoBackoff(), 0), health_check_interval=0)
        common.update(redis_options or {})
        make = factory or (lambda **kw: redis.Redis.from_url(url, **kw))
        self.client = make(**common)
        # None for a writer without a listener (block=None).
        self.listen_client = None if block is None else make(
            **{**common, "max_connections": 1, "socket_timeout": block + socket_timeout})

    @property
    def safe_url(self) -> str:
        """The URL with its password masked (or the label of the factory)."""
        return self.label if self.label is not None else redact_url(self.url)

    def describe(self, exc: BaseException) -> str:
        """``exc`` in words, secrets masked."""
        return f"{type(exc).__name__}: {self.redact(exc)}"

    def interrupt_listener(self) -> None:
        """Cut the listener's connection (a blocked XREAD returns at once)."""
        try:
            if self.listen_client is not None:
                self.listen_client.connection_pool.disconnect()
        except Exception:  # pragma: no cover - best effort
            pass

    def close(self) -> None:
        for client in (self.listen_client, self.client):
            try:
                if client is not None:
                    client.close()
            except Exception:  # pragma: no cover
                pass


# What redis-py says when it could not even start a command: the connection
# was not established or none was free.  Everything else that fails after a
# command was handed to a socket may have run.
# Sentinel: "No master found" (no master to connect to), "The previous master
# is now a slave" (a READONLY reply: refused, not run).
_NOT_SENT = ("connecting to", "Too many connections", "No connection available",
             "No master found", "The previous master is now a slave")


def was_sent(exc: BaseException) -> bool:
    """Whether the command that failed with ``exc`` may have reached Redis."""
    if is_refusal(exc):
        return True
    text = str(exc)
    return not any(marker in text for marker in _NOT_SENT)
