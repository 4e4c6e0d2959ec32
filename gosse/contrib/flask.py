"""Flask integration.

Nothing is needed: a :class:`~gosse.ClientConnection` is a WSGI application,
and Flask accepts one as a view's return value::

    @app.route("/sse")
    def sse():
        return broker.connect(current_user.id, request.environ)

:func:`stream` is the same thing with ``request.environ`` filled in.
"""
from __future__ import annotations

from typing import Iterable, Optional, Union

from ..broker import Broker, ClientConnection, Refusal

__all__ = ["stream"]


def stream(broker: Broker, client_id: str, *, topics: Iterable[str] = (),
           heartbeat_interval: Optional[float] = None) -> Union[ClientConnection, Refusal]:
    """Open a session for the current Flask request; return it from the view."""
    from flask import request
    return broker.connect(client_id, request.environ, topics=topics,
                          heartbeat_interval=heartbeat_interval)
