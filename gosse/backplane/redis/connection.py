"""The backplane's connections to Redis, and what a failure means.

Four kinds of failure are told apart, because each asks for a different
answer:

* an **outage** (connection refused or lost, a timeout before anything was
  sent): Redis is unreachable; the backplane is marked down and retries;
* a **refusal** (``READONLY``, ``OOM``, ``NOPERM``, ``WRONGPASS``, any error
  reply): Redis is there and said no; the backplane stays up and the caller
  gets the reason;
* a **busy pool** (every connection of this process in use for
  ``socket_timeout`` seconds): neither; the caller is told to raise
  ``max_connections``;
* an **unknown outcome** (a command sent whose answer never came): a publish
  may have happened, so it is reported as such and never repeated locally.

Whether a command was sent is not guessed from redis-py's messages (they
differ between versions, and a connection refused during the handshake,
"max number of clients reached", reads like a lost answer):
:meth:`Connection.run_script` takes a connection from the pool and connects
it first, then sends, then reads, and knows which step failed.

At start-up :meth:`Connection.check` probes what the backplane will need
(credentials, the ACL of the user, a writable master) and turns a wrong
configuration into :class:`~gosse.errors.BackplaneConfigError`; an
unreachable Redis is only logged (streams work when it returns).
"""
from __future__ import annotations

import functools
import inspect
import logging
from queue import Empty, LifoQueue
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import redis
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, NoScriptError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.retry import Retry

from ..._redact import Redactor, redact_url
from ...errors import BackplaneConfigError
from .entries import Keys

__all__ = ["Connection", "OUTAGES", "NotSent", "PoolExhaustedError", "is_refusal",
           "is_outage", "was_sent", "acl_rule", "BROKER_COMMANDS", "WRITER_COMMANDS",
           "DEFAULT_MAX_CONNECTIONS"]

log = logging.getLogger("gosse.backplane")

#: What a lost or unreachable Redis raises (an AuthenticationError is a
#: ConnectionError in redis-py, but a refusal here: see is_refusal).
OUTAGES = (RedisConnectionError, RedisTimeoutError, OSError)

#: Connections per process: a gthread worker with ``--threads 200`` has at
#: most 200 request threads calling Redis at once, plus the heartbeat and
#: the application's own threads.  Connections are opened on demand only.
DEFAULT_MAX_CONNECTIONS = 256

# Error replies the start-up check treats as refusals of a write (redis-py
# 4.5 has no OutOfMemoryError: OOM is then a plain ResponseError).
_WRITE_REFUSALS = tuple(getattr(redis.exceptions, name) for name in
                        ("ReadOnlyError", "NoPermissionError", "OutOfMemoryError")
                        if hasattr(redis.exceptions, name))


class PoolExhaustedError(RedisConnectionError):
    """Every connection of the pool stayed busy for the pool's timeout."""


class NotSent(Exception):
    """A failure before the command left this process (connecting, waiting
    for a free connection, or a write cut short, which Redis discards with
    the connection): ``cause`` is redis-py's exception."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


def is_refusal(exc: BaseException) -> bool:
    """Whether Redis answered ``exc`` (an error reply), rather than not at all."""
    if isinstance(exc, NotSent):
        exc = exc.cause
    return isinstance(exc, (ResponseError, AuthenticationError))


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means Redis is unreachable (the backplane is down)."""
    if isinstance(exc, NotSent):
        exc = exc.cause
    return (isinstance(exc, OUTAGES) and not is_refusal(exc)
            and not isinstance(exc, PoolExhaustedError))


# What redis-py says when it could not even start a command.  Only used for a
# client without a pool of its own (run_script knows better).
# Sentinel: "No master found" (no master to connect to), "The previous master
# is now a slave" (a READONLY reply: refused, not run).
_NOT_SENT = ("connecting to", "Too many connections", "No connection available",
             "max number of clients reached", "No master found",
             "The previous master is now a slave")


def was_sent(exc: BaseException) -> bool:
    """Whether the command that failed with ``exc`` may have reached Redis."""
    if isinstance(exc, NotSent):
        return False
    if is_refusal(exc) or not isinstance(exc, OUTAGES):
        return True
    if isinstance(exc, PoolExhaustedError):
        return False
    text = str(exc)
    return not any(marker in text for marker in _NOT_SENT)


class _Slots(LifoQueue):  # type: ignore[type-arg]
    """The free connections of a BlockingConnectionPool; says which option
    to change when none frees up in time (redis-py: "No connection
    available.")."""

    def get(self, block: bool = True, timeout: Optional[float] = None) -> Any:
        try:
            return super().get(block, timeout)
        except Empty:
            raise PoolExhaustedError(
                f"all {self.maxsize} connections of this process to Redis stayed busy "
                f"for {timeout} s; raise RedisBackplane(max_connections=...) (or "
                "Publisher(max_connections=...))") from None


# (command, args...) of every command the backplane sends, for the start-up
# ACL check and the documented ACL; keep in step with the scripts and calls
# of entries, listener, presence and replay.  "P"/"M"/"S"/"T": a presence,
# metadata, stream or state key.
WRITER_COMMANDS: Tuple[Tuple[str, ...], ...] = (
    ("info", "cluster"), ("time",), ("zcount", "P", "0", "1"), ("hsetnx", "T", "e", "x"), ("hget", "T", "e"),
    ("hset", "T", "n", "1"), ("hincrby", "T", "s", "1"), ("xadd", "S", "*", "f", "v"),
    ("xtrim", "S", "MAXLEN", "1"))
BROKER_COMMANDS: Tuple[Tuple[str, ...], ...] = WRITER_COMMANDS + (
    ("xread", "COUNT", "1", "STREAMS", "S", "0"), ("xrange", "S", "-", "+"),
    ("xrevrange", "S", "+", "-"), ("zremrangebyscore", "P", "0", "1"), ("zcard", "P"),
    ("zadd", "P", "1", "n"), ("zrem", "P", "n"), ("pexpire", "P", "1"),
    ("pexpire", "M", "1"), ("del", "P", "M"), ("hset", "M", "v", "x"), ("hget", "M", "v"),
    ("hmget", "M", "v", "t"))

# ARGV: n, command, arg, ..., n, command, ...  Returns the denied commands,
# or {-1} before Redis 7 (no redis.acl_check_cmd).
_PROBE = """
if not redis.acl_check_cmd then return {-1} end
local denied, i = {}, 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  if not redis.acl_check_cmd(unpack(ARGV, i + 1, i + n)) then
    denied[#denied + 1] = table.concat({unpack(ARGV, i + 1, i + n)}, ' ')
  end
  i = i + n + 1
end
return denied
"""


def _names(commands: Sequence[Tuple[str, ...]]) -> List[str]:
    out: List[str] = []
    for cmd in commands:
        if cmd[0] not in out:
            out.append(cmd[0])
    return out


def acl_rule(prefix: str = "gosse", user: str = "gosse", *, publisher_only: bool = False
             ) -> str:
    """The least-privilege ``ACL SETUSER`` line for a backplane group
    (``publisher_only``: for a :class:`~gosse.backplane.redis.Publisher`);
    ``PASSWORD`` stands for the password."""
    commands = WRITER_COMMANDS if publisher_only else BROKER_COMMANDS
    perms = " ".join("+" + c for c in ["evalsha", "script|load"] + _names(commands))
    return f"ACL SETUSER {user} on >PASSWORD ~{prefix}:* {perms}"


class Connection:
    """The clients of one backplane: ``client`` for commands (a blocking
    pool of ``max_connections``), and ``listen_client`` with one connection
    whose read timeout outlasts the listener's ``XREAD BLOCK``.

    ``factory`` (Sentinel, or the user's ``client_factory``), if given,
    makes both clients instead of ``url``: it is called with the keyword
    arguments of ``redis.Redis`` that gosse needs (``max_connections``
    included; its pool is its own), and ``label`` names it in messages."""

    def __init__(self, url: str, *, socket_timeout: float, connect_timeout: float,
                 block: Optional[float], max_connections: int = DEFAULT_MAX_CONNECTIONS,
                 redis_options: Optional[Dict[str, Any]] = None,
                 factory: Optional[Callable[..., Any]] = None, label: Optional[str] = None,
                 secrets: Sequence[Optional[str]] = ()) -> None:
        if type(max_connections) is not int or max_connections < 1:
            raise ValueError(f"max_connections must be a positive int, not {max_connections!r}")
        options = dict(redis_options or {})
        if "max_connections" in options:
            raise ValueError("pass max_connections to the backplane, not in redis_options")
        self.url = url
        self.label = label
        # Passwords given beside the URL (options, Sentinel's) are masked too:
        # some redis-py versions print them in a connection's repr.
        self.redact = Redactor(url, [options.get("password"), *secrets])
        self.max_connections = max_connections
        common: Dict[str, Any] = dict(socket_timeout=socket_timeout,
                                      socket_connect_timeout=connect_timeout,
                                      retry=Retry(NoBackoff(), 0), health_check_interval=0)
        if url.startswith("unix:") and "socket_connect_timeout" not in inspect.signature(
                redis.UnixDomainSocketConnection.__init__).parameters:
            del common["socket_connect_timeout"]      # redis-py < 5 refuses it there
        common.update(options)
        # The listener uses one connection at a time; its pool is not capped
        # at one, because redis-py 7.0 loses a slot for good each time a
        # connection to a replaced Sentinel master is given back.
        listen_options = {**common, "max_connections": None,
                          "socket_timeout": (block or 0.0) + socket_timeout}
        make: Callable[..., Any]
        pool: Any    # redis-py's pool API is untyped
        if factory is None:
            # A caller waits at most socket_timeout for a free connection.
            pool = redis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=socket_timeout,
                queue_class=_Slots, **common)
            self.client = redis.Redis(connection_pool=pool)
            make = functools.partial(redis.Redis.from_url, url)
        else:
            self.client = factory(**{**common, "max_connections": max_connections})
            # (A RedisCluster has none: the backplane refuses it next.)
            pool = getattr(self.client, "connection_pool", None)
            make = factory
        self._pool = pool
        params = inspect.signature(pool.get_connection).parameters if pool is not None else {}
        # redis-py < 5.3 wants a command name; later versions warn about one.
        self._checkout_args: Tuple[str, ...] = (
            ("EVALSHA",) if "command_name" in params
            and params["command_name"].default is inspect.Parameter.empty else ())
        # None for a writer without a listener (block=None).
        self.listen_client = None if block is None else make(**listen_options)

    def checkout_listener(self) -> Any:
        """The listener's connection, taken from its one-connection pool
        (:meth:`release_listener` gives it back): the listener sends its
        XREADs on it directly, without redis-py's per-command dispatch."""
        assert self.listen_client is not None
        return self.listen_client.connection_pool.get_connection(*self._checkout_args)

    def release_listener(self, conn: Any, *, broken: bool = False) -> None:
        if broken:
            conn.disconnect()
        assert self.listen_client is not None
        self.listen_client.connection_pool.release(conn)

    @property
    def safe_url(self) -> str:
        """The URL with its password masked (or the label of the factory)."""
        return self.label if self.label is not None else redact_url(self.url)

    @property
    def user(self) -> str:
        """The ACL user the connections log in as."""
        return str(self._pool.connection_kwargs.get("username") or "default")

    def describe(self, exc: BaseException) -> str:
        """``exc`` in words, secrets masked."""
        if isinstance(exc, NotSent):
            exc = exc.cause
        return f"{type(exc).__name__}: {self.redact(exc)}"

    # -- one command whose outcome matters --------------------------------------

    def run_script(self, script: Any, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of ``script`` (a redis-py ``Script``) on a connection of
        the pool.  Raises :class:`NotSent` for a failure before the command
        left; any other exception means it may have run."""
        client: Any = self.client
        pool = self._pool
        for attempt in (1, 2):
            try:
                conn = pool.get_connection(*self._checkout_args)   # connects: nothing sent yet
            except Exception as exc:
                raise NotSent(exc) from exc
            try:
                try:
                    conn.send_command("EVALSHA", script.sha, len(keys), *keys, *args)
                except Exception as exc:
                    # sendall failed: the command did not leave whole, and Redis
                    # discards a partial one when the connection closes.
                    conn.disconnect()
                    raise NotSent(exc) from exc
                try:
                    return client.parse_response(conn, "EVALSHA")
                except NoScriptError:
                    if attempt == 2:
                        raise
                except ResponseError:
                    raise
                except BaseException:
                    # A late answer must not be read by the next command.
                    conn.disconnect()
                    raise
            finally:
                pool.release(conn)
            # NOSCRIPT: the script did not run; load it (Redis restarted) and retry.
            try:
                script.sha = client.script_load(script.script)
            except Exception as exc:
                raise NotSent(exc) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the start-up check ------------------------------------------------------

    def check(self, keys: Keys, commands: Sequence[Tuple[str, ...]]) -> None:
        """Probe, without writing anything, that Redis accepts what the
        backplane will send: the credentials, ``commands`` under the user's
        ACL (Redis 7: ``redis.acl_check_cmd``), a write to the stream (not a
        read-only replica).  A wrong configuration raises
        :class:`~gosse.errors.BackplaneConfigError`; an unreachable or full
        Redis is logged (the backplane works once it returns)."""
        try:
            self._probe(keys, commands)
        except BackplaneConfigError:
            raise
        except Exception as exc:
            self._judge(keys, commands, exc)
        finally:
            # No socket of the probe is inherited by forked workers.
            self._pool.disconnect()

    def _probe(self, keys: Keys, commands: Sequence[Tuple[str, ...]]) -> None:
        client: Any = self.client
        sha = client.script_load(_PROBE)
        sub = {"S": keys.stream, "T": keys.state, "P": (keys.presence + "-probe-").encode(),
               "M": (keys.meta + "-probe-").encode()}
        argv: List[Any] = []
        for cmd in commands:
            argv += [len(cmd), *[sub.get(a, a) for a in cmd]]
        denied = client.evalsha(sha, 0, *argv)
        if denied and denied[0] != -1:
            names = sorted({d.decode().split(" ")[0] for d in denied})
            raise BackplaneConfigError(
                f"Redis {self.safe_url}: user {self.user!r} may not run "
                f"{', '.join(n.upper() for n in names)} on the keys {keys.prefix}:*, which "
                f"the backplane needs; grant them, e.g.: "
                f"{acl_rule(keys.prefix, self.user, publisher_only=commands is WRITER_COMMANDS)}")
        try:
            # An id Redis refuses before looking at the key: nothing is written,
            # but the role (a replica), the ACL and maxmemory are checked.
            client.xadd(keys.stream, {"probe": "0"}, id="0-0")
        except ResponseError as exc:
            if isinstance(exc, _WRITE_REFUSALS):
                raise
            # "The ID specified in XADD must be greater than 0-0": writable.

    def _judge(self, keys: Keys, commands: Sequence[Tuple[str, ...]],
               exc: BaseException) -> None:
        what = self.describe(exc)
        if isinstance(exc, AuthenticationError):
            raise BackplaneConfigError(
                f"Redis {self.safe_url} rejected the credentials of user {self.user!r} "
                f"({what}): check the user and password in the URL "
                "(redis://USER:PASSWORD@host:port/db)") from exc
        if isinstance(exc, redis.exceptions.ReadOnlyError):
            raise BackplaneConfigError(
                f"Redis {self.safe_url} is a read-only replica ({what}): point the "
                "backplane at the master (or use Sentinel)") from exc
        if isinstance(exc, redis.exceptions.NoPermissionError):
            raise BackplaneConfigError(
                f"Redis {self.safe_url}: user {self.user!r} lacks a permission the "
                f"backplane needs ({what}); grant, e.g.: "
                f"{acl_rule(keys.prefix, self.user, publisher_only=commands is WRITER_COMMANDS)}"
            ) from exc
        if is_outage(exc):
            log.warning("Redis backplane %s unreachable at start-up (%s); going on: "
                        "streams work, and publishing does once it is back",
                        self.safe_url, what)
            return
        # OOM, a proxy without scripting, ...: Redis is there; say so once.
        log.warning("Redis backplane %s: the start-up check was refused (%s); going on",
                    self.safe_url, what)

    # -- lifecycle ---------------------------------------------------------------

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
                    client.connection_pool.disconnect()
            except Exception:  # pragma: no cover
                pass
