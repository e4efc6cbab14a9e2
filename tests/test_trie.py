"""EntityTrie: allowed tokens, completion, duplicates, caching, and position parity."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from recsysllm import trie as trie_module
from recsysllm.data.catalog import EntityCatalog
from recsysllm.positions import IntraPositionTracker, TokenKind, span_intra_positions
from recsysllm.trie import EntityTrie

ENTITIES = {"a": (5, 6), "b": (5, 7, 8), "c": (9,), "d": (5, 7, 8, 2)}


def test_allowed_next_and_completion():
    trie = EntityTrie(ENTITIES)
    assert trie.allowed_next(()).tolist() == [5, 9]
    assert trie.allowed_next((5,)).tolist() == [6, 7]
    assert trie.allowed_next((5, 7, 8)).tolist() == [2]  # "b" is whole and a prefix of "d"
    assert trie.allowed_next((5, 6)).tolist() == []
    assert trie.allowed_next((1,)).tolist() == []
    assert trie.keys_at((5, 7, 8)) == ("b",)
    assert trie.keys_at((5, 7)) == ()
    assert trie.is_prefix((5, 7)) and trie.is_prefix(()) and not trie.is_prefix((7,))
    assert [trie.subtree_size(p) for p in [(), (5,), (5, 7), (9,), (3,)]] == [4, 3, 2, 1, 0]
    assert trie.max_length == 4 and len(trie) == 4 and "d" in trie and trie.ids_of("c") == (9,)


entity_maps = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    st.lists(st.integers(0, 6), min_size=1, max_size=4).map(tuple),
    max_size=12,
)


@settings(max_examples=60, deadline=None)
@given(entities=entity_maps, probe=st.lists(st.integers(0, 6), max_size=4).map(tuple))
def test_trie_matches_brute_force(entities, probe):
    trie = EntityTrie(entities, allow_duplicates=True)
    for prefix in {probe, *(ids[:n] for ids in entities.values() for n in range(len(ids) + 1))}:
        below = [ids for ids in entities.values() if ids[: len(prefix)] == prefix]
        expected_next = sorted({ids[len(prefix)] for ids in below if len(ids) > len(prefix)})
        assert trie.allowed_next(prefix).tolist() == expected_next
        assert sorted(trie.keys_at(prefix)) == sorted(
            k for k, ids in entities.items() if ids == prefix
        )
        assert trie.subtree_size(prefix) == len(below)
        assert trie.is_prefix(prefix) == bool(below)


def test_duplicate_ids_is_an_error_naming_both_keys():
    with pytest.raises(ValueError, match=r"'Heat \(1995\)'.*'Heat \(1995\) \[id 7\]'"):
        EntityTrie({"Heat (1995)": (4, 5), "Heat (1995) [id 7]": (4, 5)})
    both = EntityTrie({"attr:gender=M": (4,), "attr:size=M": (4,)}, allow_duplicates=True)
    assert both.keys_at((4,)) == ("attr:gender=M", "attr:size=M")
    with pytest.raises(ValueError, match="'x': tokenizes to no token ids"):
        EntityTrie({"x": ()})
    with pytest.raises(KeyError, match="'zzz' is not in the trie"):
        both.ids_of("zzz")


def test_step_continue_start_plain_and_ambiguity_rule():
    trie = EntityTrie(ENTITIES)
    assert trie.step((), 5) == (TokenKind.ENTITY_START, (5,))
    assert trie.step((5,), 7) == (TokenKind.ENTITY_CONTINUE, (5, 7))
    assert trie.step((5, 6), 9) == (TokenKind.ENTITY_START, (9,))  # "a" then "c"
    assert trie.step((9,), 3) == (TokenKind.PLAIN, ())
    assert trie.step((), 3) == (TokenKind.PLAIN, ())
    # Ambiguity: after "b" (5 7 8), 2 continues "d": continuation wins over anything else.
    assert trie.step((5, 7, 8), 2) == (TokenKind.ENTITY_CONTINUE, (5, 7, 8, 2))
    # After "a" (whole), 5 cannot continue it, so it starts a new entity.
    assert trie.classify((5, 6), 5) is TokenKind.ENTITY_START


class _CountingTokenizer:
    """Stand-in tokenizer: one id per character, counting encode_entity calls."""

    fingerprint = "chars-v1"

    def __init__(self) -> None:
        self.calls = 0

    def encode_entity(self, name: str) -> tuple[int, ...]:
        self.calls += 1
        return tuple(ord(c) for c in " " + name)


def test_from_catalog_encodes_entities_and_caches(monkeypatch):
    monkeypatch.setattr(trie_module, "_CATALOG_TRIES", {})
    catalog = EntityCatalog(
        "toy", {"Heat (1995)": "1", "Babe (1995)": "2"}, {"attr:age=25-34": "25-34"}
    )
    tokenizer = _CountingTokenizer()
    items = EntityTrie.from_catalog(catalog, tokenizer)
    assert sorted(
        items.keys_at(tokenizer.encode_entity(k))[0] for k in catalog.item_keys
    ) == sorted(catalog.item_keys)
    assert "attr:age=25-34" not in items
    calls = tokenizer.calls
    assert EntityTrie.from_catalog(catalog, tokenizer) is items  # cache hit: nothing re-encoded
    assert tokenizer.calls == calls
    everything = EntityTrie.from_catalog(catalog, tokenizer, items_only=False)
    assert everything is not items and len(everything) == 3
    assert everything.keys_at(tuple(ord(c) for c in " 25-34")) == ("attr:age=25-34",)
    other = EntityCatalog("toy", {"Heat (1995)": "1"}, {})
    assert EntityTrie.from_catalog(other, tokenizer) is not items  # different catalog hash


def test_from_catalog_with_real_tokenizer(tiny_tokenizer, monkeypatch):
    monkeypatch.setattr(trie_module, "_CATALOG_TRIES", {})
    from tests.conftest import TINY_TITLES

    catalog = EntityCatalog("tiny", {title: str(i) for i, title in enumerate(TINY_TITLES)}, {})
    trie = EntityTrie.from_catalog(catalog, tiny_tokenizer)
    for title in TINY_TITLES:
        assert trie.keys_at(tuple(tiny_tokenizer.encode_entity(title))) == (title,)


def _trie_intra_positions(trie: EntityTrie, tokens: list[int]) -> list[int]:
    """Intra-positions of [sop] + tokens, with token kinds decided by the trie."""
    tracker, prefix = IntraPositionTracker(), ()
    positions = [tracker.start()]
    for token in tokens:
        kind, prefix = trie.step(prefix, token)
        positions.append(tracker.step(kind))
    return positions


# Unambiguous entity pool: entity tokens (10..) never occur as plain text (0..9), and no
# entity is a prefix of another, nor of a concatenation of entities.
POOL = {f"e{i}": (10 + 3 * i, 11 + 3 * i, 12 + 3 * i)[: 1 + i % 3] for i in range(8)}


@settings(max_examples=100, deadline=None)
@given(
    units=st.lists(
        st.one_of(
            st.sampled_from(sorted(POOL)), st.lists(st.integers(0, 9), min_size=1, max_size=3)
        ),
        min_size=1,
        max_size=8,
    )
)
def test_trie_positions_match_collator_rule_on_unambiguous_spans(units):
    """Part B positions from trie-decided kinds == the collator's rule over true unit ids."""
    trie = EntityTrie(POOL)
    tokens, unit_ids = [], []
    for index, unit in enumerate(units):
        ids = POOL[unit] if isinstance(unit, str) else unit
        tokens += ids
        unit_ids += [index if isinstance(unit, str) else -1] * len(ids)
    assert _trie_intra_positions(trie, tokens) == span_intra_positions(unit_ids)


@settings(max_examples=60, deadline=None)
@given(
    units=st.lists(
        st.one_of(
            st.sampled_from(sorted(POOL)), st.lists(st.integers(0, 9), min_size=1, max_size=3)
        ),
        min_size=2,
        max_size=12,
    ),
    seed=st.integers(0, 2**16),
    answer=st.booleans(),
)
def test_trie_positions_match_real_collator(units, seed, answer):
    """Every Part B block of the real collator (pretraining masks, or a task answer) gets
    the same intra-positions from the trie-driven tracker."""
    from types import SimpleNamespace

    from recsysllm.collator import BlankInfillingCollator, MaskingConfig
    from recsysllm.schema import TokenizedExample

    special = SimpleNamespace(
        pad_token_id=0, cls_token_id=1, eos_token_id=2, mask_token_id=3, smask_token_id=4,
        gmask_token_id=5, sop_token_id=6, eop_token_id=7,
    )  # fmt: skip
    trie = EntityTrie(POOL)
    tokens, unit_ids, sentence_ids = [], [], []
    for index, unit in enumerate(units):
        ids = POOL[unit] if isinstance(unit, str) else unit
        last_start = len(tokens)
        tokens += ids
        unit_ids += [index if isinstance(unit, str) else -1] * len(ids)
        sentence_ids += [index // 3] * len(ids)
    span = (
        (last_start, len(tokens)) if answer else None
    )  # task example: the last unit is the answer
    example = TokenizedExample(tokens, unit_ids, sentence_ids, span, "mask" if answer else None)
    collator = BlankInfillingCollator(special, max_length=128, masking=MaskingConfig(), seed=seed)
    layout = collator.encode(example)
    offset = 0
    for length in list(layout.span_lengths):
        block_ids = list(layout.part_b_ids[offset : offset + length + 1])
        assert block_ids[0] == special.sop_token_id
        expected = list(layout.part_b_intra[offset : offset + length + 1])
        assert _trie_intra_positions(trie, block_ids[1:]) == expected
        offset += length + 1
    assert offset == len(layout.part_b_ids)


item_maps = st.dictionaries(
    st.text(alphabet="abcdefgh", min_size=1, max_size=4),
    st.lists(st.integers(0, 6), min_size=1, max_size=5).map(tuple),
    min_size=1,
    max_size=15,
).map(lambda entities: {key: ids for ids, key in {v: k for k, v in entities.items()}.items()})


def _walk(tensors, tokens):
    """Node reached from the root along ``tokens`` by the CSR transitions (dead if none)."""
    node = 0
    for token in tokens:
        start, end = tensors.child_ptr[node], tensors.child_ptr[node + 1]
        hits = (tensors.child_token[start:end] == token).nonzero()
        node = int(tensors.child_node[start + hits[0, 0]]) if len(hits) else tensors.dead
    return node


@settings(max_examples=60, deadline=None)
@given(items=item_maps, probe=st.lists(st.integers(0, 6), max_size=5).map(tuple))
def test_trie_tensors_equal_pygtrie(items, probe):
    """Every node's transitions, item, subtree size and intra-position equal the pygtrie
    trie's and the tracker's (the positions.py rule fed with EntityTrie.step kinds)."""
    trie = EntityTrie(items)
    tensors = trie.tensors("cpu")
    prefixes = {probe, *(ids[:n] for ids in items.values() for n in range(len(ids) + 1))}
    seen = set()
    for prefix in prefixes:
        node = _walk(tensors, prefix)
        if not trie.is_prefix(prefix):
            assert node == tensors.dead
            continue
        seen.add(node)
        start, end = tensors.child_ptr[node], tensors.child_ptr[node + 1]
        assert tensors.child_token[start:end].tolist() == trie.allowed_next(prefix).tolist()
        keys = [tensors.item_keys[tensors.node_item[node]]] if tensors.node_item[node] >= 0 else []
        assert tuple(keys) == trie.keys_at(prefix)
        assert int(tensors.subtree_size[node]) == trie.subtree_size(prefix)
        tracker, entity_prefix = IntraPositionTracker(), ()
        intra = tracker.start()
        for token in prefix:
            kind, entity_prefix = trie.step(entity_prefix, token)
            intra = tracker.step(kind)
        assert int(tensors.node_intra[node]) == intra == len(prefix) + 1
        if keys:  # the item's path lists the nodes below the root
            path = tensors.item_path[tensors.node_item[node]].tolist()
            assert path == [_walk(tensors, prefix[:n]) for n in range(1, len(prefix) + 1)] + [
                -1
            ] * (tensors.item_path.shape[1] - len(prefix))
    assert len(seen) == len(tensors.node_item) - 1  # every node but the dead one is a prefix
    assert len(tensors.item_keys) == len(items) and sorted(tensors.item_keys) == sorted(items)
    depth_of = {node: len(p) for p in prefixes if trie.is_prefix(p) for node in [_walk(tensors, p)]}
    for depth, most in enumerate(tensors.max_children):
        assert most == max(
            len(trie.allowed_next(p)) for p in prefixes if trie.is_prefix(p) and len(p) == depth
        )
    assert max(depth_of.values()) == len(tensors.max_children) - 1


def test_trie_tensors_are_cached_per_device_and_reject_duplicates():
    trie = EntityTrie(ENTITIES)
    assert trie.tensors("cpu") is trie.tensors(torch.device("cpu"))
    both = EntityTrie({"attr:gender=M": (4,), "attr:size=M": (4,)}, allow_duplicates=True)
    with pytest.raises(ValueError, match="'attr:gender=M' and 'attr:size=M' have identical"):
        both.tensors("cpu")
