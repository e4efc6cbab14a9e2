"""EntityCatalog: title keys, disambiguation, attribute entities, stable hash, save/load."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from recsysllm.data.catalog import EntityCatalog, UnknownEntityError, attribute_key, item_key_map
from recsysllm.data.tables import RecTables

REPO = Path(__file__).resolve().parent.parent


def make_tables(
    items: list[tuple[str, str]], users: dict[str, list[str]] | None = None
) -> RecTables:
    users = users or {"user": []}
    features = {column: f"is {{value}} ({column})" for column in users if column != "user"}
    return RecTables(
        name="toy",
        interactions=datasets.Dataset.from_dict(
            {
                "user": ["u"],
                "item": [items[0][0]],
                "timestamp": [1],
                "rating": [4.0],
                "review": [""],
                "summary": [""],
            }
        ),
        items=datasets.Dataset.from_dict(
            {"item": [i for i, _ in items], "title": [t for _, t in items]}
        ),
        users=datasets.Dataset.from_dict(
            users, features=datasets.Features({c: datasets.Value("string") for c in users})
        ),
        user_features=features,
    )


def test_duplicate_titles_are_disambiguated_by_raw_id():
    items = [
        ("123", "Heat (1995)"),
        ("7", "Fargo (1996)"),
        ("456", "Heat (1995)"),
        ("9", " Babe (1995) "),
    ]
    keys = item_key_map(make_tables(items).items)
    assert keys == {
        "123": "Heat (1995) [id 123]",
        "7": "Fargo (1996)",
        "456": "Heat (1995) [id 456]",
        "9": "Babe (1995)",  # surrounding whitespace is not part of a title
    }
    catalog = EntityCatalog.from_tables(make_tables(items))
    assert catalog.item_keys == (
        "Babe (1995)",
        "Fargo (1996)",
        "Heat (1995) [id 123]",
        "Heat (1995) [id 456]",
    )
    # Items: the surface text is the key itself.
    assert all(catalog.entity_text(key) == key for key in catalog.item_keys)


def test_empty_title_and_repeated_id_name_the_row():
    with pytest.raises(ValueError, match=r"items row 1 \(item 'b'\): field 'title' is empty"):
        item_key_map(make_tables([("a", "A"), ("b", "  ")]).items, source="toy")
    with pytest.raises(ValueError, match=r"items row 2: field 'item' repeats id 'a'"):
        item_key_map(make_tables([("a", "A"), ("b", "B"), ("a", "C")]).items, source="toy")


def test_attribute_values_become_entities_and_unknown_values_are_skipped():
    users = {
        "user": ["1", "2", "3"],
        "age": ["25-34", "", "25-34"],
        "job": ["writer", "artist", ""],
    }
    catalog = EntityCatalog.from_tables(make_tables([("a", "A")], users))
    assert catalog.attributes == {
        "attr:age=25-34": "25-34",
        "attr:job=writer": "writer",
        "attr:job=artist": "artist",
    }
    assert catalog.segment(attribute_key("job", "artist")).text == "artist"
    assert set(catalog.entities()) == {"A", "attr:age=25-34", "attr:job=writer", "attr:job=artist"}


def test_unknown_entity_error_names_the_entity():
    catalog = EntityCatalog.from_tables(make_tables([("a", "Heat (1995)")]))
    with pytest.raises(UnknownEntityError, match=r"item 'Heat \(1996\)' is not in catalog 'toy'"):
        catalog.item_segment("Heat (1996)")
    with pytest.raises(UnknownEntityError, match=r"entity 'attr:age=3' is not in catalog"):
        catalog.segment("attr:age=3")
    with pytest.raises(UnknownEntityError, match="'Nope'"):
        catalog.item_segments(["Heat (1995)", "Nope"])


def test_hash_is_order_independent_and_sensitive_to_changes():
    items = [("1", "Heat (1995)"), ("2", "Fargo (1996)"), ("3", "Babe (1995)")]
    users = {"user": ["1", "2"], "age": ["18-24", "25-34"]}
    base = EntityCatalog.from_tables(make_tables(items, users)).hash
    reordered = EntityCatalog.from_tables(
        make_tables(items[::-1], {"user": ["2", "1"], "age": ["25-34", "18-24"]})
    ).hash
    assert reordered == base
    retitled = EntityCatalog.from_tables(
        make_tables([("1", "Heat (1996)"), *items[1:]], users)
    ).hash
    new_attribute = EntityCatalog.from_tables(
        make_tables(items, {"user": ["1", "2"], "age": ["18-24", "35-44"]})
    ).hash
    new_raw_id = EntityCatalog.from_tables(
        make_tables([("9", "Heat (1995)"), *items[1:]], users)
    ).hash
    assert len({base, retitled, new_attribute, new_raw_id}) == 4


def test_hash_is_the_same_in_another_process():
    catalog = EntityCatalog(
        "toy", {"Heat (1995)": "1", "Fargo (1996)": "2"}, {"attr:age=1-2": "1-2"}
    )
    code = (
        "from recsysllm.data.catalog import EntityCatalog;"
        "print(EntityCatalog('toy', {'Fargo (1996)': '2', 'Heat (1995)': '1'}, {'attr:age=1-2': '1-2'}).hash)"
    )
    env = dict(os.environ, PYTHONHASHSEED="12345", PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == catalog.hash


def test_save_load_roundtrip_and_tampering(tmp_path):
    catalog = EntityCatalog.from_tables(
        make_tables([("1", "Heat (1995)"), ("2", "Heat (1995)")], {"user": ["1"], "age": ["18-24"]})
    )
    path = tmp_path / "sub" / "catalog.json"
    catalog.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["catalog.json"]  # no temp file left behind
    loaded = EntityCatalog.load(path)
    assert loaded.hash == catalog.hash
    assert loaded.item_ids == catalog.item_ids and loaded.attributes == catalog.attributes

    payload = json.loads(path.read_text())
    payload["items"]["Heat (1995) [id 1]"] = "3"
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"catalog\.json: field 'hash'"):
        EntityCatalog.load(path)
    del payload["attributes"]
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"catalog\.json: missing field 'attributes'"):
        EntityCatalog.load(path)
    path.write_text('{"name": "toy",\n "items": [')
    with pytest.raises(ValueError, match=r"catalog\.json: line 2: not valid JSON"):
        EntityCatalog.load(path)


def test_catalog_of_filtered_tables_without_user_features():
    """A filtered data set with no user features (Amazon, generic) builds a catalog.

    Regression: selecting zero user columns of a filtered datasets.Dataset raised IndexError.
    """
    import datasets

    from recsysllm.data.catalog import EntityCatalog
    from recsysllm.data.tables import RecTables

    interactions = datasets.Dataset.from_dict(
        {
            "user": ["u1"],
            "item": ["a"],
            "timestamp": [1],
            "rating": [5.0],
            "review": [""],
            "summary": [""],
        }
    )
    items = datasets.Dataset.from_dict({"item": ["a", "b"], "title": ["Alpha", "Beta"]})
    # filtered: has an indices map
    users = datasets.Dataset.from_dict({"user": ["u1", "u2", "u3"]}).select([0, 2])
    tables = RecTables("amazon-like", interactions, items, users)
    catalog = EntityCatalog.from_tables(tables)
    assert catalog.item_keys == ("Alpha", "Beta")
    assert catalog.attributes == {}
