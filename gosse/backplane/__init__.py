"""Backplanes: how a :class:`~gosse.Broker` shares events, presence and
replay with other brokers.

A broker on its own lives in one process: ``broadcast`` reaches the sessions
that process holds.  A *backplane* carries every ``broadcast``, ``send`` and
``publish`` to all the brokers attached to it, each delivering to its own
sessions, and shares which clients are connected, their metadata and the
event history used for ``Last-Event-ID`` replay::

    from gosse import Broker
    from gosse.backplane.redis import RedisBackplane      # pip install gosse[redis]

    broker = Broker(auto_id=True,
                    backplane=RedisBackplane("redis://127.0.0.1:6379/0"))

:class:`InProcessBackplane` is the default: what a broker does alone (one
process, nothing shared).  :class:`Backplane` is the interface a broker talks
to; it is documented here for anyone writing another one (a message bus, a
database), but its methods are called by the broker, not by applications.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, FrozenSet, Optional

from ..errors import BackplaneError, SSEError

if TYPE_CHECKING:  # pragma: no cover
    from ..broker import Broker, ClientConnection
    from ..event import Event
    from ..registry import Target

__all__ = ["Backplane", "InProcessBackplane", "BackplaneError"]


class Backplane:
    """The interface between a :class:`~gosse.Broker` and what it shares.

    A backplane instance serves one broker (:meth:`bind` is called by
    ``Broker(backplane=...)``).  ``shared`` tells the broker whether anything
    leaves the process: when False the broker uses its own in-process paths
    and calls none of the other methods.

    A shared backplane must:

    * ``publish(target, event)``: carry the event to every attached broker,
      each of which delivers it to its local sessions matching ``target``
      (``("all", None)``, ``("client", id)`` or ``("topic", name)``), all
      brokers in one order.  Raise :class:`~gosse.UnknownClientError` for a
      ``client`` target present nowhere, :class:`~gosse.errors.BackplaneError` when it
      cannot publish.  Return the number of sessions of *this* process the
      event is addressed to (delivery elsewhere is asynchronous).
    * ``client_joined(id)`` / ``client_left(id)``: called (outside the broker
      lock) when the first local session of a client opened / the last one
      ended; the backplane makes presence reflect that.
    * ``is_client_present(id)``, ``set_client_metadata(id, value)``,
      ``get_client_metadata(id)``: presence and metadata across brokers
      (called only when the answer is not known locally, or always for
      metadata).
    * ``prepare_replay(last_id, client_id, topics)``: called by every
      ``connect`` before the session is registered, outside the lock (may do
      I/O; ``last_id`` is None without ``Last-Event-ID``); a token that is
      not None is handed to ``complete_replay(conn, token)`` under the
      broker lock, atomically with live delivery, which must not do I/O and
      queues (``conn.session.preload``) the events after ``last_id`` that
      the session is entitled to, or a reset event
      (``gosse.event.reset_event``).
    * ``stats()``: extra integer counters merged into ``Broker.stats()``.
    * ``close()``: stop its threads and release presence; called by
      ``Broker.close()``.

    What a backplane may ask of its broker (``self.broker``):
    :meth:`~gosse.Broker.deliver_local` hands received events to the local
    sessions, in order, atomically with registrations;
    :meth:`~gosse.Broker.has_local_client`,
    :meth:`~gosse.Broker.local_clients` and :meth:`~gosse.Broker.local_count`
    answer for this process; ``gosse.registry.entitled()`` is the rule for
    which session receives which target, for replay.
    """

    #: Whether events, presence and history leave this process.
    shared = False

    def __init__(self) -> None:
        self._broker: Optional[Broker] = None

    @property
    def broker(self) -> Optional[Broker]:
        """The broker this backplane serves (None before it is bound)."""
        return self._broker

    def bind(self, broker: Broker) -> None:
        """Attach to ``broker`` (called once, by the broker's constructor)."""
        if self._broker is not None and self._broker is not broker:
            raise ValueError("this backplane already serves another Broker; "
                             "create one backplane per Broker")
        self._broker = broker

    # The methods below are only called for a shared backplane; the
    # in-process versions describe what the broker does on its own.

    def publish(self, target: Target, event: Event) -> int:
        kind, name = target
        return self._bound()._deliver(kind, name, event)

    def client_joined(self, client_id: str) -> None:
        pass

    def client_left(self, client_id: str) -> None:
        pass

    def is_client_present(self, client_id: str) -> bool:
        return self._bound().has_local_client(client_id)

    def set_client_metadata(self, client_id: str, metadata: Any) -> None:
        raise NotImplementedError

    def get_client_metadata(self, client_id: str) -> Any:
        raise NotImplementedError

    def prepare_replay(self, last_id: Optional[str], client_id: str,
                       topics: FrozenSet[str]) -> Any:
        return None

    def complete_replay(self, conn: ClientConnection, token: Any) -> None:
        pass

    def stats(self) -> Dict[str, int]:
        return {}

    def close(self) -> None:
        pass

    def _bound(self) -> Broker:
        if self._broker is None:
            raise SSEError("this backplane is not attached to a Broker")
        return self._broker

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"


class InProcessBackplane(Backplane):
    """The default: nothing leaves the process.  ``broadcast``, ``send`` and
    ``publish`` reach the sessions of this broker only; presence, metadata
    and the replay history (``Broker(history=N)``) live in the broker."""

    shared = False

