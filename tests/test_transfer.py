"""A node's pulls (zray/node/transfer.py), alone: a real ObjectTable, the wire recorded."""

from __future__ import annotations

import time

from zray import protocol as p
from zray.ids import return_object_id
from zray.node.object_table import ObjectTable, ObjState
from zray.node.transfer import RETRY_S, Transfers
from zray.objects.store import Allocator

OWNER, MAKER = b"owner-node", b"maker-node"
X = return_object_id(b"t" * 16, 0)


def pulling(gone: set[bytes]) -> tuple[ObjectTable, Transfers, list[tuple[bytes, p.Message]]]:
    """A node that pulls X, an argument its owner's node lent it; ``gone``: the nodes it
    has seen leave (sends to them fail)."""
    table = ObjectTable(Allocator(1 << 20))
    sent: list[tuple[bytes, p.Message]] = []

    def send(node: bytes, msg: p.Message) -> bool:
        if node in gone:
            return False
        sent.append((node, msg))
        return True

    transfers = Transfers(table, lambda: memoryview(bytearray(1 << 20)), send,
                          lambda identity, msg: None, inline_max=1024,
                          make_room=lambda size, retry: False,
                          read_spilled=lambda object_id, start, size: b"")
    table.elsewhere(X, OWNER, b"job")
    assert table.subscribe(b"worker", X, for_get=True)
    transfers.start()
    assert sent == [(OWNER, p.PullObject(X, 0, transfers.chunk))]
    return table, transfers, sent


def test_sent_on_to_a_node_gone_it_asks_its_home_again_instead_of_failing() -> None:
    """Regression (the 10-minute chaos run): the owner's node, not yet aware that the
    object's maker died, sent the pull on to it; the puller, aware, failed the task's
    argument with ObjectLostError. It asks the owner's node again, which rebuilds it."""
    table, transfers, sent = pulling(gone={MAKER})
    transfers.on_chunk(OWNER, p.ObjectChunk(X, 0, 0, b"", False, [], "", MAKER))
    entry = table.get(X)
    assert entry is not None and entry.state is ObjState.REMOTE and not entry.is_error
    transfers.tick()
    assert len(sent) == 1  # (not at once: the owner's node needs a moment to see it)
    time.sleep(RETRY_S)
    transfers.tick()
    assert sent[1:] == [(OWNER, p.PullObject(X, 0, transfers.chunk))]


def test_sent_on_to_a_node_alive_it_pulls_from_there() -> None:
    table, transfers, sent = pulling(gone=set())
    transfers.on_chunk(OWNER, p.ObjectChunk(X, 0, 0, b"", False, [], "", MAKER))
    assert sent[1:] == [(MAKER, p.PullObject(X, 0, transfers.chunk))]
    transfers.on_chunk(MAKER, p.ObjectChunk(X, 0, 3, b"abc", False, [], "", b""))
    entry = table.get(X)
    assert entry is not None and entry.state is ObjState.READY and entry.data == b"abc"
