"""Django integration: a view helper returning a ``StreamingHttpResponse``.

::

    from gosse.contrib.django import sse_response

    def events(request):
        return sse_response(broker, request, client_id=str(request.user.pk))

Django must be served over **WSGI** (gunicorn ``-k gthread``, ``runserver``,
mod_wsgi): Django's ASGI handler drains a synchronous iterator completely
before sending anything, so a stream would never arrive; on an ASGI request
this helper raises :class:`~gosse.StreamingUnsupportedError`.

The response carries ``Content-Encoding: identity`` so that Django's
``GZipMiddleware`` leaves it alone (it compresses streaming responses, which
holds events back in the compressor's buffer).

A stream holds its server thread for hours, so it must not hold that
thread's database connections too (each open stream would keep one, and
the hundredth would exhaust PostgreSQL's default ``max_connections``): when
the server starts the body, after the view, the middleware and an
``ATOMIC_REQUESTS`` transaction are done, the thread's connections are
closed (Django reopens one if the thread later needs it).  A connection
still inside a transaction (``atomic`` or autocommit off) is left alone and
a warning says so.
"""
from __future__ import annotations

import logging
from typing import Any, Iterable, Iterator, List, Optional, Tuple

from ..broker import Broker
from ..errors import StreamingUnsupportedError

__all__ = ["sse_response"]

log = logging.getLogger("gosse.contrib.django")


def sse_response(broker: Broker, request: Any, client_id: str, *,
                 topics: Iterable[str] = (),
                 heartbeat_interval: Optional[float] = None) -> Any:
    """Open a session of ``client_id`` for this Django request.

    Returns a ``StreamingHttpResponse`` whose close (called by the WSGI server
    when the client goes away) ends the session; or a plain ``HttpResponse``
    with the refusal's status when ``on_connect`` or a session cap refuses.
    """
    from django.http import HttpResponse, StreamingHttpResponse

    environ = getattr(request, "environ", None)
    if not isinstance(environ, dict) or "wsgi.input" not in environ:
        raise StreamingUnsupportedError(
            "gosse streams need a WSGI server: Django's ASGI handler buffers a "
            "synchronous iterator until it ends. Serve Django with gunicorn -k gthread.")
    conn = broker.connect(client_id, environ, topics=topics,
                          heartbeat_interval=heartbeat_interval)
    captured: List[Tuple[str, List[Tuple[str, str]]]] = []

    def start_response(status: str, headers: List[Tuple[str, str]],
                       exc_info: Any = None) -> None:
        captured.append((status, headers))

    body = conn(environ, start_response)
    status, headers = captured[0]
    code = int(status.split(" ", 1)[0])
    if conn.refused:
        response = HttpResponse(b"".join(body), status=code)
    else:
        response = StreamingHttpResponse(_ReleaseDatabaseFirst(body), status=code)
        response["Content-Encoding"] = "identity"
    for name, value in headers:
        response[name] = value
    return response


def _release_db_connections() -> int:
    """Close this thread's open Django database connections that are not
    inside a transaction; return how many were closed.  A connection in an
    ``atomic`` block (or with autocommit off) is kept: closing it would
    roll back the work of the request."""
    from django.db import connections

    try:
        handlers = connections.all(initialized_only=True)
    except TypeError:   # Django < 4.1: all() has no initialized_only
        handlers = connections.all()
    closed = 0
    for handler in handlers:
        if handler.connection is None:
            continue
        if handler.in_atomic_block or not handler.get_autocommit():
            log.warning("a gosse stream keeps database connection %r open for its "
                        "whole life: it is inside a transaction", handler.alias)
            continue
        try:
            handler.close()
        except Exception:   # a broken connection must not break the stream
            log.exception("closing database connection %r failed", handler.alias)
        closed += 1
    return closed


class _ReleaseDatabaseFirst:
    """The stream's body, which releases the serving thread's database
    connections when the server asks for the first bytes: that is after the
    view returned, the middleware ran and an ``ATOMIC_REQUESTS`` transaction
    committed, in the thread that then holds the stream."""

    def __init__(self, body: Iterable[bytes]):
        self._body = body
        self._it: Optional[Iterator[bytes]] = None

    def __iter__(self) -> _ReleaseDatabaseFirst:
        return self

    def __next__(self) -> bytes:
        if self._it is None:
            self._it = iter(self._body)
            _release_db_connections()
        return next(self._it)

    def close(self) -> None:
        close = getattr(self._body, "close", None)
        if close is not None:
            close()
