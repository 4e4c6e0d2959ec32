"""Incremental event-stream parser (WHATWG HTML, "Server-sent events").

Feed it bytes as they arrive, in chunks of any size and split anywhere (inside
a CRLF pair, inside a UTF-8 sequence); it returns the events completed so far::

    p = EventStreamParser()
    p.feed(b"data: a\\r\\n\\r")    # -> []
    p.feed(b"\\n")                # -> [Event(data='a', event='message', id='')]

The per-byte work is done by C-implemented ``bytes``/``str`` methods (rfind,
decode, replace, split, partition); the Python loop runs once per line.
"""
from __future__ import annotations

import sys
from itertools import islice
from typing import List, Optional, Union

from .errors import EventStreamError
from .event import Event, _decoded_event

__all__ = ["EventStreamParser", "DEFAULT_MAX_LINE_BYTES", "DEFAULT_MAX_EVENT_SIZE"]

#: Default limit of one line's length, in bytes.
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: Default limit of one event's data, in characters (see ``max_event_size``).
DEFAULT_MAX_EVENT_SIZE = 64 << 20

_BOM = b"\xef\xbb\xbf"


class EventStreamParser:
    """Turns a byte stream into :class:`~gosse.Event` objects.

    State lives in plain attributes:

    * ``last_event_id``: the id in force after the last complete block (what a
      browser's ``EventSource.lastEventId`` shows; send it back as
      ``Last-Event-ID`` when reconnecting).
    * ``retry``: the reconnection time in milliseconds set by the stream, or
      ``None`` if it never set one.

    A line longer than ``max_line_bytes`` raises
    :class:`~gosse.errors.EventStreamError`; so does an event whose data grows
    beyond ``max_event_size`` characters (its data lines plus the line feed
    after each; for ASCII data, bytes) before its blank line: a stream of
    ``data:`` lines that never ends an event would otherwise grow memory
    without bound.  ``None`` lifts that limit.  Buffered memory stays within
    the two bounds plus one chunk.  The events completed by the same chunk
    before the offending line are on the error's ``events`` list.  After an
    error the parser should be discarded.
    """

    def __init__(self, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
                 last_event_id: str = "", *,
                 max_event_size: Optional[int] = DEFAULT_MAX_EVENT_SIZE):
        if type(max_line_bytes) is not int or max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be a positive int, not {max_line_bytes!r}")
        if max_event_size is not None and (type(max_event_size) is not int
                                           or max_event_size < 1):
            raise ValueError("max_event_size must be a positive int or None, "
                             f"not {max_event_size!r}")
        self.max_line_bytes = max_line_bytes
        self.max_event_size = max_event_size
        # Compared per event and per feed: an int, never None.
        self._event_limit = sys.maxsize if max_event_size is None else max_event_size
        self.last_event_id = last_event_id
        self.retry: Optional[int] = None
        self._pending: List[bytes] = []  # bytes of the unfinished last line
        self._pending_len = 0
        self._skip_lf = False    # the previous chunk ended with CR
        self._check_bom = True   # nothing has been seen yet
        # The block being built:
        self._data: List[str] = []
        self._data_size = 0      # sum(len(line) + 1 for line in self._data)
        self._type = ""
        self._id = last_event_id

    def feed(self, chunk: Union[bytes, bytearray, memoryview]) -> List[Event]:
        """Parse more bytes; return the events they complete (maybe none)."""
        if type(chunk) is not bytes:
            chunk = bytes(chunk)
        if self._check_bom:
            if self._pending:
                chunk = b"".join(self._pending) + chunk
                self._pending = []
                self._pending_len = 0
            if len(chunk) < 3 and _BOM.startswith(chunk):
                if chunk:
                    self._pending = [chunk]
                    self._pending_len = len(chunk)
                return []
            self._check_bom = False
            if chunk.startswith(_BOM):
                chunk = chunk[3:]
        if self._skip_lf:
            if not chunk:
                return []
            self._skip_lf = False
            if chunk[0] == 10:  # the LF of a CRLF split between chunks
                chunk = chunk[1:]
        end = chunk.rfind(b"\n")
        cr = chunk.rfind(b"\r", end + 1)
        if cr > end:
            end = cr
            self._skip_lf = cr == len(chunk) - 1
        if end < 0:
            if chunk:
                self._pending.append(chunk)
                self._pending_len += len(chunk)
                if self._pending_len > self.max_line_bytes:
                    self._too_long(self._pending_len, [])
            return []
        end += 1
        head = chunk if end == len(chunk) else chunk[:end]
        if self._pending:
            self._pending.append(head)
            head = b"".join(self._pending)
            self._pending = []
            self._pending_len = 0
        too_long = 0
        if end < len(chunk):
            tail = chunk[end:]
            if len(tail) > self.max_line_bytes:
                too_long = len(tail)
            else:
                self._pending.append(tail)
                self._pending_len = len(tail)
        if len(head) > self.max_line_bytes:
            # Rare: find the first overlong line; parse only what precedes it.
            lines = head.splitlines(keepends=True)
            for i, line in enumerate(lines):
                length = len(line.rstrip(b"\r\n"))
                if length > self.max_line_bytes:
                    head = b"".join(lines[:i])
                    too_long = length
                    self._skip_lf = False
                    break
        events = self._parse(head) if head else []
        if too_long:
            self._too_long(too_long, events)
        return events

    def _parse(self, head: bytes) -> List[Event]:
        text = head.decode("utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        lines = text.split("\n")
        # Long lines (big data events): take "data: " lines on a short path
        # that avoids partition() and a second copy of the value.
        return self._lines(lines, len(text) > len(lines) << 6)

    def _lines(self, lines: List[str], long_lines: bool = False) -> List[Event]:
        # lines[-1] is the empty string after the final line end: skip it.
        lines.pop()
        events = []
        data = self._data
        counted = len(data)  # data lines whose size _data_size already holds
        limit = self._event_limit
        etype = self._type
        id_buffer = self._id
        for line in lines:
            if not line:  # blank line: dispatch
                self.last_event_id = id_buffer
                if data:
                    text = data[0] if len(data) == 1 else "\n".join(data)
                    if len(text) >= limit:   # len(text) + 1 > max_event_size
                        self._too_big(len(text) + 1, events)
                    events.append(_decoded_event(text, etype or "message", id_buffer,
                                                 self.retry))
                    data = []
                etype = ""
                continue
            if long_lines and line[:6] == "data: ":
                data.append(line[6:])
                continue
            name, colon, value = line.partition(":")
            if colon and value[:1] == " ":
                value = value[1:]
            if name == "data":
                data.append(value)
            elif not name:
                pass  # comment
            elif name == "event":
                etype = value
            elif name == "id":
                if "\0" not in value:
                    id_buffer = value
            elif name == "retry":
                if value.isdigit() and value.isascii():
                    self.retry = int(value)
        if data:
            # An event continues into the next feed: count what this feed
            # added to it (in C), once per feed rather than once per line.
            if data is self._data:
                size = self._data_size
            else:  # an event was dispatched: this one started in this feed
                size = counted = 0
            if len(data) > counted:
                size += sum(map(len, islice(data, counted, None))) + len(data) - counted
                if size > limit:
                    self._too_big(size, events)
                self._data_size = size
        else:
            self._data_size = 0
        self._data = data
        self._type = etype
        self._id = id_buffer
        return events

    def _too_big(self, size: int, events: List[Event]) -> None:
        self._release()
        error = EventStreamError(
            f"event stream event of {size} characters or more exceeds max_event_size="
            f"{self.max_event_size}; raise the limit if this stream is legitimate")
        error.events = events
        raise error

    def _release(self) -> None:
        self._pending = []
        self._pending_len = 0
        self._data = []
        self._data_size = 0

    def _too_long(self, length: int, events: List[Event]) -> None:
        self._release()
        error = EventStreamError(
            f"event stream line of {length} bytes or more exceeds max_line_bytes="
            f"{self.max_line_bytes}; raise the limit if this stream is legitimate")
        error.events = events
        raise error
