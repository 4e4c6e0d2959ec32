"""Hostile input to the client parser: property tests over arbitrary bytes and
arbitrary chunkings (hypothesis), and the degenerate streams a hostile or
broken server can send (an endless line, endless blank lines, only comments,
invalid UTF-8, endless data lines).

For any input, fed whole, byte by byte or cut anywhere, the parser

* raises nothing but ``EventStreamError``,
* gives the same events, the same error (or none) and the same
  ``last_event_id``/``retry``,
* never holds more than ``max_line_bytes`` of an unfinished line nor more
  than ``max_event_size`` characters of an unfinished event (checked after
  every feed, see ``fuzz_harness.outcome``).

``tests/fuzz_parser_atheris.py`` runs the same checks under atheris
(coverage-guided; optional, not part of the suite)."""
import time
import tracemalloc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz_harness import check_chunkings, outcome, split
from gosse import EventStreamError, EventStreamParser

# Pieces that make the interesting cases likely: field names, separators,
# every kind of line end, a BOM, NUL, bytes that are not UTF-8, a UTF-8
# sequence that chunk cuts can split, digits for retry.
TOKENS = [b"data", b"data:", b"data: ", b"event:", b"id:", b"id: ", b"retry:", b"retry: 1",
          b":", b": c", b" ", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\r", b"\xef\xbb\xbf",
          b"\x00", b"\xff", b"\xc3", b"\xc3\xa9", b"\xf0\x9f\x98\x80", b"\xe2\x80\xa8",
          b"x", b"abc", b"0", b"123", b"\t"]

sse_like = st.lists(st.one_of(st.sampled_from(TOKENS), st.binary(max_size=8)),
                    max_size=60).map(b"".join)
cuts = st.lists(st.integers(min_value=0, max_value=10_000), max_size=12)
limits = st.fixed_dictionaries({
    "max_line_bytes": st.integers(min_value=1, max_value=40),
    "max_event_size": st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
})

FUZZ = settings(max_examples=400, deadline=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(data=st.binary(max_size=400), cuts=cuts)
def test_arbitrary_bytes_any_chunking_default_limits(data, cuts):
    check_chunkings(data, cuts)


@FUZZ
@given(data=sse_like, cuts=cuts)
def test_sse_like_bytes_any_chunking_default_limits(data, cuts):
    check_chunkings(data, cuts)


@FUZZ
@given(data=sse_like, cuts=cuts, limits=limits)
def test_sse_like_bytes_any_chunking_small_limits(data, cuts, limits):
    """Small limits make the error paths (overlong line, overlong event)
    common: they must be hit at the same place however the bytes are cut."""
    check_chunkings(data, cuts, **limits)


@settings(max_examples=150, deadline=None)
@given(data=sse_like, cuts=cuts)
def test_outcome_of_the_parts_is_the_outcome_of_the_whole_with_a_prefix(data, cuts):
    """A stream is the concatenation of what went before: an event stream
    of well-formed events followed by any bytes gives those events first."""
    prefix = b"id: p\ndata: one\n\nevent: t\ndata: two\n\n"
    events, error, _ = check_chunkings(prefix + data, cuts)
    assert events[:2] == [("message", "one", "p", None), ("t", "two", "p", None)]
    assert not error  # default limits: nothing this short breaks them


def test_properties_found_these_before():
    """Inputs worth keeping whatever hypothesis draws: a CR at a cut before
    LF, a BOM cut in three, an overlong line right after a BOM."""
    for data in [b"data: a\r\n\r\n", b"\xef\xbb\xbfdata: x\n\n", b"\xef\xbb\xbf" + b"x" * 41,
                 b"data: x\r\rdata: y\n\n", b"data:\xc3\n\xa9\n\n", b"\r\n" * 30]:
        for limits in ({}, {"max_line_bytes": 40}, {"max_event_size": 3}):
            check_chunkings(data, list(range(len(data) + 1)), **limits)


# -- degenerate streams --------------------------------------------------------

def test_endless_line_raises_with_memory_bounded():
    """A line that never ends: the parser raises once it holds more than
    max_line_bytes, whatever the chunk size, and never more than that."""
    for chunk in (b"y", b"y" * 7, b"y" * 4096, b"y" * 70_000):
        p = EventStreamParser(max_line_bytes=64 * 1024)
        fed = 0
        with pytest.raises(EventStreamError, match="max_line_bytes=65536"):
            while fed < 10 * 64 * 1024:      # bounded: must raise well before
                p.feed(chunk)
                fed += len(chunk)
                assert p._pending_len <= 64 * 1024
        assert fed <= 64 * 1024 + len(chunk)  # raised within one chunk of the limit
        assert p._pending_len == 0 and p._pending == []


def test_endless_data_lines_raise_with_memory_bounded():
    """An event that never ends (data lines, no blank line) stops at
    max_event_size instead of growing without bound."""
    p = EventStreamParser(max_event_size=1 << 20)
    line = b"data: " + b"z" * 1017 + b"\n"           # 1 KiB a line
    fed = 0
    with pytest.raises(EventStreamError, match="max_event_size=1048576") as info:
        while fed < 8 << 20:
            p.feed(line * 64)
            fed += len(line) * 64
            assert p._data_size <= 1 << 20
    assert fed <= (1 << 20) + 2 * 64 * len(line)
    assert info.value.events == [] and p._data == []


def test_default_event_limit_and_none():
    p = EventStreamParser()
    assert p.max_event_size == 64 << 20
    big = b"data: " + b"q" * 1000 + b"\n"
    p = EventStreamParser(max_event_size=None)
    for _ in range(100):
        p.feed(big * 100)                     # ~10 MB of one event: no limit
    [e] = p.feed(b"\n")
    assert len(e.data) == 100 * 100 * 1001 - 1


@pytest.mark.parametrize("bad", [0, -1, 2.5, "10", True])
def test_bad_max_event_size(bad):
    with pytest.raises(ValueError):
        EventStreamParser(max_event_size=bad)


def test_event_limit_counts_data_and_line_feeds():
    # "data: abc" x2 is 2 * (3 + 1) = 8 characters: the limit is inclusive.
    [e] = EventStreamParser(max_event_size=8).feed(b"data: abc\ndata: abc\n\n")
    assert e.data == "abc\nabc"
    p = EventStreamParser(max_event_size=7)
    with pytest.raises(EventStreamError) as info:
        p.feed(b"data: a\n\ndata: abc\ndata: abc\n\n")
    assert [e.data for e in info.value.events] == ["a"]  # completed before the error
    # The count starts again with each event.
    p = EventStreamParser(max_event_size=8)
    events = p.feed(b"data: abc\ndata: abc\n\n" * 1000)
    assert len(events) == 1000


def _steady_feed(p, block, total):
    """Feed ``block`` until ``total`` bytes went in; return the events and
    the peak traced memory growth (bytes)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        events = []
        fed = 0
        while fed < total:
            events.extend(p.feed(block))
            fed += len(block)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return events, peak


@pytest.mark.parametrize("block", [b"\n" * 65536, b"\r\n" * 32768, b"\r" * 65536],
                         ids=["LF", "CRLF", "CR"])
def test_endless_blank_lines_keep_nothing(block):
    """Blank lines dispatch nothing and buffer nothing: 4 MB of them leave
    the parser as it was, with memory growth bounded by one chunk's work."""
    p = EventStreamParser()
    p.feed(b"id: 5\n\n")
    t0 = time.monotonic()
    events, peak = _steady_feed(p, block, 4 << 20)
    elapsed = time.monotonic() - t0
    assert events == []
    assert p._pending_len == 0 and p._data == [] and p._data_size == 0
    assert p.last_event_id == "5"
    # One 64 KiB chunk splits into at most 65,537 lines: a list of pointers
    # (the empty strings are one shared object).
    assert peak < 2 << 20, peak
    assert elapsed < 10
    [e] = p.feed(b"data: after\n\n")
    assert (e.data, e.id) == ("after", "5")


def test_stream_of_only_comments_keeps_nothing():
    p = EventStreamParser()
    block = (b": keep-alive " + b"c" * 200 + b"\n") * 300 + b":\n" * 1000
    events, peak = _steady_feed(p, block, 8 << 20)
    assert events == [] and p._pending_len == 0 and p._data == []
    assert peak < 2 << 20, peak
    # A comment that never ends is a line like any other: bounded.
    p = EventStreamParser(max_line_bytes=1000)
    with pytest.raises(EventStreamError):
        for _ in range(100):
            p.feed(b": " + b"c" * 100)


def test_invalid_utf8_everywhere():
    """Bytes that are not UTF-8 in names, values, ids and types become
    U+FFFD (the field name then matches nothing); nothing raises."""
    raw = (b"data: \xff\xfe\n"            # invalid start bytes
           b"data: \xc3\n"                # a truncated sequence at a line end
           b"data: \xed\xa0\x80\n"        # an encoded surrogate
           b"data: \xf4\x90\x80\x80\n"    # beyond U+10FFFF
           b"data: \xc0\xaf\n"            # overlong encoding of "/"
           b"event: t\xff\n"
           b"id: i\x80\n"
           b"da\xffta: ignored\n"
           b"\n")
    events, error, (last_id, _) = check_chunkings(raw, [3, 9, 20, 27, 40])
    assert not error
    [(etype, data, eid, _)] = events
    assert data.split("\n") == ["\ufffd\ufffd", "\ufffd", "\ufffd" * 3, "\ufffd" * 4,
                                "\ufffd\ufffd"]
    assert (etype, eid, last_id) == ("t\ufffd", "i\ufffd", "i\ufffd")


def test_random_garbage_megabytes():
    """A megabyte of random bytes in random chunks: no exception but
    EventStreamError, same result as fed whole."""
    import random
    rng = random.Random(8)
    data = bytes(rng.getrandbits(8) for _ in range(1 << 20))
    cuts_ = [rng.randrange(len(data)) for _ in range(200)]
    whole = outcome([data])
    assert outcome(split(data, cuts_)) == whole
