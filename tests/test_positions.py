"""The intra-position rule (recsysllm/positions.py) against the paper and a reference."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from recsysllm.positions import (
    IntraPositionTracker,
    TokenKind,
    part_a_intra_positions,
    span_intra_positions,
    token_kinds,
)

# The paper's example: x1 x2 x3 = entity e1 (occurrence 0), x4 x5 plain, x6 x7 = e2 (1).
PAPER_UNITS = [0, 0, 0, -1, -1, 1, 1]


def test_paper_example_part_a():
    # Part A after masking e1 and x5: [M] x4 [M] x6 x7 (mask tokens count as plain).
    assert part_a_intra_positions([-1, -1, -1, 1, 1]) == [0, 0, 0, 1, 2]


def test_paper_example_part_b():
    assert span_intra_positions(PAPER_UNITS[0:3]) == [1, 2, 3, 4]  # [S] x1 x2 x3
    assert span_intra_positions(PAPER_UNITS[4:5]) == [1, 2]  # [S] x5


def test_unmasked_paper_sequence_part_a():
    assert part_a_intra_positions(PAPER_UNITS) == [1, 2, 3, 0, 0, 1, 2]


def test_token_kinds_of_paper_sequence():
    p, s, c = TokenKind.PLAIN, TokenKind.ENTITY_START, TokenKind.ENTITY_CONTINUE
    assert token_kinds(PAPER_UNITS) == [s, c, c, p, p, s, c]
    # Two adjacent occurrences: the second starts a new entity.
    assert token_kinds([3, 3, 4]) == [s, c, s]


def test_step_before_start_raises():
    tracker = IntraPositionTracker()
    try:
        tracker.step(TokenKind.PLAIN)
    except RuntimeError as error:
        assert "start()" in str(error)
    else:
        raise AssertionError("step() before start() did not raise")


# ---------------------------------------------------------------- properties


def _units(layout: list[tuple[bool, int]]) -> list[int]:
    """Per-token unit ids from (is_entity, length) runs; entities numbered in order."""
    units, next_entity = [], 0
    for is_entity, length in layout:
        if is_entity:
            units += [next_entity] * length
            next_entity += 1
        else:
            units += [-1] * length
    return units


layouts = st.lists(st.tuples(st.booleans(), st.integers(1, 5)), min_size=0, max_size=12)


def _reference_span_positions(units: list[int]) -> list[int]:
    """Independent statement of DESIGN.md's Part B rule, by groups instead of a state machine.

    Group the span into units (one entity occurrence, or a maximal run of plain
    tokens). The first group shares its count with [sop] (1..len+1); every later
    group counts 1..len.
    """
    groups: list[int] = []  # group lengths
    for i, unit in enumerate(units):
        same = i > 0 and ((unit < 0 and units[i - 1] < 0) or (unit >= 0 and unit == units[i - 1]))
        if same:
            groups[-1] += 1
        else:
            groups.append(1)
    positions = [1]
    for g, length in enumerate(groups):
        first = 2 if g == 0 else 1
        positions += list(range(first, first + length))
    return positions


@given(layouts)
def test_span_positions_match_reference(layout):
    units = _units(layout)
    assert span_intra_positions(units) == _reference_span_positions(units)


@given(layouts)
def test_tracker_one_step_at_a_time_equals_span_positions(layout):
    units = _units(layout)
    tracker = IntraPositionTracker()
    stepped = [tracker.start()] + [tracker.step(kind) for kind in token_kinds(units)]
    assert stepped == span_intra_positions(units)
    # Restarting resets: the same span again gives the same positions.
    again = [tracker.start()] + [tracker.step(kind) for kind in token_kinds(units)]
    assert again == stepped


@given(layouts)
def test_tracker_properties(layout):
    units = _units(layout)
    positions = span_intra_positions(units)
    assert len(positions) == len(units) + 1
    assert positions[0] == 1
    kinds = token_kinds(units)
    for i, kind in enumerate(kinds):
        current, previous = positions[i + 1], positions[i]
        opens = kind is TokenKind.ENTITY_START or (
            kind is TokenKind.PLAIN and i > 0 and kinds[i - 1] is not TokenKind.PLAIN
        )
        # Every token either restarts at 1 (a new unit, not the first one) or adds one.
        assert current == (1 if opens and i > 0 else previous + 1)
    assert all(p >= 1 for p in positions)


@given(st.lists(st.integers(1, 30), max_size=30))
def test_plain_text_keeps_glm_numbering(length_list):
    for length in length_list:
        assert span_intra_positions([-1] * length) == list(range(1, length + 2))
        assert part_a_intra_positions([-1] * length) == [0] * length


@given(layouts)
def test_part_a_numbers_each_entity_from_one(layout):
    units = _units(layout)
    positions = part_a_intra_positions(units)
    offset = 0
    for is_entity, length in layout:
        expected = list(range(1, length + 1)) if is_entity else [0] * length
        assert positions[offset : offset + length] == expected
        offset += length
