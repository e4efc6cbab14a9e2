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

For batched item decoding on a device, :meth:`EntityTrie.tensors` gives the same trie
as static tensors (:class:`TrieTensors`: a CSR transition matrix, per-node items and
intra-positions).

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

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pygtrie
import torch

from recsysllm.positions import IntraPositionTracker, TokenKind

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
        self._tensors: dict[torch.device, TrieTensors] = {}

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

    def tensors(self, device: torch.device | str) -> TrieTensors:
        """The trie as static tensors on ``device`` (built once per device, then cached).

        The trie itself is cached per (tokenizer, catalog) by :meth:`from_catalog`, so
        the tensors are too.
        """
        device = torch.device(device)
        tensors = self._tensors.get(device)
        if tensors is None:
            tensors = TrieTensors.build(self, device)
            self._tensors[device] = tensors
        return tensors


@dataclass(frozen=True, eq=False)  # tensors: identity, not elementwise ==
class TrieTensors:
    """An item trie as static tensors: a CSR transition matrix over numbered nodes.

    Nodes are numbered breadth-first (root 0, the nodes of one depth contiguous, each
    node's children in token order); one extra node, :attr:`dead`, has no children,
    no item and intra-position 1, and stands for any token outside the trie. For
    node ``n`` the allowed next tokens are ``child_token[child_ptr[n]:child_ptr[n+1]]``
    (sorted) and the nodes they lead to ``child_node[...]`` at the same offsets, so a
    decoding step over many beams is a few gathers, with no Python per beam.

    ``node_intra[n]`` is the intra-position of the token that entered ``n`` when the
    answer is that one entity (``[sop]`` for the root), computed once at build time
    by feeding the :class:`~recsysllm.positions.IntraPositionTracker` the kinds that
    :meth:`EntityTrie.step` assigns along the path: the positions.py rule, not a copy
    of it.

    Example:
        >>> t = EntityTrie({"a": (5, 6), "b": (5, 7, 8), "c": (9,)}).tensors("cpu")
        >>> t.child_token[t.child_ptr[0] : t.child_ptr[1]].tolist()  # root: 5 and 9
        [5, 9]
        >>> t.node_intra.tolist()  # [sop], then 2, 3, 4 down each path; dead node last
        [1, 2, 2, 3, 3, 4, 1]
        >>> [t.item_keys[i] if i >= 0 else None for i in t.node_item.tolist()]
        [None, None, 'c', 'a', None, 'b', None]
    """

    child_ptr: torch.Tensor  # [nodes + 1] long (the dead node included)
    child_token: torch.Tensor  # [edges] long
    child_node: torch.Tensor  # [edges] long
    node_item: torch.Tensor  # [nodes] long: index into item_keys of the item ending here, or -1
    node_intra: torch.Tensor  # [nodes] long
    subtree_size: torch.Tensor  # [nodes] long: items at or below the node
    item_path: torch.Tensor  # [items, max_length] long: nodes at depth 1..len, then -1
    item_keys: tuple[str, ...]
    item_index: Mapping[str, int]
    max_children: tuple[int, ...]  # per depth 0..max_length: the most children of one node

    @property
    def dead(self) -> int:
        """The node of a beam that left the trie (or never was live)."""
        return len(self.node_item) - 1

    @classmethod
    def build(cls, trie: EntityTrie, device: torch.device) -> TrieTensors:
        """Numbers the nodes of ``trie`` breadth-first; see the class docstring.

        Raises:
            ValueError: two keys share token ids (an item trie must tell items apart).
        """
        prefixes: list[tuple[int, ...]] = [()]
        node_of = {(): 0}
        root_tracker = IntraPositionTracker()
        intra = [root_tracker.start()]
        trackers = [root_tracker]  # per node: the tracker after the node's token
        child_ptr, child_token, child_node = [0], [], []
        max_children: list[int] = []
        for node, prefix in enumerate(prefixes):  # grows while iterated: breadth-first
            if len(prefix) == len(max_children):
                max_children.append(0)
            children = trie.allowed_next(prefix).tolist()
            max_children[len(prefix)] = max(max_children[len(prefix)], len(children))
            for token in children:
                child = (*prefix, token)
                kind, _ = trie.step(prefix, token)
                tracker = copy.copy(trackers[node])
                intra.append(tracker.step(kind))
                trackers.append(tracker)
                node_of[child] = len(prefixes)
                child_token.append(token)
                child_node.append(len(prefixes))
                prefixes.append(child)
            child_ptr.append(len(child_token))
        item_keys: list[str] = []
        node_item = [-1] * len(prefixes)
        paths = []
        for node, prefix in enumerate(prefixes):
            keys = trie.keys_at(prefix)
            if len(keys) > 1:
                raise ValueError(
                    f"entities {keys[0]!r} and {keys[1]!r} have identical token ids "
                    f"{list(prefix)}: a trie with duplicates cannot be decoded as items"
                )
            if keys:
                node_item[node] = len(item_keys)
                item_keys.append(keys[0])
                paths.append([node_of[prefix[:n]] for n in range(1, len(prefix) + 1)])
        item_path = torch.full((len(paths), max(trie.max_length, 1)), -1, dtype=torch.long)
        for index, path in enumerate(paths):
            item_path[index, : len(path)] = torch.tensor(path)
        # The dead node: no children, no item, intra 1 (any in-range value would do:
        # a dead beam's outputs are never used).
        child_ptr.append(len(child_token))
        node_item.append(-1)
        intra.append(1)
        sizes = [trie.subtree_size(prefix) for prefix in prefixes] + [0]

        def tensor(values: Sequence[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.long, device=device)

        return cls(
            child_ptr=tensor(child_ptr),
            child_token=tensor(child_token or [0]),  # a gather needs one element
            child_node=tensor(child_node or [0]),
            node_item=tensor(node_item),
            node_intra=tensor(intra),
            subtree_size=tensor(sizes),
            item_path=item_path.to(device),
            item_keys=tuple(item_keys),
            item_index={key: index for index, key in enumerate(item_keys)},
            max_children=tuple(max_children),
        )


def allowed_next_tokens(
    candidates: Sequence[tuple[int, ...]], eop_token_id: int
) -> list[list[tuple[int, ...]]]:
    """Per candidate, per scored position (each token, then [eop]): the tokens the
    candidate list allows after the prefix before it, sorted.

    >>> allowed_next_tokens([(5, 6), (5, 7, 8), (9,)], eop_token_id=2)[1]
    [(5, 9), (6, 7), (8,), (2,)]
    """
    following: dict[tuple[int, ...], set[int]] = {}
    for ids in candidates:
        for position in range(len(ids) + 1):
            token = ids[position] if position < len(ids) else eop_token_id
            following.setdefault(tuple(ids[:position]), set()).add(token)
    frozen = {prefix: tuple(sorted(tokens)) for prefix, tokens in following.items()}
    return [[frozen[tuple(ids[:p])] for p in range(len(ids) + 1)] for ids in candidates]


def pad_token_sets(token_sets: Sequence[Sequence[int] | None]) -> torch.Tensor:
    """[len(token_sets), K] long: each set's ids, -1 padded; None or () is a row of -1 only.
    K is the largest set (at least 1).

    >>> pad_token_sets([(2, 5), None, (0, 7, 9)]).tolist()
    [[2, 5, -1], [-1, -1, -1], [0, 7, 9]]
    """
    width = max((len(ids) for ids in token_sets if ids is not None), default=1) or 1
    out = np.full((len(token_sets), width), -1, dtype=np.int64)
    for row, ids in enumerate(token_sets):
        if ids:
            out[row, : len(ids)] = ids
    return torch.from_numpy(out)
