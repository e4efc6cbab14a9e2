"""Segment tokenization over any backbone's tokenizer: entity units, sentences, answer span.

Segment tokenization (DESIGN.md section 2): an Example is tokenized segment by segment,
so every entity boundary is a token boundary. Every entity is encoded as ``" " + name``
(the leading-space convention) and a text segment right before an entity loses one
trailing space, so an entity's ids are the same wherever it appears. Text segments are
further cut at sentence ends (``(?<=[.!?])\\s+``, the whitespace staying with the next
sentence) so sentence boundaries are token boundaries too.

Every backbone family's tokenizer (``recsysllm.modeling.<family>``) inherits
:class:`SegmentTokenizer` and supplies ``encode(text)``; :func:`load_tokenizer` reads a
directory through the family that owns its layout (:mod:`recsysllm.modeling.families`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from recsysllm.schema import Example, Segment, TokenizedExample

SENTENCE_BREAK = re.compile(r"(?<=[.!?])\s+")
_SENTENCE_END = (".", "!", "?")
_PIECE_CACHE_SIZE = 100_000


class SegmentTokenizer:
    """The segment rules every backbone tokenizer shares.

    A subclass provides ``encode(text) -> list[int]`` (no special tokens added, none
    recognised in the text) and an ``_entity_cache`` dict.
    """

    _entity_cache: dict[str, tuple[int, ...]]

    def encode_entity(self, name: str) -> tuple[int, ...]:
        """Ids of one entity: ``encode(" " + name)``, cached.

        Raises:
            ValueError: empty name, a name starting with whitespace (the tokenizer adds
                the one leading space), or a name that encodes to no tokens.
        """
        cached = self._entity_cache.get(name)
        if cached is not None:
            return cached
        if not name:
            raise ValueError("entity name is empty")
        if name[0].isspace():
            raise ValueError(
                f"entity name {name!r} starts with whitespace; names carry no leading space "
                "(the tokenizer adds one)"
            )
        ids = tuple(self.encode(" " + name))
        if not ids:
            raise ValueError(f"entity name {name!r} encodes to no tokens")
        self._entity_cache[name] = ids
        return ids

    # ------------------------------------------------------------------ segments

    def tokenize_segments(self, segments: Sequence[Segment]) -> tuple[list[int], list[int]]:
        """Token ids and unit ids of a segment list.

        Unit ids: per token, the entity occurrence index (0, 1, 2, ... in order of
        appearance) or -1 for plain text. The ids are the same as
        ``tokenize_example(...).input_ids`` (text is cut at sentence ends in both).

        Example:
            >>> ids, units = tok.tokenize_segments(  # doctest: +SKIP
            ...     [Segment("I watched "), Segment("Heat", entity="Heat"), Segment(".")])
            >>> units  # doctest: +SKIP
            [-1, -1, 0, -1]
        """
        ids, unit_ids, _, _ = self._tokenize(segments, "segments")
        return ids, unit_ids

    def tokenize_example(self, example: Example) -> TokenizedExample:
        """Tokenizes an Example: ids, unit ids, sentence ids and the answer span.

        Sentence ids start at 0 and grow by one after every text piece ending with
        . ! or ? (entities never end a sentence). The answer span is the [start, end)
        token range of the segments flagged ``answer=True``.

        Raises:
            ValueError: naming the example (``Example.describe()``) for an empty entity
                name, an entity that encodes to nothing, answer segments that are not
                contiguous, or answer segments that encode to no tokens.
        """
        ids, unit_ids, sentence_ids, answer_span = self._tokenize(
            example.segments, example.describe()
        )
        return TokenizedExample(
            input_ids=ids,
            unit_ids=unit_ids,
            sentence_ids=sentence_ids,
            answer_span=answer_span,
            answer_mask=example.answer_mask,
            example=example,
        )

    def _encode_piece(self, piece: str) -> tuple[int, ...]:
        """``encode(piece)`` for a text piece, remembered: prompts repeat their template
        text and profile phrases in every example, so most pieces are seen before. The
        memory is cleared when it holds ``_PIECE_CACHE_SIZE`` pieces (free text such as
        reviews is mostly unique)."""
        cache = self.__dict__.setdefault("_piece_cache", {})
        ids = cache.get(piece)
        if ids is None:
            ids = tuple(self.encode(piece))
            if len(cache) >= _PIECE_CACHE_SIZE:
                cache.clear()
            cache[piece] = ids
        return ids

    def _tokenize(
        self, segments: Sequence[Segment], where: str
    ) -> tuple[list[int], list[int], list[int], tuple[int, int] | None]:
        ids: list[int] = []
        unit_ids: list[int] = []
        sentence_ids: list[int] = []
        answer_indices = [i for i, segment in enumerate(segments) if segment.answer]
        if answer_indices and answer_indices[-1] - answer_indices[0] + 1 != len(answer_indices):
            raise ValueError(f"{where}: answer segments {answer_indices} are not contiguous")
        first_answer = answer_indices[0] if answer_indices else None
        last_answer = answer_indices[-1] if answer_indices else None
        answer_start = answer_end = 0
        sentence = 0
        units = 0
        for index, segment in enumerate(segments):
            if index == first_answer:
                answer_start = len(ids)
            if segment.is_entity:
                try:
                    entity_ids = self.encode_entity(segment.text)
                except ValueError as error:
                    raise ValueError(
                        f"{where}: segment {index} (entity {segment.entity!r}): {error}"
                    ) from None
                ids.extend(entity_ids)
                unit_ids.extend([units] * len(entity_ids))
                sentence_ids.extend([sentence] * len(entity_ids))
                units += 1
            else:
                text = segment.text
                next_is_entity = index + 1 < len(segments) and segments[index + 1].is_entity
                if next_is_entity and text.endswith(" "):
                    text = text[:-1]  # the entity brings its own leading space
                for piece in _sentence_pieces(text):
                    piece_ids = self._encode_piece(piece)
                    ids.extend(piece_ids)
                    unit_ids.extend([-1] * len(piece_ids))
                    sentence_ids.extend([sentence] * len(piece_ids))
                    if piece.rstrip().endswith(_SENTENCE_END):
                        sentence += 1
            if index == last_answer:
                answer_end = len(ids)
        answer_span = None
        if answer_indices:
            if answer_start == answer_end:
                raise ValueError(f"{where}: answer segments {answer_indices} encode to no tokens")
            answer_span = (answer_start, answer_end)
        return ids, unit_ids, sentence_ids, answer_span


def _sentence_pieces(text: str) -> list[str]:
    """Cuts text at sentence ends; the whitespace after . ! ? starts the next piece."""
    pieces = []
    start = 0
    for match in SENTENCE_BREAK.finditer(text):
        pieces.append(text[start : match.start()])
        start = match.start()
    pieces.append(text[start:])
    return [piece for piece in pieces if piece]


def read_json(path: Path) -> Any:
    """A JSON file's content; malformed JSON is a ValueError naming the file and line."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}, line {error.lineno}: malformed JSON ({error.msg})") from None


def load_tokenizer(path: str | os.PathLike, saved: bool = False) -> Any:
    """The tokenizer in directory ``path``, read by the family that owns its layout.

    Args:
        path: the tokenizer directory (a base model's, or one recsysllm saved).
        saved: the directory was written by recsysllm's own ``save_pretrained`` (a
            checkpoint's ``tokenizer/``): an incomplete save is refused, never read as
            another layout.
    """
    from recsysllm.modeling.families import family_of_tokenizer_dir, get_backbone

    return get_backbone(family_of_tokenizer_dir(path)).load_tokenizer(path, saved=saved)
