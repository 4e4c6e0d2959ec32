import pytest

from gosse import Event, EventStreamError, EventStreamParser
from vectors import VECTORS, as_dict, feeding_modes


def parse(*chunks, **kwargs):
    p = EventStreamParser(**kwargs)
    events = []
    for c in chunks:
        events.extend(p.feed(c))
    return events, p


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_conformance_vector(vector):
    expected = (vector["events"], vector["retry"], vector["last_event_id"])
    modes = 0
    for mode, chunks in feeding_modes(vector):
        events, p = parse(*chunks)
        assert ([as_dict(e) for e in events], p.retry, p.last_event_id) == expected, mode
        modes += 1
    assert modes >= 3


def test_vectors_cover_given_chunks():
    assert len(VECTORS) >= 90
    assert sum(("chunks" in v or "chunks_hex" in v) for v in VECTORS) >= 10


def test_decoded_event_fields():
    [e], p = parse(b"event: e\nid: 7\nretry: 50\ndata: x\n\n")
    assert (e.event, e.data, e.id, e.retry) == ("e", "x", "7", 50)
    assert isinstance(e, Event)


def test_default_type_is_message_and_id_empty():
    [e], _ = parse(b"data: x\n\n")
    assert (e.event, e.id, e.retry) == ("message", "", None)


def test_one_leading_space_removed_only():
    [e], _ = parse(b"data:  two\n\n")
    assert e.data == " two"


def test_data_lines_joined_with_lf():
    [e], _ = parse(b"data: a\r\ndata: b\rdata: c\n\n")
    assert e.data == "a\nb\nc"


def test_crlf_split_across_feeds_is_one_line_end():
    events, _ = parse(b"data: a\r", b"\n", b"\r", b"\n")
    assert [e.data for e in events] == ["a"]


def test_cr_then_data_is_not_swallowed():
    events, _ = parse(b"data: a\r", b"data: b\r\r")
    assert [e.data for e in events] == ["a\nb"]


def test_bom_split_across_feeds():
    events, _ = parse(b"\xef", b"\xbb", b"\xbfdata: x\n\n")
    assert [e.data for e in events] == ["x"]


def test_partial_bom_prefix_that_is_not_a_bom_is_kept():
    events, _ = parse(b"\xef", b"data: x\n\n")
    # \xef then "data" is a field named "\ufffddata": ignored, nothing dispatched
    assert events == []


def test_utf8_sequence_split_across_feeds():
    raw = "data: é€😀\n\n".encode()
    for i in range(len(raw) + 1):
        events, _ = parse(raw[:i], raw[i:])
        assert [e.data for e in events] == ["é€😀"]


def test_invalid_utf8_replaced():
    [e], _ = parse(b"data: a\xffb\n\n")
    assert e.data == "a\ufffdb"


def test_nul_in_id_ignored_id_persists():
    events, p = parse(b"id: 1\ndata: a\n\nid: x\0y\ndata: b\n\n")
    assert [e.id for e in events] == ["1", "1"]
    assert p.last_event_id == "1"


def test_last_event_id_changes_at_block_end_only():
    p = EventStreamParser()
    p.feed(b"id: 9\n")
    assert p.last_event_id == ""
    p.feed(b"\n")
    assert p.last_event_id == "9"


def test_initial_last_event_id():
    [e], p = parse(b"data: x\n\n", last_event_id="41")
    assert e.id == "41" and p.last_event_id == "41"


@pytest.mark.parametrize("value", ["1_000", " 5", "5 ", "1e3", "١٢", "１０", "-1", ""])
def test_retry_needs_ascii_digits(value):
    _, p = parse(f"retry: {value}\n".encode() if value[:1] != " " else f"retry:{value}\n".encode())
    if value == " 5":  # "retry: 5" after the one optional space: valid
        assert p.retry == 5
    else:
        assert p.retry is None


def test_empty_data_block_not_dispatched_and_type_reset():
    events, _ = parse(b"event: x\n\ndata: y\n\n")
    assert [(e.event, e.data) for e in events] == [("message", "y")]


def test_unterminated_event_discarded():
    events, _ = parse(b"data: a\n\ndata: b\n")
    assert [e.data for e in events] == ["a"]


def test_line_without_colon_is_field_with_empty_value():
    [e], _ = parse(b"data\ndata\n\n")
    assert e.data == "\n"


def test_comment_lines_ignored():
    [e], _ = parse(b": hi\ndata: x\n:\n\n")
    assert e.data == "x"


def test_accepts_bytearray_and_memoryview():
    p = EventStreamParser()
    assert p.feed(bytearray(b"data: a\n")) == []
    [e] = p.feed(memoryview(b"\n"))
    assert e.data == "a"


def test_long_line_in_one_chunk_raises():
    with pytest.raises(EventStreamError, match="max_line_bytes=16"):
        parse(b"data: " + b"x" * 20 + b"\n\n", max_line_bytes=16)


def test_long_partial_line_raises_before_its_end():
    p = EventStreamParser(max_line_bytes=100)
    for _ in range(9):
        p.feed(b"x" * 10)
    with pytest.raises(EventStreamError):
        p.feed(b"x" * 20)
    assert p._pending_len == 0  # buffer released


def test_endless_line_memory_bounded():
    p = EventStreamParser(max_line_bytes=1000)
    with pytest.raises(EventStreamError):
        for _ in range(10_000):
            p.feed(b"y" * 64)
            assert p._pending_len <= 1000


def test_line_at_limit_is_accepted():
    [e], _ = parse(b"data: " + b"x" * 10 + b"\n\n", max_line_bytes=16)
    assert e.data == "x" * 10


def test_many_small_feeds_of_a_long_line_are_linear():
    p = EventStreamParser()
    for _ in range(20_000):
        p.feed(b"x" * 50)
    p.feed(b"\n")
    assert p._pending_len == 0


@pytest.mark.parametrize("bad", [0, -1, 1.5, "10"])
def test_bad_max_line_bytes(bad):
    with pytest.raises(ValueError):
        EventStreamParser(max_line_bytes=bad)


def test_events_before_an_overlong_line_are_on_the_error():
    p = EventStreamParser(max_line_bytes=16)
    with pytest.raises(EventStreamError) as info:
        p.feed(b"data: a\n\ndata: b\n\ndata: " + b"x" * 40 + b"\n\n")
    assert [e.data for e in info.value.events] == ["a", "b"]
    p = EventStreamParser(max_line_bytes=16)
    with pytest.raises(EventStreamError) as info:
        p.feed(b"data: a\n\n" + b"y" * 40)  # overlong unfinished tail
    assert [e.data for e in info.value.events] == ["a"]
