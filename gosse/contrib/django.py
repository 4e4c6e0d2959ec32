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
"""
from __future__ import annotations

from typing import Any, Iterable, List, Optional, Tuple

from ..broker import Broker
from ..errors import StreamingUnsupportedError

__all__ = ["sse_response"]


def sse_response(broker: Broker, request: Any, client_id: str, *,
                 topics: Iterable[str] = (), heartbeat_interval: Optional[float] = None):
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

    def start_response(status: str, headers: List[Tuple[str, str]], exc_info: Any = None):
        captured.append((status, headers))

    body = conn(environ, start_response)
    status, headers = captured[0]
    code = int(status.split(" ", 1)[0])
    if conn.refused:
        response = HttpResponse(b"".join(body), status=code)
    else:
        response = StreamingHttpResponse(body, status=code)
        response["Content-Encoding"] = "identity"
    for name, value in headers:
        response[name] = value
    return response
