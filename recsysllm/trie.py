"""Entity trie over token ids: constrained item decoding and dynamic intra-positions.

The trie holds the token ids of every entity of a catalog (item titles, and
optionally user attribute values), each encoded exactly as the tokenizer encodes
an entity inside an example (``tokenizer.encode_entity``), so a path in the trie
is the token sequence that the collator trains on.

Two uses (DESIGN.md section 5):

- constrained decoding: :meth:`EntityTrie.allowed_next` gives the token ids that
  keep a prefix inside the trie, :meth:`EntityTrie.keys_at` tells whether a prefix
  is a whole entity (then [eop] may follow);
- dynamic intra-positions: :meth:`EntityTrie.step` decides the
  :class:`~recsysllm.positions.TokenKind` of each generated token, which
  :class:`~recsysllm.positions.IntraPositionTracker` turns into its intra-position.

Example:
    >>> trie = EntityTrie({"a": (5, 6), "b": (5, 7, 8), "c": (9,)})
    >>> trie.allowed_next((5,)).tolist()
    [6, 7]
    >>> trie.keys_at((5, 6)), trie.keys_at((5,))
    (('a',), ())
    >>> trie.step((5,), 7)
    (<TokenKind.ENTITY_CONTINUE: 'entity_continue'>, (5, 7))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pygtrie

from recsysllm.positions import TokenKind

_EMPTY = np.zeros(0, dtype=np.int64)

# (tokenizer fingerprint, catalog hash, items_only) -> trie. Tries are immutable, so
# sharing one between callers is safe; building one for a large catalog costs seconds.
_CATALOG_TRIES: dict[tuple[str, str, bool], EntityTrie] = {}


class EntityTrie:
    """A trie over the token ids of named entities.

    Args:
        entities: entity key -> its token ids (non-empty).
        allow_duplicates: whether two keys may share the same token ids. Items must
            be distinguishable by their tokens (a decoded item is looked up by its
            ids), so this is False for item tries; attribute values of different
            columns may legitimately share a surface string ("M" as gender and as
            a size), which only matters for position classification.

    Raises:
        ValueError: an entity has no token ids, or (without ``allow_duplicates``) two
            keys have identical token ids; the message names both keys.
    """

    def __init__(
        self, entities: Mapping[str, Sequence[int]], allow_duplicates: bool = False
    ) -> None:
        self._trie: Any = pygtrie.Trie()  # token-id tuple -> tuple of entity keys
        for key, ids in entities.items():
            ids = tuple(int(i) for i in ids)
            if not ids:
                raise ValueError(f"entity {key!r}: tokenizes to no token ids")
            previous = self._trie.get(ids, ())
            if previous and not allow_duplicates:
                raise ValueError(
                    f"entities {previous[0]!r} and {key!r} have identical token ids {list(ids)}; "
                    "items must be distinguishable by their tokens (disambiguate the titles)"
                )
            self._trie[ids] = (*previous, key)

        # Precomputed per prefix, so one decoding step is one dict lookup per beam:
        # the sorted next token ids, and how many entities lie below the prefix
        # (used to prune prefixes whose entities are all excluded).
        children: dict[tuple[int, ...], set[int]] = {}
        subtree_sizes: dict[tuple[int, ...], int] = {}
        for ids, keys in self._trie.iteritems():
            for length in range(len(ids) + 1):
                prefix = ids[:length]
                subtree_sizes[prefix] = subtree_sizes.get(prefix, 0) + len(keys)
                if length < len(ids):
                    children.setdefault(prefix, set()).add(ids[length])
        self._children = {p: np.array(sorted(c), dtype=np.int64) for p, c in children.items()}
        self._subtree_sizes = subtree_sizes
        self._ids_by_key = {key: ids for ids, keys in self._trie.iteritems() for key in keys}
        self.max_length = max((len(ids) for ids in self._ids_by_key.values()), default=0)

    @classmethod
    def from_catalog(cls, catalog: Any, tokenizer: Any, items_only: bool = True) -> EntityTrie:
        """The trie of a catalog's entities, cached per (tokenizer, catalog, items_only).

        Args:
            catalog: an ``EntityCatalog`` (``recsysllm.data.catalog``).
            tokenizer: a ``GLMTokenizer``; entities are encoded with ``encode_entity``.
            items_only: only item titles (for constrained item decoding; duplicate ids
                are an error) or also user attribute values (for intra-position
                classification of free text; duplicates allowed, see ``__init__``).
        """
        cache_key = (tokenizer.fingerprint, catalog.hash, items_only)
        trie = _CATALOG_TRIES.get(cache_key)
        if trie is None:
            entities = catalog.items if items_only else catalog.entities()
            encoded = {key: tokenizer.encode_entity(text) for key, text in entities.items()}
            trie = cls(encoded, allow_duplicates=not items_only)
            _CATALOG_TRIES[cache_key] = trie
        return trie

    def __len__(self) -> int:
        return len(self._ids_by_key)

    def __contains__(self, key: object) -> bool:
        return key in self._ids_by_key

    def ids_of(self, key: str) -> tuple[int, ...]:
        """Token ids of an entity.

        Raises:
            KeyError: the key is not in the trie.
        """
        try:
            return self._ids_by_key[key]
        except KeyError:
            raise KeyError(f"entity {key!r} is not in the trie ({len(self)} entities)") from None

    def allowed_next(self, prefix: tuple[int, ...]) -> np.ndarray:
        """Sorted token ids that extend ``prefix`` inside the trie (empty if none)."""
        return self._children.get(prefix, _EMPTY)

    def is_prefix(self, prefix: tuple[int, ...]) -> bool:
        """Whether ``prefix`` begins (or is) some entity; ``()`` is a prefix of all."""
        return prefix in self._subtree_sizes

    def keys_at(self, prefix: tuple[int, ...]) -> tuple[str, ...]:
        """Keys of the entities whose token ids are exactly ``prefix`` (empty if none)."""
        return self._trie.get(prefix, ())

    def subtree_size(self, prefix: tuple[int, ...]) -> int:
        """Number of entity keys whose token ids start with ``prefix``."""
        return self._subtree_sizes.get(prefix, 0)

    def step(self, entity_prefix: tuple[int, ...], token: int) -> tuple[TokenKind, tuple[int, ...]]:
        """Kind of the next generated token, and the entity prefix it leaves open.

        Args:
            entity_prefix: token ids of the entity being generated so far (``()``
                when the previous token was plain text or right after [sop]).
            token: the token just generated.

        Returns:
            ``(kind, new_prefix)``: ENTITY_CONTINUE if ``entity_prefix + (token,)``
            is a trie prefix; otherwise ENTITY_START if ``token`` begins some entity;
            otherwise PLAIN (``new_prefix == ()``).

        Ambiguity: decoding cannot look ahead, so a token that could both continue
        the current entity and start a new one (an entity that is a prefix of a
        longer one, followed by another entity) is taken as a continuation (longest
        match), and a plain word that happens to begin some entity (" The" of
        "The Usual Suspects") is taken as an entity start. The collator, which
        knows the true entities, would number such tokens differently; positions
        agree exactly whenever the generated entities are unambiguous in this sense.
        """
        if entity_prefix:
            extended = (*entity_prefix, token)
            if extended in self._subtree_sizes:
                return TokenKind.ENTITY_CONTINUE, extended
        if (token,) in self._subtree_sizes:
            return TokenKind.ENTITY_START, (token,)
        return TokenKind.PLAIN, ()

    def classify(self, entity_prefix: tuple[int, ...], token: int) -> TokenKind:
        """The :class:`TokenKind` of ``token`` after ``entity_prefix`` (see :meth:`step`)."""
        return self.step(entity_prefix, token)[0]
