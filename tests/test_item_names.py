"""Item-name cap (``data.item_name_max_tokens``): the names, and that training, the
checkpoint, the trie and evaluation all use the same ones.

The properties are checked with a one-token-per-word counter (hand-computable) and with
a sentencepiece tokenizer trained on the generated long-title catalog
(:mod:`recsysllm.data.synthetic`); the end-to-end test trains a tiny from-scratch GLM on
that catalog in-process and evaluates it with ``recsysllm evaluate``.
"""

from __future__ import annotations

import json
import random

import datasets
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from recsysllm.data.catalog import capped_item_key_map, item_key_map


def words(name: str) -> int:
    """A tokenizer stand-in with one token per whitespace-separated word."""
    return len(name.split())


def table(rows: list[tuple[str, str]]) -> datasets.Dataset:
    return datasets.Dataset.from_dict(
        {"item": [item for item, _ in rows], "title": [title for _, title in rows]}
    )


HAND_ROWS = [
    ("b2", "Acme Steel Travel Mug with Lid, Red"),
    ("b1", "Acme Steel Travel Mug with Lid, Blue"),
    ("b3", "Acme Steel Travel Mug with Lid, Green Matte"),
    ("c", "Kettle"),  # short: unchanged
    ("d", "Heat (1995)"),  # two items share this short title: nothing tells them apart
    ("e", "Heat (1995)"),
    ("f", "Tiny Lamp, Desk Office Warm Light"),  # cut after a comma: the comma goes
    ("g", "Lamp Desk Office Light Warm White Shade"),  # the same 4-word cut, and the
    ("h", "Lamp Desk Office Light Warm White Bulb"),  # same 5th and 6th words
    ("i", "Lamp Desk Office Light Cool"),
]
# Both: "c" and "f" coincide with no other name; the equal titles "d", "e" are numbered.
# number: every group with the same 4-word cut is numbered by full title, each name cut to
# 4 - 1 words so that the suffix fits.
# words: the words a group shares, cut to half the cap (2 words), then each title's own
# words after them, as many as fit; g's and h's both cut to "Warm White", so those two
# fall back to numbers (by full title: "...Bulb" first).
HAND_NAMES = {
    "number": {
        "b1": "Acme Steel Travel #1", "b3": "Acme Steel Travel #2", "b2": "Acme Steel Travel #3",
        "c": "Kettle", "d": "Heat (1995) #1", "e": "Heat (1995) #2",
        "f": "Tiny Lamp, Desk Office",
        "i": "Lamp Desk Office #1", "h": "Lamp Desk Office #2", "g": "Lamp Desk Office #3",
    },
    "words": {
        "b1": "Acme Steel Blue", "b2": "Acme Steel Red", "b3": "Acme Steel Green Matte",
        "c": "Kettle", "d": "Heat (1995) #1", "e": "Heat (1995) #2",
        "f": "Tiny Lamp, Desk Office",
        "h": "Lamp Desk Office #1", "g": "Lamp Desk Office #2", "i": "Lamp Desk Cool",
    },
}  # fmt: skip


@pytest.mark.parametrize("disambiguation", ["number", "words"])
def test_hand_computed_names(disambiguation):
    keys = capped_item_key_map(table(HAND_ROWS), words, 4, disambiguation=disambiguation)
    assert keys == HAND_NAMES[disambiguation]
    # At 2 words, "Tiny Lamp," loses its trailing comma.
    assert capped_item_key_map(table([("f", "Tiny Lamp, Desk")]), words, 2) == {"f": "Tiny Lamp"}
    # A first word longer than the cap is cut by characters.
    chars = capped_item_key_map(table([("x", "Supercalifragilistic word")]), len, 5)
    assert chars == {"x": "Super"}


def test_a_fitting_title_keeps_its_name_and_the_longer_one_is_told_apart_by_words():
    kept = capped_item_key_map(
        table([("k", "Big Kettle"), ("l", "Big Kettle Red Enamel")]), words, 2,
        disambiguation="words",
    )  # fmt: skip
    assert kept == {"k": "Big Kettle", "l": "Big Red"}


def test_an_unknown_disambiguation_is_refused():
    with pytest.raises(ValueError, match=r"items: item name disambiguation must be one of"):
        capped_item_key_map(table([("a", "A")]), words, 4, disambiguation="letters")


def test_without_collisions_or_long_titles_the_keys_are_the_titles():
    rows = [("1", "Toy Story (1995)"), ("2", "Fargo (1996)"), ("3", "Heat (1995)")]
    assert capped_item_key_map(table(rows), words, 4) == item_key_map(table(rows))


TITLE_WORDS = st.sampled_from(["Acme", "Mug", "Blue", "Red", "Lid,", "with", "16", "oz", "Pro"])


@settings(max_examples=200, deadline=None)
@given(
    titles=st.lists(st.lists(TITLE_WORDS, min_size=1, max_size=12), min_size=1, max_size=30),
    max_tokens=st.integers(min_value=4, max_value=10),
    order_seed=st.integers(0, 1000),
    disambiguation=st.sampled_from(["number", "words"]),
)
def test_capped_names_are_one_to_one_short_deterministic_and_from_the_title(
    titles, max_tokens, order_seed, disambiguation
):
    rows = [(f"i{n}", " ".join(title)) for n, title in enumerate(titles)]
    keys = capped_item_key_map(table(rows), words, max_tokens, disambiguation=disambiguation)
    assert set(keys) == {item for item, _ in rows}
    assert len(set(keys.values())) == len(keys)  # one-to-one
    assert all(words(key) <= max_tokens for key in keys.values())
    shuffled = rows[:]
    random.Random(order_seed).shuffle(shuffled)
    again = capped_item_key_map(table(shuffled), words, max_tokens, disambiguation=disambiguation)
    assert again == keys  # order-free
    counts = {title: sum(t == title for _, t in rows) for _, title in rows}
    for item, title in rows:
        key = keys[item]
        if words(title) <= max_tokens and counts[title] == 1:
            assert key == title  # untouched when short and unshared
        elif " #" in key:  # numbered: a whole-word prefix of the title
            assert title.startswith(key.rsplit(" #", 1)[0])
        else:  # a whole-word prefix, then (words) a run of the title's later words
            assert disambiguation == "words" or title.startswith(key)
            assert _prefix_then_run(key.split(), title.split())
    if disambiguation == "words":  # numbers only for items that "number" numbers too
        numbered = capped_item_key_map(table(rows), words, max_tokens, disambiguation="number")
        assert {i for i, k in keys.items() if " #" in k} <= {
            i for i, k in numbered.items() if " #" in k
        }


def _prefix_then_run(key: list[str], title: list[str]) -> bool:
    """``key`` is the first i words of ``title`` then a contiguous run of its later words
    (a cut word may have lost its trailing punctuation)."""

    def same(a, b):
        return a == b or a == b.rstrip(",;:-|/(&+")

    for i in range(1, len(key) + 1):
        if not all(same(k, t) for k, t in zip(key[:i], title, strict=False)) or i > len(title):
            break
        rest = key[i:]
        if not rest:
            return True
        for start in range(i, len(title) - len(rest) + 1):
            if all(same(k, t) for k, t in zip(rest, title[start:], strict=False)):
                return True
    return False


def test_sentencepiece_caps_on_the_generated_catalog(long_tokenizer):
    from recsysllm.data.synthetic import long_title_records

    _, meta = long_title_records(seed=1, num_items=300, num_families=8, num_users=10)
    rows = [(record["asin"], record["title"]) for record in meta]

    def count(name):
        return len(long_tokenizer.encode_entity(name))

    for max_tokens in (8, 16, 32):
        keys = capped_item_key_map(table(rows), count, max_tokens)
        assert len(set(keys.values())) == len(rows)
        assert max(count(key) for key in keys.values()) <= max_tokens
        ids = [long_tokenizer.encode_entity(key) for key in keys.values()]
        assert len(set(ids)) == len(ids)  # distinguishable by their tokens, as the trie needs
    # The 68-variant brand line: one shared prefix, so at 8 tokens every variant is numbered.
    by_number = capped_item_key_map(table(rows), count, 8, disambiguation="number")
    assert sum(" #" in key for key in by_number.values()) >= 68
    # Told apart by their words, fewer are numbered, the more so the more room the cap
    # leaves for the words after the shared ones (this tokenizer has 400 pieces: the
    # titles are ~125 tokens, so at 8 tokens a head is part of one word).
    numbered = {}
    for max_tokens in (8, 16, 32):
        keys = capped_item_key_map(table(rows), count, max_tokens, disambiguation="words")
        assert len(set(keys.values())) == len(rows)
        assert max(count(key) for key in keys.values()) <= max_tokens
        by_number = capped_item_key_map(table(rows), count, max_tokens, disambiguation="number")
        numbered[max_tokens] = sum(" #" in key for key in keys.values())
        assert numbered[max_tokens] < sum(" #" in key for key in by_number.values())
    assert numbered[8] > numbered[16] > numbered[32]
    assert numbered[32] < 68 / 4


# --------------------------------------------------------------------------- pipeline


def _long_title_data_args(path, **extra):
    from recsysllm.config import DataArgs

    return DataArgs(
        source="amazon",
        path=str(path),
        category="LongTitles",
        k_core=2,
        mixture={"sequential": 1.0, "direct": 1.0},
        num_negatives=9,
        **extra,
    )


@pytest.fixture(scope="module")
def long_dir(tmp_path_factory):
    from recsysllm.data.synthetic import write_long_title_category

    directory = tmp_path_factory.mktemp("long")
    write_long_title_category(directory, seed=3, num_items=150, num_families=5, num_users=60)
    return directory


@pytest.fixture(scope="module")
def long_tokenizer(tmp_path_factory):
    from recsysllm.data.synthetic import long_title_records
    from recsysllm.modeling.glm.tokenization import train_sentencepiece_tokenizer

    _, meta = long_title_records(seed=1, num_items=300, num_families=8, num_users=10)
    texts = [record["title"] for record in meta] + ["The user bought these items in order."]
    return train_sentencepiece_tokenizer(texts, tmp_path_factory.mktemp("spm"), vocab_size=400)


@pytest.mark.parametrize("disambiguation", ["number", "words"])
def test_cap_renames_splits_catalog_examples_and_the_trie(long_dir, long_tokenizer, disambiguation):
    from recsysllm.pipeline import cap_item_names, prepare_data
    from recsysllm.trie import EntityTrie

    full = prepare_data(_long_title_data_args(long_dir, item_name_max_tokens=12), seed=0)
    uncapped = _long_title_data_args(long_dir, item_name_max_tokens=None)
    assert cap_item_names(full, uncapped, long_tokenizer) is full
    capped_args = _long_title_data_args(
        long_dir, item_name_max_tokens=12, item_name_disambiguation=disambiguation
    )
    capped = cap_item_names(full, capped_args, long_tokenizer)
    titles = dict(
        zip(full.splits.tables.items["item"], full.splits.tables.items["title"], strict=True)
    )
    names = capped.splits.item_keys
    assert set(names) == set(titles)
    assert max(len(long_tokenizer.encode_entity(name)) for name in names.values()) <= 12
    # The catalog, the splits and the candidates name each raw item the same way.
    assert capped.catalog.item_ids == {name: raw for raw, name in names.items()}
    rename = {full.splits.item_keys[raw]: name for raw, name in names.items()}
    for user, events in full.splits.sequences.items():
        assert [rename[e.item] for e in events] == [e.item for e in capped.splits.sequences[user]]
    for split, lists in full.splits.candidates.items():
        for user, keys in lists.items():
            assert capped.splits.candidates[split][user] == tuple(rename[k] for k in keys)
    # The trie holds exactly the capped names.
    trie = EntityTrie.from_catalog(capped.catalog, long_tokenizer, items_only=True)
    assert {key for key in names.values() if key in trie} == set(names.values())
    assert len(trie) == len(names)
    assert trie.max_length <= 12
    # Prompts and targets: every item entity of every example is a capped name.
    examples = capped.tasks.examples("valid", ["sequential", "direct"], prompts="all", seed=0)
    examples += capped.tasks.training_examples(_mixture(), seed=0, epoch=0)
    entities = {s.entity for e in examples for s in e.segments if s.is_entity}
    assert entities and entities <= set(names.values())
    assert any(name != titles[raw] for raw, name in names.items())
    # The setting reaches the names: the numbered ones are those capped_item_key_map gives.
    expected = capped_item_key_map(
        full.splits.tables.items,
        lambda name: len(long_tokenizer.encode_entity(name)),
        12,
        disambiguation=disambiguation,
    )
    assert names == expected


def _mixture():
    from recsysllm.data.tasks import TaskMixture

    return TaskMixture(weights={"sequential": 1.0, "direct": 1.0}, examples_per_epoch=40)


# --------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def capped_run(tmp_path_factory, long_dir):
    """A tiny from-scratch GLM (its tokenizer trained on the data) with names capped at 10."""
    from recsysllm.config import load_config
    from recsysllm.training import train

    root = tmp_path_factory.mktemp("capped")
    recipe = {
        "model": {
            "from_scratch": {
                "hidden_size": 32, "num_layers": 1, "num_attention_heads": 4,
                "max_sequence_length": 512,
            }
        },
        "tokenizer": {"sentencepiece_vocab_size": 400},
        "lora": {"enabled": False},
        "data": {
            "source": "amazon", "path": str(long_dir), "category": "LongTitles", "k_core": 2,
            "max_length": 512, "num_negatives": 9, "history_budget": 4,
            "mixture": {"sequential": 1.0, "direct": 1.0}, "examples_per_epoch": 16,
            "item_name_max_tokens": 10,
        },
        "train": {
            "output_dir": str(root / "run"), "per_device_batch_size": 8, "max_steps": 2,
            "save_steps": 2, "logging_steps": 1, "use_cpu": True, "learning_rate": 1e-3,
        },
        "eval": {"families": ["sequential"], "num_beams": 10, "limit": 3, "sasrec": False},
    }  # fmt: skip
    config_path = root / "capped.yaml"
    config_path.write_text(yaml.safe_dump(recipe))
    final = train(load_config(config_path))
    return {"root": root, "config": config_path, "final": final}


def test_training_checkpoint_and_evaluation_use_the_same_capped_names(capped_run):
    from recsysllm.evaluation.cli import main as evaluate_main
    from recsysllm.pipeline import cap_item_names, load_checkpoint_for_inference, prepare_data

    final = capped_run["final"]
    _, tokenizer, catalog, _, _, config = load_checkpoint_for_inference(final)
    assert config.data.item_name_max_tokens == 10  # the checkpoint records the setting
    assert max(len(tokenizer.encode_entity(key)) for key in catalog.item_keys) <= 10
    titles = dict(zip(*_items_columns(config), strict=True))
    assert any(key not in titles.values() for key in catalog.item_keys)  # some were cut
    # Rebuilt from the checkpoint's config and tokenizer: the same names (hash).
    rebuilt = cap_item_names(
        prepare_data(config.data, seed=config.data.seed), config.data, tokenizer
    )
    assert rebuilt.catalog.hash == catalog.hash
    saved = json.loads((final / "catalog.json").read_text())
    assert set(saved["items"]) == set(catalog.item_keys)

    out = capped_run["root"] / "eval" / "results.json"
    code = evaluate_main(["--checkpoint", str(final), "--split", "valid", "--out", str(out)])
    assert code == 0
    document = json.loads(out.read_text())
    assert document["settings"]["item_name_max_tokens"] == 10
    outcomes = [
        json.loads(line) for line in (out.parent / "outcomes.jsonl").read_text().splitlines()
    ]
    listed = {
        item
        for o in outcomes
        if o["system"] == "model" and o["variant"] == "all_items"
        for item, _ in o["top"]
    }
    assert {o["target"] for o in outcomes if o["variant"] == "all_items"} <= set(catalog.item_keys)
    assert listed and listed <= set(catalog.item_keys)


def _items_columns(config):
    from recsysllm.pipeline import prepare_data

    items = prepare_data(config.data, seed=config.data.seed).splits.tables.items
    return items["item"], items["title"]


def test_evaluation_refuses_another_cap(capped_run, tmp_path):
    from recsysllm.evaluation.cli import ConfigMismatchError
    from recsysllm.evaluation.cli import main as evaluate_main

    base = ["--checkpoint", str(capped_run["final"]), "--out", str(tmp_path / "r.json")]
    with pytest.raises(
        ConfigMismatchError, match=r"data\.item_name_max_tokens is 12 .* trained with 10"
    ):
        evaluate_main([*base, "data.item_name_max_tokens=12"])
    with pytest.raises(ConfigMismatchError, match=r"data\.item_name_max_tokens is None"):
        evaluate_main([*base, "data.item_name_max_tokens=null"])
    with pytest.raises(
        ConfigMismatchError,
        match=r"data\.item_name_disambiguation is 'number' .* trained with 'words'",
    ):
        evaluate_main([*base, "data.item_name_disambiguation=number"])


def test_a_checkpoint_from_before_the_settings_keeps_its_names(capped_run, tmp_path):
    """Checkpoints written before data.item_name_disambiguation existed numbered their
    capped names, and those written before data.item_name_max_tokens existed used full
    titles; their config.yaml lacks the key and must not take today's default."""
    from recsysllm.checkpoints import read_checkpoint_config

    assert read_checkpoint_config(capped_run["final"]).data.item_name_disambiguation == "words"
    raw = yaml.safe_load((capped_run["final"] / "config.yaml").read_text())
    del raw["data"]["item_name_disambiguation"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert read_checkpoint_config(tmp_path).data.item_name_disambiguation == "number"
    raw["data"]["item_name_max_tokens"] = None  # uncapped: nothing was named, the default
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    assert read_checkpoint_config(tmp_path).data.item_name_disambiguation == "words"
    # Written before the cap existed: full titles, not today's default cap.
    del raw["data"]["item_name_max_tokens"]
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    read = read_checkpoint_config(tmp_path).data
    assert read.item_name_max_tokens is None and read.item_name_disambiguation == "words"


def test_config_refuses_a_cap_without_room_for_a_word_and_a_suffix():
    from recsysllm.config import DataArgs

    assert DataArgs().item_name_max_tokens == 16  # the default, picked on valid
    assert DataArgs(item_name_max_tokens=4).item_name_max_tokens == 4
    with pytest.raises(ValueError, match=r"data\.item_name_max_tokens.*>= 4"):
        DataArgs(item_name_max_tokens=3)
    assert DataArgs().item_name_disambiguation == "words"
    with pytest.raises(ValueError, match=r"data\.item_name_disambiguation.*number, words"):
        DataArgs(item_name_disambiguation="letters")
