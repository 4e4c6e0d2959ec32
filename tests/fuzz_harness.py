"""The checks shared by the hypothesis property tests (tests/test_fuzz.py) and
the optional atheris fuzzer (tests/fuzz_parser_atheris.py): feed the same
bytes to :class:`~gosse.EventStreamParser` whole and in given chunks and
demand the same outcome, only ``EventStreamError`` as an exception, and
buffers within the limits after every feed."""
from gosse import EventStreamError, EventStreamParser


def outcome(chunks, **limits):
    """Feed ``chunks`` to a fresh parser; return ``(events, error, state)``:
    every event as a tuple, whether an ``EventStreamError`` ended the feeding,
    and the parser's ``(last_event_id, retry)`` afterwards.  Checks after
    every feed that the parser buffers no more than its limits allow."""
    p = EventStreamParser(**limits)
    max_line = p.max_line_bytes
    max_event = p.max_event_size
    if max_event is None:
        max_event = float("inf")
    events = []
    error = False
    for chunk in chunks:
        try:
            got = p.feed(chunk)
        except EventStreamError as exc:
            got = exc.events
            error = True
        events.extend((e.event, e.data, e.id, e.retry) for e in got)
        if error:
            # The buffers are released with the error.
            assert p._pending_len == 0 and not p._pending
            break
        # Memory bound: the unfinished line never exceeds max_line_bytes
        # (the chunk being fed is the only other copy), and the data of the
        # event being built never exceeds max_event_size.
        # (Before the first 3 bytes, up to 2 bytes of a possible BOM wait.)
        assert p._pending_len <= max(max_line, 2 if p._check_bom else 0), (
            p._pending_len, max_line)
        assert sum(map(len, p._pending)) == p._pending_len
        assert p._data_size <= max_event, (p._data_size, max_event)
        assert sum(len(d) + 1 for d in p._data) == p._data_size
    return events, error, (p.last_event_id, p.retry)


def split(data, cuts):
    """``data`` cut at the positions ``cuts`` (any ints; taken modulo the
    length, sorted, duplicates give empty chunks)."""
    if not data:
        return [data] * (len(cuts) + 1)
    points = sorted(c % (len(data) + 1) for c in cuts)
    chunks = []
    start = 0
    for p in points:
        chunks.append(data[start:p])
        start = p
    chunks.append(data[start:])
    assert b"".join(chunks) == data
    return chunks


def check_chunkings(data, cuts, **limits):
    """The outcome of ``data`` fed whole equals the outcome fed byte by byte
    and cut at ``cuts``; returns the whole-feed outcome."""
    whole = outcome([data], **limits)
    assert outcome(split(data, cuts), **limits) == whole
    assert outcome([data[i:i + 1] for i in range(len(data))], **limits) == whole
    return whole
