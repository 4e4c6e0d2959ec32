"""Events and their wire encoding (WHATWG HTML, "Server-sent events").

An :class:`Event` is immutable.  Its encoding is a pure function of its fields,
computed on first use and cached on the object, so a broadcast to many
sessions encodes once.
"""
from __future__ import annotations

import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from .errors import EventDataError, EventError

__all__ = ["Event", "JSONEvent", "encode_comment", "HEARTBEAT", "RESET_EVENT",
           "reset_event"]

#: The comment a stream writes after a period of silence.  The blank line makes
#: it a complete block for proxies that buffer until one, and is harmless to a
#: spec-conforming parser (no data, so nothing is dispatched).
HEARTBEAT = b":\n\n"


def _one_line(value: str, what: str, strip_nul: bool = False) -> str:
    if not isinstance(value, str):
        raise EventError(f"{what} must be a str, not {type(value).__name__}")
    if "\r" in value or "\n" in value:
        value = value.replace("\r", "").replace("\n", "")
    if strip_nul and "\0" in value:
        value = value.replace("\0", "")
    return value


def _split_lines(text: str) -> List[str]:
    """Split on CRLF, CR and LF only (``str.splitlines`` also splits on VT, FF,
    NEL, U+2028 and others, which are ordinary characters in an event stream)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text.split("\n")


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EventError(f"cannot encode as UTF-8 (lone surrogate?): {exc}") from None


class Event:
    """One server-sent event.

    ``Event("hello", event="greeting", id="7", retry=3000)``

    * ``data``: the payload, any string; CR, LF and CRLF inside it are sent as
      separate ``data:`` lines so the receiver rebuilds the exact string
      (with every line end as LF: the protocol carries lines, not their
      terminators).
      ``None`` sends no data at all: a block that only sets ``id`` or
      ``retry`` (a receiver dispatches nothing for it).
    * ``event``: the event type (receivers default it to ``"message"``).
    * ``id``: the id a reconnecting client sends back as ``Last-Event-ID``.
    * ``retry``: the reconnection time the client should use, in milliseconds.

    CR and LF are removed from ``event`` and ``id`` (and NUL from ``id``),
    since they cannot be carried on one line; the attributes show the cleaned
    values.  A decoded event (from :class:`~gosse.EventStreamParser`) has ``event`` set
    (``"message"`` by default), ``id`` the last event id in force (``""`` if
    none) and ``retry`` the reconnection time in force (``None`` if never
    set).  Events compare equal when all four fields are equal.
    """

    __slots__ = ("_data", "_event", "_id", "_retry", "_wire")

    def __init__(self, data: Optional[str] = "", event: Optional[str] = None,
                 id: Optional[str] = None, retry: Optional[int] = None):
        if data is not None and not isinstance(data, str):
            if isinstance(data, (bytes, bytearray, memoryview)):
                raise EventError(
                    f"data must be a str (or None), not {type(data).__name__}: "
                    "decode it first, e.g. Event(raw.decode('utf-8'))")
            raise EventError(
                f"data must be a str (or None), not {type(data).__name__}; "
                "use JSONEvent for other values")
        if event is not None:
            event = _one_line(event, "event")
        if id is not None:
            id = _one_line(id, "id", strip_nul=True)
        if retry is not None and (
                type(retry) is not int or retry < 0):  # bool is not a retry
            raise EventError(
                f"retry must be a non-negative int of milliseconds, not {retry!r}")
        self._data = data
        self._event = event
        self._id = id
        self._retry = retry
        self._wire: Optional[bytes] = None

    @property
    def data(self) -> Optional[str]:
        """The payload."""
        return self._data

    @property
    def event(self) -> Optional[str]:
        """The event type."""
        return self._event

    @property
    def id(self) -> Optional[str]:
        """The event id (decoded events: the last event id in force)."""
        return self._id

    @property
    def retry(self) -> Optional[int]:
        """The reconnection time in milliseconds."""
        return self._retry

    def encode(self) -> bytes:
        """The UTF-8 bytes of this event on the wire, ending with a blank line.

        Computed once per event object and cached.
        """
        wire = self._wire
        if wire is None:
            parts = []
            if self._id is not None:
                parts.append(f"id: {self._id}\n")
            if self._event is not None:
                parts.append(f"event: {self._event}\n")
            if self._retry is not None:
                parts.append(f"retry: {self._retry}\n")
            if self._data is not None:
                parts.append("data: " + "\ndata: ".join(_split_lines(self._data)) + "\n")
            parts.append("\n")
            wire = self._wire = _utf8("".join(parts))
        return wire

    def json(self, **loads_kwargs: Any) -> Any:
        """The data parsed as JSON (``json.loads``).  Raises
        :class:`~gosse.errors.EventDataError` (a ``ValueError``) if it is not
        JSON, e.g. an LLM stream's final ``data: [DONE]``."""
        try:
            # None (no data) raises the TypeError reported below.
            return json.loads(self._data, **loads_kwargs)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            shown = self._data if self._data is None or len(self._data) <= 60 \
                else self._data[:60] + "..."
            raise EventDataError(f"the data of event {self._event!r} is not JSON "
                                 f"({exc}): {shown!r}") from exc

    def replace(self, **changes: Any) -> Event:
        """A copy of this event with some fields changed:
        ``evt.replace(id="8")``."""
        fields: Dict[str, Any] = {"data": self._data, "event": self._event, "id": self._id,
                                  "retry": self._retry}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"Event has no field(s) {', '.join(sorted(unknown))}")
        fields.update(changes)
        return Event(**fields)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self._data == other._data and self._event == other._event
                and self._id == other._id and self._retry == other._retry)

    def __hash__(self) -> int:
        return hash((self._data, self._event, self._id, self._retry))

    def __repr__(self) -> str:
        fields = [f"data={self._data!r}"]
        for name in ("event", "id", "retry"):
            value = getattr(self, "_" + name)
            if value is not None:
                fields.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(fields)})"

    def __reduce__(self) -> Tuple[Any, ...]:
        return (Event, (self._data, self._event, self._id, self._retry))


def _decoded_event(data: str, event: str, id: str, retry: Optional[int],
                   _new: Callable[[type], Any] = object.__new__) -> Event:
    """Build an event from parsed fields without re-validating them (the parser
    cannot produce CR, LF or NUL in ``event`` or ``id``)."""
    e: Event = _new(Event)
    e._data = data
    e._event = event
    e._id = id
    e._retry = retry
    e._wire = None
    return e


class JSONEvent(Event):
    """An event whose data is ``data`` serialised as compact JSON
    (``separators=(",", ":")``, ``ensure_ascii=False``).

    ``JSONEvent({"progress": 40}, event="job")`` sends
    ``data: {"progress":40}``.  The original object is kept as ``.value``
    (``.data`` is the JSON text).  NaN and infinities are refused: they are
    not JSON, and a browser's ``JSON.parse`` fails on them.  A copy made by
    :meth:`replace` or by pickling is again a ``JSONEvent``.
    """

    __slots__ = ("_value",)

    def __init__(self, data: Any, event: Optional[str] = None,
                 id: Optional[str] = None, retry: Optional[int] = None):
        try:
            text = json.dumps(data, separators=(",", ":"), ensure_ascii=False,
                              allow_nan=False)
        except ValueError as exc:
            if "Out of range float" in str(exc):
                raise EventError("JSONEvent data contains NaN or an infinity, which JSON "
                                 "cannot carry (a browser's JSON.parse refuses them); "
                                 "send null or a string instead") from exc
            raise EventError(f"JSONEvent data is not JSON serialisable: {exc}") from exc
        except TypeError as exc:
            raise EventError(f"JSONEvent data is not JSON serialisable: {exc}") from exc
        super().__init__(text, event=event, id=id, retry=retry)
        self._value = data

    @property
    def value(self) -> Any:
        """The object given as ``data``, before serialisation."""
        return self._value

    def replace(self, **changes: Any) -> JSONEvent:
        """A copy with some fields changed; ``data`` is again an object to
        serialise: ``evt.replace(data={"progress": 50})``."""
        fields = {"data": self._value, "event": self._event, "id": self._id,
                  "retry": self._retry}
        unknown = set(changes) - set(fields)
        if unknown:
            raise TypeError(f"JSONEvent has no field(s) {', '.join(sorted(unknown))}")
        fields.update(changes)
        return JSONEvent(**fields)

    def __repr__(self) -> str:
        fields = [f"data={self._value!r}"]
        for name in ("event", "id", "retry"):
            value = getattr(self, "_" + name)
            if value is not None:
                fields.append(f"{name}={value!r}")
        return f"JSONEvent({', '.join(fields)})"

    def __reduce__(self) -> Tuple[Any, ...]:
        return (JSONEvent, (self._value, self._event, self._id, self._retry))


def encode_comment(text: str = "") -> bytes:
    """A comment block (``: text``), one comment line per line of ``text``.

    Receivers ignore comments; they keep idle connections alive through
    proxies and load balancers.
    """
    if not isinstance(text, str):
        raise EventError(f"comment must be a str, not {type(text).__name__}")
    return _utf8("".join(f":{' ' if line else ''}{line}\n" for line in _split_lines(text))
                 + "\n")


#: The event type a stream starts with when the ``Last-Event-ID`` it was asked
#: to resume from is not in the broker's history (unknown, or too old): events
#: may have been missed and the client should reload its state.  Its data is
#: the ``Last-Event-ID`` the client sent.
RESET_EVENT = "gosse-reset"

#: A ``Last-Event-ID`` longer than this (UTF-8 bytes) is not echoed back in
#: the reset event's data: a stream is not an amplifier.
RESET_ECHO_MAX = 256


def reset_event(last_id: str) -> Event:
    """The :data:`RESET_EVENT` a stream starts with when ``last_id`` cannot
    be resumed from (its data is the id, if at most 256 bytes)."""
    echo = last_id if len(last_id.encode("utf-8", "replace")) <= RESET_ECHO_MAX else ""
    return Event(echo, event=RESET_EVENT)
