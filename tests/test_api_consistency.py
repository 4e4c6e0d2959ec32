"""API consistency of issue 16: JSONEvent's contract, the hint for bytes
data, the backplane's error message in words, no exported error that is
never raised."""
import math
import pickle

import pytest

import gosse
from gosse import Event, EventError, JSONEvent
from servers import free_port


def test_json_event_first_parameter_is_data():
    evt = JSONEvent(data={"progress": 40}, event="job")
    assert evt.data == '{"progress":40}' and evt.event == "job"
    assert JSONEvent([1], "t", "7", 10) == JSONEvent(data=[1], event="t", id="7", retry=10)


def test_json_event_keeps_the_object_and_is_read_only():
    obj = {"a": [1, 2]}
    evt = JSONEvent(obj)
    assert evt.value is obj and evt.data == '{"a":[1,2]}'
    with pytest.raises(AttributeError):
        evt.value = 3


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {"x": [1.0, math.nan]}])
def test_json_event_refuses_nan_and_infinities(bad):
    with pytest.raises(EventError, match="NaN or an infinity"):
        JSONEvent(bad)


def test_json_event_replace_and_pickle_stay_json_events():
    evt = JSONEvent({"n": 1}, event="job", id="1", retry=5)
    changed = evt.replace(id="2")
    assert type(changed) is JSONEvent and changed.value == {"n": 1} and changed.id == "2"
    new_data = evt.replace(data={"n": 2})
    assert type(new_data) is JSONEvent and new_data.data == '{"n":2}'
    assert new_data.event == "job" and new_data.retry == 5
    with pytest.raises(TypeError, match="no field"):
        evt.replace(value=1)
    copy = pickle.loads(pickle.dumps(evt))
    assert type(copy) is JSONEvent and copy == evt and copy.value == {"n": 1}
    assert copy.encode() == evt.encode()
    assert repr(evt) == "JSONEvent(data={'n': 1}, event='job', id='1', retry=5)"
    # A plain Event stays a plain Event.
    assert type(pickle.loads(pickle.dumps(Event("x")))) is Event
    assert type(Event("x").replace(id="1")) is Event


@pytest.mark.parametrize("raw", [b"hello", bytearray(b"hello"), memoryview(b"hello")])
def test_event_from_bytes_says_to_decode(raw):
    with pytest.raises(EventError, match=r"decode it first") as info:
        Event(raw)
    assert "JSONEvent" not in str(info.value)
    with pytest.raises(EventError, match="use JSONEvent"):   # other objects: JSONEvent
        Event({"a": 1})


def test_session_limit_error_is_gone():
    """Session caps answer 503 (a Refusal); no exception is raised for them,
    so none is exported."""
    assert not hasattr(gosse, "SessionLimitError")
    assert "SessionLimitError" not in gosse.__all__
    assert not hasattr(gosse.errors, "SessionLimitError")


@pytest.mark.parametrize("call, words", [
    (lambda b: b.broadcast(Event("x")), "could not broadcast the event:"),
    (lambda b: b.send("alice", Event("x")), "could not send the event to client 'alice':"),
    (lambda b: b.publish("news", Event("x")), "could not publish the event to topic 'news':"),
])
def test_backplane_error_says_what_failed_in_words(call, words):
    pytest.importorskip("redis")
    from gosse.backplane import BackplaneError
    from gosse.backplane.redis import RedisBackplane

    # Nothing listens on this loopback port: every Redis command is refused.
    broker = gosse.Broker(backplane=RedisBackplane(f"redis://127.0.0.1:{free_port()}/0"))
    try:
        with pytest.raises(BackplaneError) as info:
            call(broker)
    finally:
        broker.close(timeout=1)
    message = str(info.value)
    assert words in message and "(all)" not in message and "(client)" not in message
    assert "Connection refused" in message or "ConnectionError" in message
