"""The spiller's handshake with the processes that map a block: the agent's side over a real
table, a real Allocator, an arena file mapped as the agent maps its store, and real spill
files in a temporary folder; a process's side over its LocalObjects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from zray.ids import put_object_id
from zray.node.object_table import ObjectTable
from zray.node.spilling import Spiller
from zray.objects.local import LocalObjects
from zray.objects.refs import RefCounter
from zray.objects.store import PAGE, Allocator, Mapping, create_arena

pytestmark = pytest.mark.timeout(30)

JOB = b"job1"
DRIVER = b"driver"


class Store:
    """A table of two one-page blocks, full, both held by the driver."""

    def __init__(self, directory: Path) -> None:
        self.table = ObjectTable(Allocator(2 * PAGE))
        create_arena(str(directory / "arena"), 2 * PAGE)
        self.mapping = Mapping(str(directory / "arena"), 2 * PAGE)
        self.memory = self.mapping.view
        self.asks: list[tuple[bytes, list[bytes]]] = []
        self.spiller = Spiller(
            self.table, lambda: self.memory, str(directory / "spill"), 1 << 30,
            lambda client, ids: self.asks.append((client, ids)),
            lambda client: True, lambda entry: None, lambda object_id: False)
        self.ids = [put_object_id(b"t" * 16, i) for i in range(2)]
        for i, object_id in enumerate(self.ids):
            offset = self.table.create(object_id, JOB, PAGE, DRIVER)
            self.memory[offset : offset + PAGE] = bytes([i + 1]) * PAGE
            self.table.seal(object_id, [], False)
            self.table.subscribe(DRIVER, object_id, for_get=True)  # (it wrote it: told)
        self.table.notify.clear()

    def squeeze(self) -> bytes:
        """A new object needs a block: the least recently used one is asked for."""
        assert self.spiller.need(PAGE, lambda: None)
        assert self.asks == [(DRIVER, [self.ids[0]])]
        return self.ids[0]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path)
    yield store
    store.mapping.close()


def test_a_process_asking_for_a_block_on_its_way_out_is_not_told_the_old_place(
        store: Store) -> None:
    """The driver's get for an object crosses the agent's ask to let go of its block: told
    the old place, it would drop it (its answer was sent already) and wait for ever. It is
    told nothing until the object is on disk, and then it is read back for it."""
    leaving = store.squeeze()
    assert store.table.subscribe(DRIVER, leaving, for_get=True)
    assert store.table.notify == []  # (before: the block about to be freed)

    assert store.spiller.on_released(DRIVER, [leaving], [])  # the answer to the ask
    entry = store.table.get(leaving)
    assert entry is not None and entry.on_disk
    assert store.table.to_restore == [leaving]  # someone waits for it: read back
    store.table.to_restore.clear()
    store.spiller.retry_waiting()  # (the new object takes its block)
    offset = store.table.allocate(PAGE)
    assert offset is not None
    store.table.allocator.free(offset)
    store.spiller.restore(leaving)
    assert [(client, location[0]) for client, location in store.table.notify] == [
        (DRIVER, leaving)]
    place = store.table.notify[0][1][2]
    assert store.memory[place : place + PAGE] == b"\x01" * PAGE


def test_a_block_that_stays_tells_who_asked_meanwhile(store: Store) -> None:
    """The driver still maps it (a view): the move ends, and the get that waited is told
    its place, which stays valid."""
    leaving = store.squeeze()
    store.table.subscribe(DRIVER, leaving, for_get=True)
    assert store.spiller.on_released(DRIVER, [], [leaving])
    entry = store.table.get(leaving)
    assert entry is not None and not entry.on_disk and not entry.leaving
    assert store.table.notify == [(DRIVER, entry.location())]


def test_a_get_whose_request_crossed_the_ask_is_still_answered() -> None:
    """The driver asks for an object it had let go, while the agent asks it to let go of
    the block: its answer must not drop its own request, which the agent answers with the
    object read back."""
    objects = LocalObjects(RefCounter())
    object_id = put_object_id(b"t" * 16, 0)
    waiter, _, to_subscribe = objects.start_wait([object_id], 1)
    assert waiter is not None and to_subscribe == [object_id]
    assert objects.release_blocks([object_id], lambda _: False) == ([object_id], [])
    objects.file([(object_id, None, PAGE, PAGE, False)])  # (read back, at a new place)
    assert waiter.event.wait(0) and objects.get_location(object_id) is not None
