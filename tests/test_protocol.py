"""Pure tests of the wire protocol: every message roundtrips; every malformed frame is refused."""

from __future__ import annotations

import dataclasses
import pickle
from typing import Any

import pytest

from zray import protocol as p

pytestmark = pytest.mark.timeout(30)

SAMPLES: dict[type, Any] = {
    bytes: b"\x00\xffid",
    str: "text \u00e9",
    int: 7,
    float: 1.5,
    bool: True,
    list: [b"a", 1, ("nested", None)],
    dict: {"CPU": 1.0, "custom": 2},
    tuple: (b"x", 2),
    type(None): None,
}

MESSAGES = sorted(p._BY_OP.items())


def sample(cls: type[p.Message], pick: int = 0) -> p.Message:
    """An instance of ``cls`` with a sample value of each field's ``pick``-th allowed type."""
    values = [SAMPLES[allowed[min(pick, len(allowed) - 1)]] for allowed in cls._types]
    return cls(*values)


def names(cls: type[p.Message]) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]


def frames_of(cls: type[p.Message], values: Any, version: int = p.PROTOCOL_VERSION) -> list[bytes]:
    return [bytes((version, cls.op)) + pickle.dumps(values, protocol=5)]


def test_every_message_class_is_registered_under_its_op() -> None:
    assert len(MESSAGES) >= 20
    for op, cls in MESSAGES:
        assert cls.op == op
        assert dataclasses.is_dataclass(cls)
        assert len(cls._types) == len(names(cls))
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(sample(cls), names(cls)[0], None)


@pytest.mark.parametrize(("op", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
def test_roundtrip(op: int, cls: type[p.Message]) -> None:
    for pick in (0, 1):  # e.g. ``bytes | None`` fields both ways
        msg = sample(cls, pick)
        frames = p.encode(msg)
        assert len(frames) == 1 and frames[0][:2] == bytes((p.PROTOCOL_VERSION, op))
        assert p.decode(frames) == msg
        assert type(p.decode(frames)) is cls


def test_submit_task_roundtrip_with_real_values() -> None:
    msg = p.SubmitTask(b"t" * 16, b"job1", b"f" * 16, "mod.fn", b"\x80args", [b"d" * 20],
                       [], 2, {"CPU": 1.0, "GPU": 0.5}, 3, b"*", b"", {}, False, b"", b"p" * 16)
    assert p.decode(p.encode(msg)) == msg


def test_wrong_version_is_refused() -> None:
    frames = p.encode(p.Blocked(b"t"))
    with pytest.raises(p.ProtocolError, match="version"):
        p.decode([bytes((p.PROTOCOL_VERSION + 1, p.Blocked.op)) + frames[0][2:]])


def test_unknown_op_is_refused() -> None:
    unused = next(op for op in range(256) if op not in p._BY_OP)
    with pytest.raises(p.ProtocolError, match=f"unknown op {unused}"):
        p.decode([bytes((p.PROTOCOL_VERSION, unused)) + pickle.dumps((), protocol=5)])


@pytest.mark.parametrize("frames", [
    [],
    [b"\x02\x07"],
    [b"\x02"],
    [b"\x02\x07\x00", pickle.dumps((b"t",))],
    [b"\x02\x07" + pickle.dumps((b"t",)), b"extra"],
], ids=["none", "header-only", "short-header", "long-header-apart", "extra-frame"])
def test_wrong_frame_shape_is_refused(frames: list[bytes]) -> None:
    with pytest.raises(p.ProtocolError):
        p.decode(frames)


@pytest.mark.parametrize(("op", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
def test_truncated_body_is_refused(op: int, cls: type[p.Message]) -> None:
    [frame] = p.encode(sample(cls))
    header, body = frame[:2], frame[2:]
    for cut in (0, 1, len(body) // 2, len(body) - 1):
        with pytest.raises(p.ProtocolError):
            p.decode([header + body[:cut]])


def test_garbage_body_is_refused() -> None:
    with pytest.raises(p.ProtocolError, match="Blocked"):
        p.decode([bytes((p.PROTOCOL_VERSION, p.Blocked.op)) + b"not a pickle at all"])


@pytest.mark.parametrize(("op", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
def test_wrong_field_count_is_refused(op: int, cls: type[p.Message]) -> None:
    values = tuple(getattr(sample(cls), name) for name in names(cls))
    for wrong in (values[:-1], values + (None,)):
        with pytest.raises(p.ProtocolError, match="fields"):
            p.decode(frames_of(cls, wrong))
    with pytest.raises(p.ProtocolError):
        p.decode(frames_of(cls, list(values)))  # a list is not the tuple of fields


@pytest.mark.parametrize(("op", "cls"), MESSAGES, ids=[c.__name__ for _, c in MESSAGES])
def test_wrong_field_type_is_refused(op: int, cls: type[p.Message]) -> None:
    values = [getattr(sample(cls), name) for name in names(cls)]
    for i, allowed in enumerate(cls._types):
        wrong = b"wrong" if str in allowed else "wrong"
        bad = tuple(values[:i] + [wrong] + values[i + 1:])
        with pytest.raises(p.ProtocolError, match=cls.__name__):
            p.decode(frames_of(cls, bad))


@pytest.mark.parametrize("payload", [
    (print,),
    (b"t", ValueError("x")),
    (dataclasses.field,),
], ids=["builtin", "exception", "function"])
def test_pickle_naming_a_global_is_refused(payload: tuple[Any, ...]) -> None:
    frames = [bytes((p.PROTOCOL_VERSION, p.Blocked.op)) + pickle.dumps(payload, protocol=5)]
    with pytest.raises(p.ProtocolError, match="global"):
        p.decode(frames)


def test_global_nested_inside_a_field_is_refused() -> None:
    frames = frames_of(p.Subscribe, ([b"id", {"f": print}], True))
    with pytest.raises(p.ProtocolError, match="global"):
        p.decode(frames)


def test_out_of_band_buffer_in_body_is_refused() -> None:
    buffers: list[pickle.PickleBuffer] = []
    body = pickle.dumps((pickle.PickleBuffer(b"t" * 16),), protocol=5,
                        buffer_callback=buffers.append)
    with pytest.raises(p.ProtocolError):
        p.decode([bytes((p.PROTOCOL_VERSION, p.Blocked.op)) + body])


def test_large_fields_travel_out_of_band_in_frames_of_their_own() -> None:
    msg = p.PutObject(b"o" * 20, b"x" * 200_000, [])
    frames = [bytes(f) for f in p.encode(msg)]  # as a receiver gets them
    assert len(frames) == 3 and frames[0] == bytes((p.PROTOCOL_VERSION, p.PutObject.op))
    assert frames[2] == b"x" * 200_000 and len(frames[1]) < 100
    assert p.decode(frames) == msg
    batch = p.batch([msg, p.Blocked(b"t")])
    frames = [bytes(f) for f in p.encode(batch)]
    assert len(frames) == 3 and p.unbatch(p.decode(frames)) == [msg, p.Blocked(b"t")]
    small = p.encode(p.PutObject(b"o" * 20, b"x", []))
    assert len(small) == 1 and p.decode(small) == p.PutObject(b"o" * 20, b"x", [])


def test_large_fields_received_uncopied_decode_as_views() -> None:
    import zmq

    msg = p.PutObject(b"o" * 20, b"x" * 200_000, [b"c" * 20])
    frames = p.received([zmq.Frame(bytes(f)) for f in p.encode(msg)])
    decoded = p.decode(frames)
    assert type(decoded.data) is memoryview and decoded.data == b"x" * 200_000
    assert type(decoded.object_id) is bytes and decoded.contained == [b"c" * 20]
    with pytest.raises(p.ProtocolError):  # a view stands for bytes only, not for an int
        p._build(p.LeaseLost, (b"lease", memoryview(b"7"), "exited"))


# --- the frame bound (issue 11, item 10) ----------------------------------------------------


@pytest.fixture
def bound(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> Any:
    """A receiving PULL socket of a context bounded at 100 KB, and a sender; the process's
    bound for ``encode`` is restored afterwards."""
    import zmq

    monkeypatch.setattr(p, "_max_frame_bytes", p._max_frame_bytes)
    receiver_context = p.bounded_context(100_000)
    sender_context = zmq.Context()
    pull = receiver_context.socket(zmq.PULL)
    push = sender_context.socket(zmq.PUSH)
    endpoint = f"ipc://{tmp_path}/bound.sock"
    pull.bind(endpoint)
    push.connect(endpoint)
    yield push, pull
    for sock in (push, pull):
        sock.close(linger=0)
    receiver_context.term()
    sender_context.term()


def _all_received(pull: Any, timeout_ms: int = 5000) -> list[p.Message]:
    out = []
    while pull.poll(timeout_ms if not out else 300):
        out.append(p.decode(pull.recv_multipart()))
    return out


def test_encode_refuses_a_frame_over_the_bound_naming_the_message(bound: Any) -> None:
    with pytest.raises(p.MessageTooLarge, match=r"ExportFunction .* 200,0\d\d bytes.*"
                                                r"max_frame_bytes"):
        p.encode(p.ExportFunction(b"f" * 16, "f", b"x" * 200_000))
    with pytest.raises(p.MessageTooLarge, match="TaskDone"):  # inline results, in the body
        p.encode(p.TaskDone(b"t" * 16, 0, [(b"o" * 20, c * 60_000, 0, 60_000, False)
                                           for c in (b"x", b"y")], [], False, b"", 0.0, 0, "", 0.0))
    assert p.encode(p.PutObject(b"o" * 20, b"x" * 90_000, []))  # under it: fine


def test_send_splits_lists_and_batches_into_messages_under_the_bound(bound: Any) -> None:
    push, pull = bound
    locations = [(bytes([i]) * 20, bytes([i]) * 30_000, 0, 30_000, False) for i in range(10)]
    tasks = [p.ExecuteTask(bytes([i]) * 16, b"j", b"f", "f", bytes([i]) * 40_000, [], 1, b"",
                           [], None, 0, b"", {}, b"") for i in range(7)]
    added, released = [i.to_bytes(20, "big") for i in range(5000)], [b"r" * 20] * 3
    p.send(push, p.ObjectsReady(locations))
    p.send(push, p.batch(tasks))
    p.send(push, p.RefsChanged(added, released))
    got = _all_received(pull)
    ready = [m for m in got if isinstance(m, p.ObjectsReady)]
    assert len(ready) > 1 and [loc for m in ready for loc in m.locations] == locations
    sent = [m for m in got if isinstance(m, p.ExecuteTask)]  # a batch of one is its message
    sent += [t for m in got if isinstance(m, p.Batch) for t in p.unbatch(m)]
    assert [t.task_id for t in sent] == [t.task_id for t in tasks]
    refs = [m for m in got if isinstance(m, p.RefsChanged)]
    assert [r for m in refs for r in m.added] == added
    assert [r for m in refs for r in m.released] == released
    assert refs[-1].released  # the added ones first


def test_send_refuses_a_message_it_cannot_split(bound: Any) -> None:
    push, pull = bound
    with pytest.raises(p.MessageTooLarge, match="ObjectsReady"):
        p.send(push, p.ObjectsReady([(b"o" * 20, b"x" * 200_000, 0, 200_000, False)]))
    with pytest.raises(p.MessageTooLarge, match="Batch"):  # one item too big
        p.send(push, p.batch([p.ExportFunction(b"f" * 16, "f" * 150_000, b"")]))


def test_a_frame_over_the_bound_is_refused_before_it_is_read(bound: Any) -> None:
    """The receiver cuts the sender off at the frame's header (ZMQ_MAXMSGSIZE): the frame
    never arrives, and what the sender sends next (on a new connection) does."""
    push, pull = bound
    push.send(b"x" * 10_000_000)
    assert not pull.poll(500)
    push.send_multipart(p.encode(p.Blocked(b"t")))
    assert _all_received(pull) == [p.Blocked(b"t")]
