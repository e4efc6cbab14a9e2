"""The one implementation of RecSysLLM's intra-position rule (DESIGN.md section 4).

Every token carries two positions: *inter* (GLM's position: where in Part A it
lives) and *intra* (GLM's block position, made entity-aware). The collator
assigns intra-positions from ground-truth entity spans; generation assigns them
on the fly from the entity trie. Both call this module, so training and
inference can never disagree.

Part A: intra = 0 for plain tokens and mask tokens; the tokens of an entity
left unmasked are numbered 1..len.

Part B, one span ``[sop] + span``: [sop] has intra 1 and every following token
adds one, except that intra restarts at 1 on the first token of an entity that
is not the first unit of the span, and on the first plain token after an entity.
A run of plain tokens is one unit, so free text keeps GLM's 1..n.

Example (the paper's): tokens x1 x2 x3 form entity e1, x4 x5 are plain, x6 x7 form e2.

>>> part_a_intra_positions([-1, -1, -1, 1, 1])  # [M] x4 [M] x6 x7
[0, 0, 0, 1, 2]
>>> span_intra_positions([0, 0, 0])  # [S] x1 x2 x3
[1, 2, 3, 4]
>>> span_intra_positions([-1, 1, 1, -1])  # [S] x5 x6 x7 x8 (x8 plain after e2)
[1, 2, 1, 2, 1]
"""

from __future__ import annotations

import enum
from collections.abc import Sequence


class TokenKind(enum.Enum):
    """What a token is, relative to the entities around it."""

    PLAIN = "plain"
    ENTITY_START = "entity_start"
    ENTITY_CONTINUE = "entity_continue"


class IntraPositionTracker:
    """Assigns Part B intra-positions one token at a time.

    Call :meth:`start` for the span's [sop] token, then :meth:`step` for each
    following input token with its :class:`TokenKind`.

    Example:
        >>> t = IntraPositionTracker()
        >>> [t.start(), t.step(TokenKind.PLAIN), t.step(TokenKind.ENTITY_START),
        ...  t.step(TokenKind.ENTITY_CONTINUE), t.step(TokenKind.PLAIN)]
        [1, 2, 1, 2, 1]
    """

    def __init__(self) -> None:
        self._position = 0
        self._previous: TokenKind | None = None  # None: right after [sop]
        self._started = False

    def start(self) -> int:
        """Intra-position of the span's [sop] token (always 1); resets the tracker."""
        self._position = 1
        self._previous = None
        self._started = True
        return self._position

    def step(self, kind: TokenKind) -> int:
        """Intra-position of the next token of the span."""
        if not self._started:
            raise RuntimeError("IntraPositionTracker.step() called before start()")
        self._position = _next_intra(self._position, self._previous, kind)
        self._previous = kind
        return self._position


_PLAIN, _START, _CONTINUE = TokenKind.PLAIN, TokenKind.ENTITY_START, TokenKind.ENTITY_CONTINUE


def _next_intra(position: int, previous: TokenKind | None, kind: TokenKind) -> int:
    """The rule itself: intra-position of a Part B token after ``previous`` (None: [sop])."""
    # A token opens a new unit when it starts an entity or is plain text after an
    # entity; a run of plain tokens is one unit. The token right after [sop] always
    # belongs to the span's first unit, which keeps counting from [sop].
    if previous is None:
        return position + 1
    if kind is _START or (kind is _PLAIN and previous is not _PLAIN):
        return 1
    return position + 1


def token_kinds(unit_ids: Sequence[int]) -> list[TokenKind]:
    """Token kinds from per-token unit ids (entity occurrence index, or -1 for plain)."""
    kinds = []
    previous = -1
    for unit in unit_ids:
        if unit < 0:
            kinds.append(TokenKind.PLAIN)
        elif unit == previous:
            kinds.append(TokenKind.ENTITY_CONTINUE)
        else:
            kinds.append(TokenKind.ENTITY_START)
        previous = unit
    return kinds


def span_intra_positions(unit_ids: Sequence[int]) -> list[int]:
    """Intra-positions of ``[sop] + span`` for a span with the given unit ids."""
    # Hot path of the collator: same as feeding token_kinds() to a tracker, without
    # building the intermediate list.
    positions = [1]
    position, previous, previous_unit = 1, None, -1
    for unit in unit_ids:
        if unit < 0:
            kind = _PLAIN
        elif unit == previous_unit:
            kind = _CONTINUE
        else:
            kind = _START
        position = _next_intra(position, previous, kind)
        positions.append(position)
        previous, previous_unit = kind, unit
    return positions


def part_a_intra_positions(unit_ids: Sequence[int]) -> list[int]:
    """Intra-positions of Part A tokens.

    Args:
        unit_ids: per Part A token, the entity occurrence index of an unmasked
            entity token, or -1 for plain text, mask tokens and special tokens.
    """
    positions = []
    previous, count = -1, 0
    for unit in unit_ids:
        if unit < 0:
            count = 0
            positions.append(0)
        else:
            count = count + 1 if unit == previous else 1
            positions.append(count)
        previous = unit
    return positions
