"""ReadRange item selection (ASHRAE 135 clause 15.8.1.1.4): which items of a list a range names, without any stack.

A list is seen as its length, and for a log buffer the sequence number and the time of each record, oldest first.
Every function returns a `Selection`: the half-open slice [start, stop) of the list that matches, empty when
nothing matches. `fit` then cuts a selection to the number of items an answer can carry and sets the result flags:
first-item (the first item returned is the first of the list), last-item (the last returned is the last of the
list), more-items (more items matched than were returned).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: sequence numbers run 1..2^32-1 and wrap to 1 (clause 12.25.16, Total_Record_Count)
SEQUENCE_MAX = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class Selection:
    """The items a range matches: list[start:stop]; `backwards` when the count was negative."""

    start: int
    stop: int
    backwards: bool = False

    def __len__(self) -> int:
        return max(0, self.stop - self.start)


@dataclass(frozen=True, slots=True)
class Result:
    """The items an answer carries (list[start:stop]) and its result flags."""

    start: int
    stop: int
    first_item: bool
    last_item: bool
    more_items: bool

    @property
    def count(self) -> int:
        """Item count."""
        return max(0, self.stop - self.start)


NOTHING = Selection(0, 0)


def _around(index: int, count: int, length: int) -> Selection:
    """Items from `index` (0-based) onwards (count > 0) or back to it (count < 0), clipped to the list."""
    if count > 0:
        return Selection(index, min(length, index + count))
    return Selection(max(0, index + count + 1), index + 1, backwards=True)


def by_position(length: int, reference_index: int, count: int) -> Selection:
    """Clause 15.8.1.1.4.1: index 1 is the first (oldest) item; an index outside the list matches nothing."""
    if count == 0:
        raise ValueError("count must not be zero")
    if not 1 <= reference_index <= length:
        return NOTHING
    return _around(reference_index - 1, count, length)


def by_sequence_number(sequences: Sequence[int], reference: int, count: int) -> Selection:
    """Clause 15.8.1.1.4.2: the records whose sequence numbers lie from the reference to reference + count - 1 (count
    > 0) or from reference + count + 1 to the reference (count < 0), as far as the buffer holds them; the sequence
    numbers of a buffer are consecutive modulo the wrap. bacnet-stack's reference server selects the same way."""
    if count == 0:
        raise ValueError("count must not be zero")
    if not sequences:
        return NOTHING
    offset = (reference - sequences[0]) % SEQUENCE_MAX
    if offset > SEQUENCE_MAX // 2:  # a reference before the oldest record
        offset -= SEQUENCE_MAX
    lo, hi = (offset, offset + count - 1) if count > 0 else (offset + count + 1, offset)
    lo, hi = max(lo, 0), min(hi, len(sequences) - 1)
    if lo > hi:
        return NOTHING
    return Selection(lo, hi + 1, backwards=count < 0)


def by_time(times: Sequence[float], reference: float, count: int) -> Selection:
    """Clause 15.8.1.1.4.3: count > 0 starts at the first record newer than the reference time; count < 0 ends at
    the last record older than it (a record at exactly the reference time is in neither)."""
    if count == 0:
        raise ValueError("count must not be zero")
    if count > 0:
        index = next((i for i, t in enumerate(times) if t > reference), None)
    else:
        index = next((i for i in range(len(times) - 1, -1, -1) if times[i] < reference), None)
    if index is None:
        return NOTHING
    return _around(index, count, len(times))


def whole(length: int) -> Selection:
    """No range given: every item of the list."""
    return Selection(0, length)


def fit(selection: Selection, length: int, room: int) -> Result:
    """Cut a selection to at most `room` items: forwards the items nearest the reference are kept (the first ones),
    backwards too (the last ones); the flags describe what is returned."""
    start, stop = selection.start, selection.stop
    more = len(selection) > room
    if more:
        if selection.backwards:
            start = stop - room
        else:
            stop = start + room
    if stop <= start:
        return Result(start, start, False, False, more)
    return Result(start, stop, start == 0, stop == length, more)


def next_sequence(seq: int) -> int:
    """The sequence number after `seq` (2^32-1 is followed by 1)."""
    return 1 if seq >= SEQUENCE_MAX else seq + 1
