"""Incremental event-stream parser (WHATWG HTML, "Server-sent events").

Feed it bytes as they arrive, in chunks of any size and split anywhere (inside
a CRLF pair, inside a UTF-8 sequence); it returns the events completed so far::

    p = EventStreamParser()
    p.feed(b"data: caf\\xc3")     # -> []  (inside a UTF-8 sequence)
    p.feed(b"\\xa9\\r")           # -> []  (inside a CRLF pair)
    p.feed(b"\\n\\n")             # -> [Event(data='café', event='message', id='')]

The per-byte work is done by C-implemented ``bytes``/``str`` methods (rfind,
decode, replace, split, partition); the Python loop runs once per line.
"""
from __future__ import annotations

import re
import sys
from itertools import islice, repeat
from typing import Iterable, List, Optional, Tuple, Union

from .errors import EventStreamError
from .event import Event, _decoded_event

__all__ = ["EventStreamParser", "DEFAULT_MAX_LINE_BYTES", "DEFAULT_MAX_EVENT_SIZE"]

#: Default limit of one line's length, in bytes.
DEFAULT_MAX_LINE_BYTES = 1 << 20
#: Default limit of one event's data, in characters (see ``max_event_size``).
DEFAULT_MAX_EVENT_SIZE = 64 << 20

_BOM = b"\xef\xbb\xbf"
# Short-line text is matched in slices of about this many characters.
_SLICE = 16384
_NONE = repeat("")
# One match per line, one per run of blank lines (one blank line does what
# several do), or one per whole event of the most common shape ("id: ",
# "event: " and a single "data: " line, then a blank line), so that such an
# event costs one C-level match.  findall() returns "" for a group
# that did not take part; the groups include their field names so that an
# empty value is still a non-empty group.  The quantifiers are possessive
# where Python supports it: no backtracking over a long line.
_P = "+" if sys.version_info >= (3, 11) else ""
_TOKENS = re.compile(rf"(id: [^\n\0]*{_P}\n)?(event: [^\n]*{_P}\n)?(data: [^\n]*{_P})\n\n"
                     rf"|\n+|([^\n]*{_P})\n")


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
        self._pending: List[Union[bytes, memoryview]] = []  # the unfinished last line
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
        # A view, not a copy: the head is decoded straight from the chunk.
        head: Union[bytes, memoryview] = chunk if end == len(chunk) else memoryview(chunk)[:end]
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
            lines = bytes(head).splitlines(keepends=True)
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

    def _parse(self, head: Union[bytes, memoryview]) -> List[Event]:
        text = str(head, "utf-8", "replace")
        if "\r" in text:
            text = text.replace("\r\n", "\n").replace("\r", "\n")
        sample = min(len(text), 4096)
        if sample > text.count("\n", 0, sample) << 6:
            # Long lines (big data events): split() is cheapest; each line
            # goes through the per-line path.
            lines = text.split("\n")
            lines.pop()   # the empty string after the final line end
            return self._fields(zip(_NONE, _NONE, _NONE, lines))
        if len(text) <= _SLICE:
            return self._fields(_TOKENS.findall(text))
        # findall() makes a tuple per line: bound that list by taking the
        # text in slices cut after a line feed.
        events: List[Event] = []
        start = 0
        while start < len(text):
            cut = text.find("\n", start + _SLICE) + 1 or len(text)
            events += self._fields(_TOKENS.findall(text, start, cut))
            start = cut
        return events

    def _fields(self, tokens: Iterable[Tuple[str, str, str, str]]) -> List[Event]:
        """Process lines given as tokens of ``_TOKENS``: a whole common event
        in its first three items, or one line in the last."""
        events: List[Event] = []
        data = self._data
        counted = len(data)  # data lines whose size _data_size already holds
        limit = self._event_limit
        etype = self._type
        id_buffer = self._id
        for id_line, event_line, data_line, line in tokens:
            if line:
                if line[:6] == "data: ":   # the common case, without partition()
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
                continue
            if data_line:  # [id: ...\n][event: ...\n]data: ...\n\n
                if id_line:
                    id_buffer = id_line[4:-1]
                if event_line:
                    etype = event_line[7:-1]
                value = data_line[6:]
                if data:
                    data.append(value)
                    value = "\n".join(data)
                    data = []
            elif data:  # a blank line ends an event
                value = data[0] if len(data) == 1 else "\n".join(data)
                data = []
            else:  # a blank line without data: no event
                self.last_event_id = id_buffer
                etype = ""
                continue
            self.last_event_id = id_buffer
            if len(value) >= limit:   # len(value) + 1 > max_event_size
                self._too_big(len(value) + 1, events)
            events.append(_decoded_event(value, etype or "message", id_buffer, self.retry))
            etype = ""
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
