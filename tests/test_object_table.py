"""Pure tests of the node's object table and reference counts over a real Allocator."""

from __future__ import annotations

import pytest

from zray.ids import put_object_id, return_object_id
from zray.node.object_table import Freed, ObjectTable, ObjState
from zray.objects.store import PAGE, Allocator

pytestmark = pytest.mark.timeout(30)

JOB = b"job1"
TASK = b"t" * 16
DRIVER, WORKER, OTHER = b"driver", b"worker", b"other"


def table(capacity: int = 64 * PAGE) -> ObjectTable:
    return ObjectTable(Allocator(capacity))


def ret(i: int) -> bytes:
    return return_object_id(TASK, i)


def put(i: int) -> bytes:
    return put_object_id(TASK, i)


def freed_ids(objects: ObjectTable) -> list[bytes]:
    return [f.object_id for f in objects.freed]


# --- lifecycle -------------------------------------------------------------------------


def test_expect_then_put_inline() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    entry = objects.get(ret(0))
    assert entry is not None and entry.state is ObjState.PENDING
    assert entry.holders == {DRIVER} and not objects.is_ready(ret(0))

    objects.put_inline(ret(0), JOB, b"value", [], WORKER)
    assert objects.is_ready(ret(0)) and objects.became_ready == [ret(0)]
    assert entry.location() == (ret(0), b"value", -1, 5, False)
    assert entry.holders == {DRIVER}  # the producer does not become a holder
    assert objects.bytes_in_store() == 0


def test_put_inline_of_a_new_object_makes_its_putter_the_holder() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"v", [], DRIVER)
    entry = objects.get(put(0))
    assert entry is not None and entry.state is ObjState.READY and entry.holders == {DRIVER}


def test_expect_create_seal() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    offset = objects.create(ret(0), JOB, 5000, WORKER)
    assert offset == 0
    entry = objects.get(ret(0))
    assert entry is not None and entry.state is ObjState.CREATING and entry.writer == WORKER
    assert objects.bytes_in_store() == 2 * PAGE
    assert not objects.is_ready(ret(0))

    objects.seal(ret(0), [], is_error=False)
    assert entry.state is ObjState.READY and objects.became_ready == [ret(0)]
    assert entry.location() == (ret(0), None, 0, 5000, False)


def test_second_value_of_a_ready_object_is_ignored() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"first", [], DRIVER)
    objects.put_inline(put(0), JOB, b"second", [], DRIVER)
    entry = objects.get(put(0))
    assert entry is not None and entry.data == b"first"
    assert objects.became_ready == [put(0)]


def test_create_returns_minus_one_when_full_and_minus_two_when_ready() -> None:
    objects = table(capacity=2 * PAGE)
    assert objects.create(put(0), JOB, 3 * PAGE, DRIVER) == -1
    assert objects.get(put(0)) is None  # nothing half-made is left behind
    assert objects.bytes_in_store() == 0

    assert objects.create(put(1), JOB, PAGE, DRIVER) == 0
    objects.seal(put(1), [], is_error=False)
    assert objects.create(put(1), JOB, PAGE, DRIVER) == -2
    assert objects.bytes_in_store() == PAGE


def test_create_again_after_writer_died_mid_write_frees_the_first_block() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.create(ret(0), JOB, PAGE, WORKER)
    objects.create(ret(0), JOB, PAGE, OTHER)
    entry = objects.get(ret(0))
    assert entry is not None and entry.writer == OTHER
    assert objects.bytes_in_store() == PAGE


def test_inline_error_replaces_a_half_written_store_block() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.create(ret(0), JOB, PAGE, WORKER)
    objects.put_inline(ret(0), JOB, b"error", [], DRIVER, is_error=True)
    entry = objects.get(ret(0))
    assert entry is not None and entry.state is ObjState.READY
    assert entry.location() == (ret(0), b"error", -1, 5, True)
    assert objects.bytes_in_store() == 0


def test_seal_of_an_unknown_object_is_ignored() -> None:
    objects = table()
    objects.seal(put(0), [], is_error=False)
    assert objects.get(put(0)) is None and objects.became_ready == []


def test_illegal_object_transition_raises_and_changes_nothing() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"v", [], DRIVER)
    entry = objects.get(put(0))
    assert entry is not None
    for state in ObjState:
        with pytest.raises(ValueError):
            entry.move(state)
        assert entry.state is ObjState.READY


# --- subscriptions ---------------------------------------------------------------------


def test_subscribers_are_notified_once_ready() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    assert objects.subscribe(DRIVER, ret(0), for_get=True)
    assert objects.subscribe(OTHER, ret(0), for_get=False)
    assert objects.notify == []

    objects.put_inline(ret(0), JOB, b"v", [], WORKER)
    location = (ret(0), b"v", -1, 1, False)
    assert sorted(objects.notify) == sorted([(DRIVER, location), (OTHER, location)])
    objects.notify.clear()
    objects.put_inline(ret(0), JOB, b"v", [], WORKER)
    assert objects.notify == []  # notified once, not per value


def test_subscribe_to_a_ready_object_notifies_at_once() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"v", [], DRIVER)
    assert objects.subscribe(OTHER, put(0), for_get=True)
    assert objects.notify == [(OTHER, (put(0), b"v", -1, 1, False))]


def test_subscribe_to_an_unknown_object_says_so() -> None:
    objects = table()
    assert not objects.subscribe(DRIVER, put(0), for_get=True)
    assert objects.notify == []


def test_released_subscriber_is_not_notified() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.subscribe(OTHER, ret(0), for_get=False)
    objects.release(OTHER, ret(0))
    objects.put_inline(ret(0), JOB, b"v", [], WORKER)
    assert objects.notify == []


# --- freeing ---------------------------------------------------------------------------


def test_release_of_the_last_holder_frees_the_store_block() -> None:
    objects = table()
    objects.create(put(0), JOB, 3 * PAGE, DRIVER)
    objects.seal(put(0), [], is_error=False)
    objects.add_holder(OTHER, put(0))
    assert objects.bytes_in_store() == 3 * PAGE

    objects.release(DRIVER, put(0))
    assert objects.is_ready(put(0)) and objects.freed == []
    objects.release(OTHER, put(0))
    assert objects.get(put(0)) is None
    assert objects.allocator.in_use == 0
    assert objects.freed == [Freed(put(0), JOB, None, True)]
    objects.release(OTHER, put(0))  # a late release is harmless
    assert len(objects.freed) == 1


def test_pins_keep_an_object_alive_and_unpinning_frees_it() -> None:
    objects = table()
    objects.create(put(0), JOB, PAGE, DRIVER)
    objects.seal(put(0), [], is_error=False)
    assert objects.pin(put(0))  # a queued task takes it as an argument
    assert objects.pin(put(0))  # and another one
    assert not objects.pin(put(9))  # unknown objects cannot be pinned
    objects.release(DRIVER, put(0))
    assert objects.is_ready(put(0))
    objects.unpin(put(0))
    assert objects.is_ready(put(0))
    objects.unpin(put(0))
    assert objects.get(put(0)) is None and objects.allocator.in_use == 0
    assert freed_ids(objects) == [put(0)]


def test_contained_refs_are_pinned_and_unpinned_in_a_chain() -> None:
    objects = table()
    inner, middle, outer = put(0), put(1), put(2)
    objects.create(inner, JOB, PAGE, DRIVER)
    objects.seal(inner, [], is_error=False)
    objects.put_inline(middle, JOB, b"holds inner", [inner], DRIVER)
    objects.create(outer, JOB, PAGE, DRIVER)
    objects.seal(outer, [middle, put(99)], is_error=False)  # put(99) does not exist
    outer_entry = objects.get(outer)
    assert outer_entry is not None and outer_entry.contained == [middle]

    objects.release(DRIVER, inner)
    objects.release(DRIVER, middle)
    assert objects.is_ready(inner) and objects.is_ready(middle) and objects.freed == []

    objects.release(DRIVER, outer)
    assert freed_ids(objects) == [outer, middle, inner]
    assert objects.entries == {} and objects.allocator.in_use == 0


def test_contained_ref_with_its_own_holder_outlives_its_container() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"inner", [], OTHER)
    objects.put_inline(put(1), JOB, b"outer", [put(0)], DRIVER)
    objects.release(DRIVER, put(1))
    assert freed_ids(objects) == [put(1)]
    assert objects.is_ready(put(0))
    objects.release(OTHER, put(0))
    assert freed_ids(objects) == [put(1), put(0)]


def test_pending_object_is_not_freed_until_it_is_made() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.release(DRIVER, ret(0))
    assert objects.get(ret(0)) is not None and objects.freed == []
    objects.put_inline(ret(0), JOB, b"v", [], WORKER)
    assert objects.get(ret(0)) is None and freed_ids(objects) == [ret(0)]


def test_creating_object_is_not_freed_under_its_writer() -> None:
    objects = table()
    objects.create(put(0), JOB, PAGE, DRIVER)
    objects.release(DRIVER, put(0))
    entry = objects.get(put(0))
    assert entry is not None and entry.state is ObjState.CREATING
    assert objects.allocator.in_use == PAGE  # the writer is still writing into it
    objects.seal(put(0), [], is_error=False)
    assert objects.get(put(0)) is None and objects.allocator.in_use == 0
    assert freed_ids(objects) == [put(0)]


def test_release_all_of_a_dead_client() -> None:
    objects = table()
    objects.create(put(0), JOB, PAGE, DRIVER)  # sealed, held only by the driver
    objects.seal(put(0), [], is_error=False)
    objects.create(put(1), JOB, 2 * PAGE, DRIVER)  # never sealed
    objects.put_inline(put(2), JOB, b"shared", [], DRIVER)
    objects.add_holder(OTHER, put(2))
    objects.create(put(3), JOB, PAGE, OTHER)  # someone else's put being written
    objects.subscribe(DRIVER, put(3), for_get=True)
    assert objects.allocator.in_use == 4 * PAGE

    objects.release_all(DRIVER)
    assert objects.get(put(0)) is None
    assert objects.get(put(1)) is None  # its unsealed put is dropped, block and all
    assert objects.is_ready(put(2))
    entry = objects.get(put(3))
    assert entry is not None and entry.state is ObjState.CREATING
    assert DRIVER not in entry.subscribers
    assert freed_ids(objects) == [put(0)]
    assert objects.allocator.in_use == PAGE

    objects.seal(put(3), [], is_error=False)
    assert objects.notify == []  # the dead driver is not told
    objects.release_all(OTHER)
    assert objects.entries == {} and objects.allocator.in_use == 0


def test_release_all_keeps_a_task_result_its_dead_writer_left_half_made() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.create(ret(0), JOB, PAGE, WORKER)
    objects.release_all(WORKER)
    entry = objects.get(ret(0))
    assert entry is not None and entry.state is ObjState.CREATING
    # the agent then stores the crash error in its place, which frees the half-made block
    objects.put_inline(ret(0), JOB, b"crashed", [], DRIVER, is_error=True)
    assert objects.allocator.in_use == 0 and objects.is_ready(ret(0))


# --- unhandled errors ------------------------------------------------------------------


def test_error_nobody_read_is_reported_when_freed() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"boom", [], DRIVER, is_error=True)
    objects.subscribe(DRIVER, put(0), for_get=False)  # wait() does not read the value
    objects.release(DRIVER, put(0))
    assert objects.freed == [Freed(put(0), JOB, b"boom", True)]


def test_error_read_by_get_is_not_reported() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"boom", [], DRIVER, is_error=True)
    objects.subscribe(DRIVER, put(0), for_get=True)
    objects.release(DRIVER, put(0))
    assert objects.freed == [Freed(put(0), JOB, None, True)]


def test_error_subscribed_for_get_before_it_exists_is_not_reported() -> None:
    objects = table()
    objects.expect(ret(0), JOB, DRIVER)
    objects.subscribe(DRIVER, ret(0), for_get=True)
    objects.put_inline(ret(0), JOB, b"boom", [], WORKER, is_error=True)
    objects.release(DRIVER, ret(0))
    assert objects.freed == [Freed(ret(0), JOB, None, True)]


def test_error_marked_delivered_is_not_reported() -> None:
    objects = table()
    objects.put_inline(ret(0), JOB, b"boom", [], DRIVER, is_error=True)
    objects.mark_delivered(ret(0))  # e.g. it failed a task that took it as an argument
    objects.release(DRIVER, ret(0))
    assert objects.freed == [Freed(ret(0), JOB, None, True)]


def test_the_gcs_lists_store_objects_and_errors_not_small_values() -> None:
    objects = table()
    objects.put_inline(put(0), JOB, b"small", [], DRIVER)
    objects.put_inline(put(1), JOB, b"boom", [], DRIVER, is_error=True)
    objects.create(put(2), JOB, 3 * PAGE, DRIVER)
    objects.seal(put(2), [], False)
    assert [objects.get(put(i)).listed for i in range(3)] == [False, True, True]  # type: ignore[union-attr]
    objects.release(DRIVER, put(0))
    assert objects.freed[-1].listed is False
