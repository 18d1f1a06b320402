"""Pure tests of the object store's allocator: page-aligned first fit over [0, capacity)."""

from __future__ import annotations

import itertools
import random

import pytest

from zray.objects.store import PAGE, Allocator

pytestmark = pytest.mark.timeout(30)


def rounded(size: int) -> int:
    return max(PAGE, -(-size // PAGE) * PAGE)


def take(alloc: Allocator, size: int) -> int:
    offset = alloc.allocate(size)
    assert offset is not None, f"no room for {size} bytes"
    return offset


def test_capacity_rounds_down_to_whole_pages() -> None:
    assert Allocator(10 * PAGE + 123).capacity == 10 * PAGE
    assert Allocator(PAGE - 1).allocate(1) is None


@pytest.mark.parametrize("size", [0, 1, PAGE - 1, PAGE, PAGE + 1, 3 * PAGE + 7])
def test_blocks_are_whole_pages(size: int) -> None:
    alloc = Allocator(16 * PAGE)
    first = alloc.allocate(size)
    second = alloc.allocate(1)
    assert first == 0
    assert second == rounded(size)
    assert alloc.in_use == rounded(size) + PAGE


def test_freed_low_block_is_reused_before_fresh_high_space() -> None:
    alloc = Allocator(16 * PAGE)
    low, mid, high = (take(alloc, PAGE) for _ in range(3))
    assert (low, mid, high) == (0, PAGE, 2 * PAGE)
    alloc.free(low)
    assert alloc.allocate(PAGE) == 0
    alloc.free(mid)
    assert alloc.allocate(2 * PAGE) == 3 * PAGE  # the gap at PAGE is too small
    assert alloc.allocate(PAGE) == PAGE  # but the next one-page block fits it


def test_full_block_then_nothing_fits() -> None:
    alloc = Allocator(4 * PAGE)
    assert alloc.allocate(4 * PAGE) == 0
    assert alloc.in_use == 4 * PAGE and alloc.largest_free() == 0
    assert alloc.allocate(1) is None
    alloc.free(0)
    assert alloc.in_use == 0 and alloc.largest_free() == 4 * PAGE


def test_too_big_returns_none_and_changes_nothing() -> None:
    alloc = Allocator(4 * PAGE)
    alloc.allocate(PAGE)
    assert alloc.allocate(4 * PAGE) is None
    assert alloc.in_use == PAGE
    assert alloc.allocate(3 * PAGE) == PAGE


@pytest.mark.parametrize("order", list(itertools.permutations(range(4))))
def test_frees_in_any_order_coalesce_back_to_full_capacity(order: tuple[int, ...]) -> None:
    alloc = Allocator(4 * PAGE)
    offsets = [take(alloc, PAGE) for _ in range(4)]
    assert offsets == [0, PAGE, 2 * PAGE, 3 * PAGE]
    for i in order:
        alloc.free(offsets[i])
    assert alloc.in_use == 0
    assert alloc.largest_free() == 4 * PAGE
    assert alloc.allocate(4 * PAGE) == 0


def test_free_merges_with_both_neighbours() -> None:
    alloc = Allocator(5 * PAGE)
    a, b, c, _ = (take(alloc, PAGE) for _ in range(4))
    alloc.free(a)
    alloc.free(c)
    assert alloc.largest_free() == PAGE
    alloc.free(b)  # joins the gap below and the gap above
    assert alloc.largest_free() == 3 * PAGE
    assert alloc.allocate(3 * PAGE) == 0


def test_double_free_raises_key_error() -> None:
    alloc = Allocator(4 * PAGE)
    offset = take(alloc, PAGE)
    alloc.free(offset)
    with pytest.raises(KeyError):
        alloc.free(offset)
    with pytest.raises(KeyError):
        alloc.free(PAGE)  # never allocated
    assert alloc.in_use == 0
    assert alloc.allocate(4 * PAGE) == 0


def _first_fit(live: dict[int, int], capacity: int, need: int) -> int | None:
    """The lowest offset of a gap of ``need`` bytes between the live blocks (the model)."""
    cursor = 0
    for start in sorted(live):
        if start - cursor >= need:
            return cursor
        cursor = start + live[start]
    return cursor if capacity - cursor >= need else None


@pytest.mark.parametrize("seed", range(8))
def test_random_allocations_and_frees_match_a_first_fit_model(seed: int) -> None:
    rng = random.Random(seed)
    capacity = 64 * PAGE
    alloc = Allocator(capacity)
    live: dict[int, int] = {}
    for _ in range(600):
        if live and rng.random() < 0.45:
            victim = rng.choice(sorted(live))
            alloc.free(victim)
            del live[victim]
        else:
            size = rng.choice([0, 1, PAGE, rng.randrange(1, 9 * PAGE)])
            need = rounded(size)
            expected = _first_fit(live, capacity, need)
            offset = alloc.allocate(size)
            assert offset == expected
            if offset is not None:
                live[offset] = need
        spans = sorted(live.items())
        for (start, size), (next_start, _) in itertools.pairwise(spans):
            assert start + size <= next_start, "blocks overlap"
        assert all(start % PAGE == 0 and start + size <= capacity for start, size in spans)
        assert alloc.in_use == sum(live.values())
    for offset in list(live):
        alloc.free(offset)
    assert alloc.in_use == 0
    assert alloc.allocate(capacity) == 0
