import json
import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gosse import Event, EventError, EventStreamParser, JSONEvent
from gosse.event import HEARTBEAT, encode_comment


def roundtrip(event, chunk=None):
    wire = event.encode()
    p = EventStreamParser()
    if chunk:
        events = []
        for i in range(0, len(wire), chunk):
            events.extend(p.feed(wire[i:i + chunk]))
    else:
        events = p.feed(wire)
    return events, p


def test_full_event_wire_format():
    assert Event("hi", event="greet", id="7", retry=1500).encode() == (
        b"id: 7\nevent: greet\nretry: 1500\ndata: hi\n\n")


def test_plain_data_only():
    assert Event("x").encode() == b"data: x\n\n"


@pytest.mark.parametrize("data,lines", [
    ("a\nb", [b"a", b"b"]),
    ("a\r\nb", [b"a", b"b"]),
    ("a\rb", [b"a", b"b"]),
    ("a\r\rb\n", [b"a", b"", b"b", b""]),
    ("", [b""]),
])
def test_data_split_on_crlf_cr_lf(data, lines):
    wire = Event(data).encode()
    assert wire == b"".join(b"data: " + line + b"\n" for line in lines) + b"\n"


def test_unicode_separators_are_not_line_ends():
    data = "a\x0bb\x0cc\x1cd\x85e\u2028f\u2029g"
    assert Event(data).encode().count(b"data:") == 1
    [e], _ = roundtrip(Event(data))
    assert e.data == data


def test_leading_space_in_data_survives():
    [e], _ = roundtrip(Event("  indented"))
    assert e.data == "  indented"


@pytest.mark.parametrize("field", ["id", "event"])
def test_cr_lf_stripped_from_single_line_fields(field):
    evt = Event("x", **{field: "a\r\nb\nc\rd"})
    assert getattr(evt, field) == "abcd"
    assert evt.encode().count(b"\n") == 3  # field line, data line, blank line


def test_nul_stripped_from_id_only():
    assert Event("x", id="a\0b").id == "ab"
    assert Event("x", event="a\0b").event == "a\0b"


def test_injection_through_id_does_not_add_fields():
    evt = Event("x", id="1\n\ndata: evil\nevent: admin\n")
    events, _ = roundtrip(evt)
    assert [(e.event, e.data) for e in events] == [("message", "x")]


@pytest.mark.parametrize("retry", [-1, 1.5, "100", True, None])
def test_retry_must_be_non_negative_int(retry):
    if retry is None:
        assert Event("x", retry=None).retry is None
        return
    with pytest.raises(EventError, match="retry"):
        Event("x", retry=retry)


def test_retry_zero_allowed():
    assert Event("x", retry=0).encode() == b"retry: 0\ndata: x\n\n"


@pytest.mark.parametrize("data", [b"bytes", 1, {"a": 1}])
def test_data_must_be_str(data):
    with pytest.raises(EventError, match="data must be a str"):
        Event(data)


@pytest.mark.parametrize("field", ["id", "event"])
def test_id_event_must_be_str(field):
    with pytest.raises(EventError, match=field):
        Event("x", **{field: 5})


def test_error_is_also_value_error():
    with pytest.raises(ValueError):
        Event("x", retry=-5)


def test_lone_surrogate_rejected_clearly():
    with pytest.raises(EventError, match="UTF-8"):
        Event("\ud800").encode()


def test_data_none_sends_control_block():
    evt = Event(None, id="5", retry=100)
    assert evt.encode() == b"id: 5\nretry: 100\n\n"
    events, p = roundtrip(evt)
    assert events == [] and p.last_event_id == "5" and p.retry == 100


def test_encoding_cached_per_object():
    evt = Event("x" * 100, id="1")
    assert evt.encode() is evt.encode()


def test_events_are_immutable():
    evt = Event("x")
    with pytest.raises(AttributeError):
        evt.data = "y"


def test_replace():
    evt = Event("x", id="1").replace(data="y")
    assert (evt.data, evt.id) == ("y", "1")
    with pytest.raises(TypeError, match="nope"):
        evt.replace(nope=1)


def test_equality_hash_repr_pickle():
    a, b = Event("x", event="t", id="1"), Event("x", event="t", id="1")
    assert a == b and hash(a) == hash(b) and a != Event("x")
    assert repr(a) == "Event(data='x', event='t', id='1')"
    assert pickle.loads(pickle.dumps(a)) == a


def test_json_event_compact_and_unicode():
    evt = JSONEvent({"a": [1, 2], "b": "é"}, event="j", id="3")
    assert evt.data == '{"a":[1,2],"b":"é"}'
    assert evt.encode() == 'id: 3\nevent: j\ndata: {"a":[1,2],"b":"é"}\n\n'.encode()
    assert evt.value == {"a": [1, 2], "b": "é"}
    [e], _ = roundtrip(evt)
    assert json.loads(e.data) == evt.value


def test_json_event_unserialisable():
    with pytest.raises(EventError, match="JSON"):
        JSONEvent({1, 2})


def test_comments():
    assert encode_comment() == b":\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert HEARTBEAT == b":\n\n"
    events, _ = roundtrip(Event("x"))
    p = EventStreamParser()
    assert p.feed(encode_comment("ping\r\nx") + HEARTBEAT) == []


def lf(s):
    return s.replace("\r\n", "\n").replace("\r", "\n")


def test_line_ends_come_back_as_lf():
    [e], _ = roundtrip(Event("a\r\nb\rc\nd"))
    assert e.data == "a\nb\nc\nd"


text = st.text(st.characters(blacklist_categories=("Cs",)))


@settings(max_examples=300, deadline=None)
@given(data=text, event=st.one_of(st.none(), text), id=st.one_of(st.none(), text),
       retry=st.one_of(st.none(), st.integers(min_value=0, max_value=2**40)),
       chunk=st.one_of(st.none(), st.integers(min_value=1, max_value=7)))
def test_roundtrip_property(data, event, id, retry, chunk):
    evt = Event(data, event=event, id=id, retry=retry)
    events, p = roundtrip(evt, chunk)
    assert len(events) == 1
    [got] = events
    # SSE carries line structure, not line-end bytes: CR and CRLF come back as LF.
    assert got.data == lf(data)
    expected_type = evt.event or "message"
    assert got.event == expected_type
    assert got.id == (evt.id or "")
    assert got.retry == retry


@settings(max_examples=100, deadline=None)
@given(st.lists(text, min_size=1, max_size=5))
def test_roundtrip_many_events_one_stream(datas):
    wire = b"".join(Event(d, id=str(i)).encode() for i, d in enumerate(datas))
    events = EventStreamParser().feed(b"\xef\xbb\xbf" + wire)
    assert [(e.data, e.id) for e in events] == [(lf(d), str(i)) for i, d in enumerate(datas)]
