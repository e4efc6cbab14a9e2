"""Sources: raw files of each format -> RecTables, checked against hand-written expectations."""

from __future__ import annotations

import gzip
import json
import math
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import fetch_or_skip

from recsysllm.data.sources import (
    age_bucket,
    load_amazon_reviews,
    load_clothing_reviews,
    load_dataset_by_name,
    load_generic_table,
    load_movielens_100k,
)
from recsysllm.data.tables import INTERACTION_COLUMNS, ITEM_COLUMNS


def rows(dataset) -> list[dict]:
    return [dict(row) for row in dataset]


def check_contract(tables) -> None:
    """Column names and Arrow types exactly as tables.py says."""
    features = tables.interactions.features
    assert {name: features[name].dtype for name in INTERACTION_COLUMNS} == INTERACTION_COLUMNS
    assert tables.interactions.column_names == list(INTERACTION_COLUMNS)
    assert tables.items.column_names == [*ITEM_COLUMNS, *tables.item_attributes]
    assert tables.users.column_names == ["user", *tables.user_features]
    assert all(title for title in tables.items["title"])
    assert len(set(tables.items["item"])) == len(tables.items)
    assert len(set(tables.users["user"])) == len(tables.users)
    # memory-mapped Arrow files, not tables held in Python lists
    assert all(table.cache_files for table in (tables.interactions, tables.items, tables.users))


# ----------------------------------------------------------------------------- MovieLens

# (id, title without year, year, genres) as GroupLens / RecBole would store them
ML_MOVIES = [
    ("1", "Toy Story", "1995", ["Animation", "Children's", "Comedy"]),
    ("2", "GoldenEye", "1995", ["Action", "Adventure", "Thriller"]),
    ("267", "unknown", "", ["unknown"]),
]
ML_USERS = [("1", "24", "M", "technician", "85711"), ("2", "53", "F", "other", "94043")]
ML_RATINGS = [
    ("1", "1", "5", "874965758"),
    ("2", "2", "3", "888550871"),
    ("1", "267", "4", "874965478"),
]
ML_GENRE_NAMES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western",
]  # fmt: skip


def write_movielens_raw(directory: Path, ratings=ML_RATINGS) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    item_lines = []
    for item_id, title, year, genres in ML_MOVIES:
        full_title = f"{title} ({year})" if year else title
        date = f"01-Jan-{year}" if year else ""
        flags = ["1" if g in genres else "0" for g in ML_GENRE_NAMES]
        item_lines.append("|".join([item_id, full_title, date, "", "http://imdb", *flags]))
    (directory / "u.item").write_text("\n".join(item_lines) + "\n", encoding="latin-1")
    (directory / "u.user").write_text("\n".join("|".join(u) for u in ML_USERS) + "\n")
    (directory / "u.data").write_text("\n".join("\t".join(r) for r in ratings) + "\n")
    return directory


def write_movielens_atomic(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for item_id, title, year, genres in ML_MOVIES:
        # RecBole's own spelling of the untitled movie
        title, year = ("unkonwn", "unkonwn") if title == "unknown" else (title, year)
        item_lines.append("\t".join([item_id, title, year, " ".join(genres)]))
    (directory / "ml-100k.item").write_text("\n".join(item_lines) + "\n")
    user_header = "user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"
    (directory / "ml-100k.user").write_text(
        "\n".join([user_header, *("\t".join(u) for u in ML_USERS)]) + "\n"
    )
    inter_header = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
    (directory / "ml-100k.inter").write_text(
        "\n".join([inter_header, *("\t".join(r) for r in ML_RATINGS)]) + "\n"
    )
    return directory


ML_EXPECTED_ITEMS = [
    {
        "item": "1",
        "title": "Toy Story (1995)",
        "year": "1995",
        "genres": "Animation, Children's, Comedy",
    },
    {
        "item": "2",
        "title": "GoldenEye (1995)",
        "year": "1995",
        "genres": "Action, Adventure, Thriller",
    },
    {"item": "267", "title": "item 267", "year": "", "genres": "unknown"},
]
ML_EXPECTED_USERS = [
    {"user": "1", "age": "18-24", "gender": "male", "occupation": "technician", "zip": "85711"},
    {"user": "2", "age": "45-54", "gender": "female", "occupation": "other", "zip": "94043"},
]


@pytest.mark.parametrize("writer", [write_movielens_raw, write_movielens_atomic])
def test_movielens_formats_give_the_same_tables(tmp_path, writer):
    tables = load_movielens_100k(writer(tmp_path / "ml"))
    check_contract(tables)
    assert tables.name == "ml-100k"
    assert rows(tables.items) == ML_EXPECTED_ITEMS
    assert rows(tables.users) == ML_EXPECTED_USERS
    assert rows(tables.interactions) == [
        {
            "user": "1",
            "item": "1",
            "timestamp": 874965758,
            "rating": 5.0,
            "review": "",
            "summary": "",
        },
        {
            "user": "2",
            "item": "2",
            "timestamp": 888550871,
            "rating": 3.0,
            "review": "",
            "summary": "",
        },
        {
            "user": "1",
            "item": "267",
            "timestamp": 874965478,
            "rating": 4.0,
            "review": "",
            "summary": "",
        },
    ]
    assert tables.notes == {"items_without_title": 1}
    assert tables.item_attributes == ("year", "genres")
    assert set(tables.user_features) == {"age", "gender", "occupation", "zip"}
    assert all("{value}" in template for template in tables.user_features.values())
    assert not tables.has_reviews


def test_movielens_raw_title_is_latin1(tmp_path):
    directory = write_movielens_raw(tmp_path / "ml")
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)
    with open(directory / "u.item", "a", encoding="latin-1") as f:
        f.write(f"3|Misérables, Les (1995)|01-Jan-1995||http://imdb|{flags}\n")
    items = rows(load_movielens_100k(directory).items)
    assert items[-1] == {
        "item": "3",
        "title": "Misérables, Les (1995)",
        "year": "1995",
        "genres": "Drama",
    }


def test_movielens_non_numeric_rating_names_file_line_field(tmp_path):
    ratings = [*ML_RATINGS[:2], ("1", "267", "four", "874965478")]
    directory = write_movielens_raw(tmp_path / "ml", ratings=ratings)
    with pytest.raises(ValueError, match=r"u\.data: line 3: field 'rating': not a number: 'four'"):
        load_movielens_100k(directory)


def test_movielens_unknown_item_is_an_error(tmp_path):
    directory = write_movielens_raw(tmp_path / "ml", ratings=[*ML_RATINGS, ("2", "999", "1", "5")])
    with pytest.raises(
        ValueError, match=r"u\.data: line 4: field 'item id': '999' is not in u\.item"
    ):
        load_movielens_100k(directory)


def test_movielens_atomic_missing_column_names_file_line_field(tmp_path):
    directory = write_movielens_atomic(tmp_path / "ml")
    text = (directory / "ml-100k.inter").read_text().replace("rating:float", "stars:float")
    (directory / "ml-100k.inter").write_text(text)
    with pytest.raises(ValueError, match=r"ml-100k\.inter: line 1: field 'rating': column missing"):
        load_movielens_100k(directory)


def test_movielens_missing_directory_is_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="recsysllm data fetch movielens-100k"):
        load_movielens_100k(tmp_path)


def test_age_buckets_at_their_boundaries():
    expected = {7: "under 18", 17: "under 18", 18: "18-24", 24: "18-24", 25: "25-34", 34: "25-34",
                35: "35-44", 45: "45-54", 54: "45-54", 55: "55-64", 64: "55-64", 65: "65+", 99: "65+"}  # fmt: skip
    assert {age: age_bucket(age) for age in expected} == expected


# ----------------------------------------------------------------------------- Amazon


def write_lines(path: Path, lines: list[str]) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)
    return path


def review(user, asin, overall, time, text="fine", summary="ok") -> str:
    record = {"reviewerID": user, "asin": asin, "overall": overall, "unixReviewTime": time}
    record.update({"reviewText": text, "summary": summary, "helpful": [0, 0], "reviewTime": "x"})
    return json.dumps(record)


def write_amazon_2014(directory: Path) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    reviews = write_lines(
        directory / "reviews_Beauty_5.json.gz",
        [
            review("U1", "B001", 5.0, 1300000000, "Great lipstick, lasts all day.", "Love it"),
            review("U2", "B002", 3.0, 1300000500),
            review("U1", "B003", 4.0, 1300001000),
            review("U3", "B004", 1.0, 1300002000),
        ],
    )
    # 2014 meta lines are Python literals (single quotes), not JSON.
    meta_records = [
        {"asin": "B001", "title": "Hasbro Red Lipstick", "brand": "Hasbro", "price": 9.5,
         "categories": [["Beauty", "Makeup", "Lips"], ["Beauty", "Makeup"]], "related": {"also_bought": ["B002"]}},
        {"asin": "B002", "brand": "L'Oreal", "categories": [["Beauty", "Hair Care"]]},  # no title
        {"asin": "B999", "title": "Never reviewed"},  # not in the 5-core
        {"asin": "B003", "title": "Nail Polish 'Ruby'", "categories": [["Beauty"]]},
    ]  # fmt: skip
    meta = write_lines(directory / "meta_Beauty.json.gz", [repr(r) for r in meta_records])
    return reviews, meta


def test_amazon_2014_python_literal_meta_and_title_fallback(tmp_path, caplog):
    reviews, meta = write_amazon_2014(tmp_path / "amazon")
    with caplog.at_level("WARNING"):
        tables = load_amazon_reviews(reviews, meta, category="Beauty")
    check_contract(tables)
    assert tables.name == "amazon-beauty"
    assert tables.has_reviews and tables.user_features == {}
    assert rows(tables.items) == [
        {"item": "B001", "title": "Hasbro Red Lipstick", "brand": "Hasbro",
         "categories": "Beauty, Makeup, Lips", "price": "9.5"},
        {"item": "B002", "title": "L'Oreal item B002", "brand": "L'Oreal", "categories": "Beauty, Hair Care", "price": ""},
        {"item": "B003", "title": "Nail Polish 'Ruby'", "brand": "", "categories": "Beauty", "price": ""},
        {"item": "B004", "title": "item B004", "brand": "", "categories": "", "price": ""},  # no meta line
    ]  # fmt: skip
    assert tables.notes["items_without_title"] == 2
    assert tables.notes["meta_items_without_reviews"] == 1
    assert rows(tables.users) == [{"user": "U1"}, {"user": "U2"}, {"user": "U3"}]
    first = rows(tables.interactions)[0]
    assert first == {"user": "U1", "item": "B001", "timestamp": 1300000000, "rating": 5.0,
                     "review": "Great lipstick, lasts all day.", "summary": "Love it"}  # fmt: skip
    assert len(tables.interactions) == 4
    assert sum("2 item(s) without title" in r.getMessage() for r in caplog.records) == 1


def test_amazon_2018_json_meta_plain_files(tmp_path):
    reviews = write_lines(
        tmp_path / "Luxury_Beauty_5.json",
        [
            json.dumps({"overall": 4.0, "verified": True, "reviewerID": "A", "asin": "X1",
                        "style": {"Size:": " 1 oz"}, "reviewText": "Smells nice", "summary": "Nice",
                        "unixReviewTime": 1472688000}),
            # 2018 reviews may lack text and summary
            json.dumps({"overall": 2.0, "reviewerID": "B", "asin": "X1", "unixReviewTime": 1472688001}),
        ],
    )  # fmt: skip
    meta = write_lines(
        tmp_path / "meta_Luxury_Beauty.json",
        [
            json.dumps({"asin": "X1", "title": "Rose Perfume", "brand": "Acme", "category": ["Luxury Beauty", "Fragrance"], "price": "$13.99"}),
            json.dumps({"asin": "X1", "title": "Duplicate line"}),
        ],
    )  # fmt: skip
    tables = load_amazon_reviews(reviews, meta)
    check_contract(tables)
    assert rows(tables.items) == [
        {"item": "X1", "title": "Rose Perfume", "brand": "Acme", "categories": "Luxury Beauty, Fragrance", "price": "$13.99"}
    ]  # fmt: skip
    assert [(r["review"], r["summary"]) for r in rows(tables.interactions)] == [
        ("Smells nice", "Nice"),
        ("", ""),
    ]
    assert tables.notes == {"items_without_title": 0, "reviews_without_text": 1,
                            "meta_items_without_reviews": 0, "duplicate_meta_lines": 1}  # fmt: skip


def test_amazon_broken_json_line_names_file_line_field(tmp_path):
    reviews = write_lines(
        tmp_path / "reviews_Beauty_5.json.gz",
        [
            review("U1", "B001", 5.0, 1),
            '{"reviewerID": "U2", "asin": "B002", "overall": 4.0,',
            review("U3", "B1", 1, 2),
        ],
    )
    with pytest.raises(ValueError, match=r"reviews_Beauty_5\.json\.gz: line 2: field '<record>'"):
        load_amazon_reviews(reviews)


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"reviewerID": "U2", "asin": "B2", "unixReviewTime": 5}', r"line 2: field 'overall': missing"),
        ('{"reviewerID": "U2", "asin": "B2", "overall": "five", "unixReviewTime": 5}', r"line 2: field 'overall': not a number"),
        ('{"reviewerID": "U2", "asin": "B2", "overall": 5, "unixReviewTime": "soon"}', r"line 2: field 'unixReviewTime': not a timestamp"),
    ],
)  # fmt: skip
def test_amazon_bad_fields_name_file_line_field(tmp_path, bad_line, message):
    reviews = write_lines(tmp_path / "r.json", [review("U1", "B1", 5.0, 1), bad_line])
    with pytest.raises(ValueError, match=r"r\.json: " + message):
        load_amazon_reviews(reviews)


def test_amazon_by_name_finds_files_in_a_directory(tmp_path):
    write_amazon_2014(tmp_path / "amazon")
    tables = load_dataset_by_name("amazon", tmp_path / "amazon", category="Beauty")
    assert (
        tables.name == "amazon-beauty"
        and len(tables.items) == 4
        and tables.notes["items_without_title"] == 2
    )
    with pytest.raises(ValueError, match="give the category"):
        load_dataset_by_name("amazon", tmp_path / "amazon")


# ----------------------------------------------------------------------------- generic


def write_generic(directory: Path, interactions_format: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    records = [
        {
            "cid": "c1",
            "pid": 10,
            "when": "2021-03-04T10:00:00",
            "stars": "4.5",
            "text": "good",
            "head": "ok",
        },
        {"cid": "c2", "pid": 11, "when": "1600000000", "stars": "2", "text": "", "head": "meh"},
        {"cid": "c1", "pid": 12, "when": "1600000100", "stars": "5", "text": "super", "head": ""},
    ]
    if interactions_format == "csv":
        header = list(records[0])
        lines = [",".join(header)] + [",".join(str(r[k]) for k in header) for r in records]
        (directory / "orders.csv").write_text("\n".join(lines) + "\n")
        path = "orders.csv"
    elif interactions_format == "parquet":
        pq.write_table(pa.Table.from_pylist(records), directory / "orders.parquet")
        path = "orders.parquet"
    else:
        write_lines(directory / "orders.jsonl.gz", [json.dumps(r) for r in records])
        path = "orders.jsonl.gz"
    pq.write_table(
        pa.Table.from_pylist(
            [
                {"pid": 10, "name": "Blue Mug", "brand": "Acme"},
                {"pid": 11, "name": None, "brand": "Zed"},
            ]
        ),
        directory / "products.parquet",
    )
    write_lines(
        directory / "customers.jsonl", [json.dumps({"cid": "c1", "age": 31, "city": "Lyon"})]
    )
    mapping = (
        "name: shop\n"
        f"interactions: {{path: {path}, user: cid, item: pid, timestamp: when, rating: stars, review: text, summary: head}}\n"
        "items: {path: products.parquet, item: pid, title: name, attributes: [brand]}\n"
        "users:\n  path: customers.jsonl\n  user: cid\n  features:\n    age: 'is {value} years old'\n    city: 'lives in {value}'\n"
    )
    (directory / "mapping.yaml").write_text(mapping)
    return directory / "mapping.yaml"


@pytest.mark.parametrize("interactions_format", ["csv", "parquet", "jsonl"])
def test_generic_table_from_yaml_mapping(tmp_path, interactions_format):
    tables = load_generic_table(write_generic(tmp_path / "shop", interactions_format))
    check_contract(tables)
    assert tables.name == "shop" and tables.has_reviews
    assert rows(tables.interactions) == [
        # 2021-03-04T10:00:00 UTC = 1614852000
        {
            "user": "c1",
            "item": "10",
            "timestamp": 1614852000,
            "rating": 4.5,
            "review": "good",
            "summary": "ok",
        },
        {
            "user": "c2",
            "item": "11",
            "timestamp": 1600000000,
            "rating": 2.0,
            "review": "",
            "summary": "meh",
        },
        {
            "user": "c1",
            "item": "12",
            "timestamp": 1600000100,
            "rating": 5.0,
            "review": "super",
            "summary": "",
        },
    ]
    assert rows(tables.items) == [
        {"item": "10", "title": "Blue Mug", "brand": "Acme"},
        {"item": "11", "title": "item 11", "brand": "Zed"},  # title missing in the items file
        {"item": "12", "title": "item 12", "brand": ""},  # not in the items file
    ]
    assert rows(tables.users) == [
        {"user": "c1", "age": "31", "city": "Lyon"},
        {"user": "c2", "age": "", "city": ""},
    ]
    assert tables.user_features == {"age": "is {value} years old", "city": "lives in {value}"}
    assert tables.notes == {"items_without_title": 2, "users_without_features": 1}


def test_generic_dict_mapping_with_defaults(tmp_path):
    (tmp_path / "log.csv").write_text("u,i\na,x\nb,x\n")
    tables = load_generic_table(
        {"interactions": {"path": "log.csv", "user": "u", "item": "i"}}, tmp_path
    )
    check_contract(tables)
    inter = rows(tables.interactions)
    assert [r["timestamp"] for r in inter] == [-1, -1]
    assert all(math.isnan(r["rating"]) for r in inter)
    assert rows(tables.items) == [{"item": "x", "title": "item x"}]
    assert not tables.has_reviews and tables.notes == {"items_without_title": 1}


def test_generic_missing_column_names_file_line_field(tmp_path):
    (tmp_path / "log.csv").write_text("u,i\na,x\n")
    mapping = {"interactions": {"path": "log.csv", "user": "u", "item": "i", "rating": "stars"}}
    with pytest.raises(ValueError, match=r"log\.csv: line 1: field 'stars': column missing"):
        load_generic_table(mapping, tmp_path)


def test_generic_non_numeric_rating_names_file_line_field(tmp_path):
    (tmp_path / "log.csv").write_text('u,i,stars\na,x,5\nb,y,"4,5"\n')
    mapping = {"interactions": {"path": "log.csv", "user": "u", "item": "i", "rating": "stars"}}
    with pytest.raises(ValueError, match=r"log\.csv: line 3: field 'stars': not a number: '4,5'"):
        load_generic_table(mapping, tmp_path)


def test_generic_jsonl_missing_field_and_unknown_key(tmp_path):
    write_lines(tmp_path / "log.jsonl", [json.dumps({"u": "a", "i": "x"}), json.dumps({"u": "b"})])
    with pytest.raises(ValueError, match=r"log\.jsonl: line 2: field 'i': missing"):
        load_generic_table(
            {"interactions": {"path": "log.jsonl", "user": "u", "item": "i"}}, tmp_path
        )
    with pytest.raises(ValueError, match=r"interactions\.itme: unknown key"):
        load_generic_table(
            {"interactions": {"path": "log.jsonl", "user": "u", "itme": "i"}}, tmp_path
        )


# ----------------------------------------------------------------------------- clothing


def test_clothing_reviews_parquet(tmp_path):
    table = pa.Table.from_pylist(
        [
            {"Clothing ID": 1077, "Age": 60, "Title": "Some flaws", "Review Text": "Too long.", "Rating": 3,
             "Recommended IND": 0, "Positive Feedback Count": 0, "Division Name": "General",
             "Department Name": "Dresses", "Class Name": "Dresses"},
            {"Clothing ID": 767, "Age": 33, "Title": None, "Review Text": "Silky", "Rating": 4,
             "Recommended IND": 1, "Positive Feedback Count": 0, "Division Name": "Initmates",
             "Department Name": "Intimate", "Class Name": "Intimates"},
            {"Clothing ID": 1077, "Age": 21, "Title": "Love", "Review Text": None, "Rating": 5,
             "Recommended IND": 1, "Positive Feedback Count": 2, "Division Name": "General Petite",
             "Department Name": "Dresses", "Class Name": "Dresses"},
            {"Clothing ID": 72, "Age": 40, "Title": "Nice", "Review Text": "ok", "Rating": 4,
             "Recommended IND": 1, "Positive Feedback Count": 0, "Division Name": None,
             "Department Name": None, "Class Name": None},
        ]
    )  # fmt: skip
    pq.write_table(
        table, tmp_path / "WomensClothingE-CommerceReviews.parquet.brotli", compression="brotli"
    )
    tables = load_clothing_reviews(tmp_path)  # a directory holding the fetched file
    check_contract(tables)
    assert rows(tables.items) == [
        {"item": "1077", "title": "Dresses #1077", "department": "Dresses", "class": "Dresses"},
        {"item": "767", "title": "Intimates #767", "department": "Intimate", "class": "Intimates"},
        {"item": "72", "title": "item #72", "department": "", "class": ""},
    ]
    assert rows(tables.users) == [
        {"user": "0", "age": "55-64"}, {"user": "1", "age": "25-34"}, {"user": "2", "age": "18-24"}, {"user": "3", "age": "35-44"}
    ]  # fmt: skip
    assert rows(tables.interactions)[:3] == [
        {
            "user": "0",
            "item": "1077",
            "timestamp": -1,
            "rating": 3.0,
            "review": "Too long.",
            "summary": "Some flaws",
        },
        {
            "user": "1",
            "item": "767",
            "timestamp": -1,
            "rating": 4.0,
            "review": "Silky",
            "summary": "",
        },
        {
            "user": "2",
            "item": "1077",
            "timestamp": -1,
            "rating": 5.0,
            "review": "",
            "summary": "Love",
        },
    ]
    assert tables.notes == {"items_without_title": 1} and tables.has_reviews
    assert tables.user_features == {"age": "is {value} years old"}


def test_clothing_bad_age_names_file_row_field(tmp_path):
    path = tmp_path / "c.parquet"
    row = {"Clothing ID": 1, "Title": "t", "Review Text": "r", "Rating": 5}
    row |= {"Department Name": "Tops", "Class Name": "Knits"}
    pq.write_table(pa.Table.from_pylist([{**row, "Age": "33"}, {**row, "Age": "old"}]), path)
    with pytest.raises(
        ValueError, match=r"c\.parquet: row 1: field 'Age': not an integer age: 'old'"
    ):
        load_clothing_reviews(path)


def test_clothing_missing_column_names_file_and_field(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.Table.from_pylist([{"Clothing ID": 1, "Age": 30}]), path)
    with pytest.raises(ValueError, match=r"c\.parquet: field 'Title': column missing"):
        load_clothing_reviews(path)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ValueError, match="unknown data set 'netflix'"):
        load_dataset_by_name("netflix", tmp_path)


# ----------------------------------------------------------------------------- real data


@pytest.mark.network
def test_real_movielens_100k():
    tables = load_dataset_by_name("movielens-100k", fetch_or_skip("movielens-100k", "ml-100k"))
    check_contract(tables)
    assert (len(tables.users), len(tables.items), len(tables.interactions)) == (943, 1682, 100_000)
    assert tables.items[0]["title"] == "Toy Story (1995)"
    assert tables.notes == {"items_without_title": 1}  # movie 267 is "unknown"
    assert set(tables.interactions.unique("rating")) == {1.0, 2.0, 3.0, 4.0, 5.0}
    assert set(tables.users.unique("gender")) == {"male", "female"}


@pytest.mark.network
def test_real_clothing_reviews():
    tables = load_dataset_by_name(
        "clothing-reviews", fetch_or_skip("clothing-reviews", "clothing-reviews")
    )
    check_contract(tables)
    assert len(tables.interactions) == 23_486 == len(tables.users)
    assert len(tables.items) == 1206
    assert tables.notes["items_without_title"] == 7  # items whose class name is never given
