"""Who receives what: the broker's sessions by client and topic, and the
replay history.

Both classes are plain data structures with one owner: the broker's
registry lock, under which every method here is called.  Nothing in them
blocks or does I/O, so that lock is held for microseconds.
"""
from __future__ import annotations

from itertools import islice
from typing import Dict, FrozenSet, Iterable, List, Optional, Tuple

from .session import Session

__all__ = ["Registry", "History", "Target", "entitled"]

# A delivery target: (kind, name) with kind "all", "client" or "topic".
Target = Tuple[str, Optional[str]]


def entitled(kind: str, name: Optional[str], client_id: str, topics: FrozenSet[str]) -> bool:
    """Whether a session of ``client_id`` that joined ``topics`` receives an
    event addressed to ``(kind, name)``: the one rule for live delivery and
    for replay (in-process and through any backplane)."""
    return (kind == "all" or (kind == "client" and name == client_id)
            or (kind == "topic" and name in topics))


class Registry:
    """The open sessions, by client id and by topic, with the recipients of
    each target cached as a tuple until its membership changes (so that a
    burst of broadcasts snapshots its recipients in O(1))."""

    def __init__(self) -> None:
        self.sessions: Dict[Session, None] = {}
        self.clients: Dict[str, Dict[str, Session]] = {}
        self.topics: Dict[str, Dict[Session, None]] = {}
        self._cache: Dict[Target, Tuple[Session, ...]] = {}

    def add(self, session: Session) -> bool:
        """Register ``session``; return whether it is its client's first."""
        self.sessions[session] = None
        cid = session.client_id
        found = self.clients.get(cid)
        first = found is None
        if found is None:
            found = self.clients[cid] = {}
        found[session.session_id] = session
        for topic in session.topics:
            self.topics.setdefault(topic, {})[session] = None
        self._changed(session)
        return first

    def remove(self, session: Session) -> Optional[bool]:
        """Unregister ``session``: None if it was not registered, else
        whether it was its client's last session."""
        if session not in self.sessions:
            return None
        del self.sessions[session]
        last = False
        found = self.clients.get(session.client_id)
        if found is not None:
            found.pop(session.session_id, None)
            if not found:
                del self.clients[session.client_id]
                last = True
        for topic in session.topics:
            members = self.topics.get(topic)
            if members is not None:
                members.pop(session, None)
                if not members:
                    del self.topics[topic]
        self._changed(session)
        return last

    def _changed(self, session: Session) -> None:
        cache = self._cache
        if cache:
            cache.pop(("all", None), None)
            cache.pop(("client", session.client_id), None)
            for topic in session.topics:
                cache.pop(("topic", topic), None)

    def recipients(self, kind: str, name: Optional[str]) -> Tuple[Session, ...]:
        """The sessions an event addressed to ``(kind, name)`` reaches now."""
        key = (kind, name)
        found = self._cache.get(key)
        if found is not None:
            return found
        if kind == "all":
            found = tuple(self.sessions)
        elif kind == "client":
            sessions = self.clients.get(name)   # type: ignore[arg-type]
            found = tuple(sessions.values()) if sessions else ()
        elif kind == "topic":
            found = tuple(self.topics.get(name, ()))   # type: ignore[arg-type]
        else:
            raise ValueError(f"unknown target kind {kind!r}")
        if found:   # only live targets are cached: the cache stays bounded
            self._cache[key] = found
        return found

    def count(self, kind: str, name: Optional[str]) -> int:
        """How many sessions ``(kind, name)`` reaches now."""
        if kind == "all":
            return len(self.sessions)
        if kind == "client":
            return len(self.clients.get(name, ()))   # type: ignore[arg-type]
        return len(self.topics.get(name, ()))   # type: ignore[arg-type]


class History:
    """The last ``maxlen`` events that have an id, for ``Last-Event-ID``
    replay.  Entries are ``(id, kind, name, wire)`` in delivery order; an id
    index makes finding where a client left off O(1), whatever the length.
    """

    def __init__(self, maxlen: int):
        self.maxlen = maxlen
        self._entries: List[Optional[Tuple[str, str, Optional[str], bytes]]] = []
        self._start = 0     # index in _entries of the oldest entry kept
        self._base = 0      # ordinal (count of entries ever appended) of _entries[0]
        self._index: Dict[str, int] = {}   # id -> ordinal of its newest entry

    def __len__(self) -> int:
        return len(self._entries) - self._start

    def append(self, event_id: str, kind: str, name: Optional[str], wire: bytes) -> None:
        entries = self._entries
        self._index[event_id] = self._base + len(entries)
        entries.append((event_id, kind, name, wire))
        if len(entries) - self._start > self.maxlen:
            old = entries[self._start]
            ordinal = self._base + self._start
            if old is not None and self._index.get(old[0]) == ordinal:
                del self._index[old[0]]
            entries[self._start] = None
            self._start += 1
            if self._start >= max(1024, self.maxlen):
                del entries[:self._start]
                self._base += self._start
                self._start = 0

    def after(self, last_id: str, client_id: str, topics: FrozenSet[str],
              max_bytes: int) -> Optional[List[bytes]]:
        """The wires after ``last_id`` that a session of ``client_id`` with
        ``topics`` may see, or None if the id is not in the history (or
        what followed it exceeds ``max_bytes``): the client must reset."""
        ordinal = self._index.get(last_id)
        if ordinal is None:
            return None
        out: List[bytes] = []
        size = 0
        for entry in islice(self._entries, ordinal - self._base + 1, None):
            _, kind, name, wire = entry   # type: ignore[misc]
            if entitled(kind, name, client_id, topics):
                size += len(wire)
                if size > max_bytes:
                    return None
                out.append(wire)
        return out

    def ids(self) -> Iterable[str]:
        """The ids kept, oldest first (for tests and debugging)."""
        return [e[0] for e in islice(self._entries, self._start, None)]   # type: ignore[index]
