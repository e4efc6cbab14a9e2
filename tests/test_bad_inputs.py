"""Bad-input corpus: damaged copies of small generated files, each refused in one line.

Every case names the file, the line (text) or row, and the field. The files are built
here from ``bad_input_corpus`` (Amazon 2018 layout, a generic CSV), never downloaded.
"""

from __future__ import annotations

import gzip
import json
import math

import pytest
from bad_input_corpus import amazon_2018_records, write_json_lines

from recsysllm.data.sources import load_amazon_reviews, load_generic_table

# ----------------------------------------------------------------------------- Amazon


def _reviews():
    reviews, _ = amazon_2018_records(n_users=6, n_items=10, per_user=2)
    return reviews


def _set(field, value, line=2):
    def damage(records):
        records[line - 1][field] = value
        return records

    return damage


AMAZON_CASES = {
    "nan rating": (_set("overall", math.nan), r"line 2: field 'overall': missing"),
    "infinite rating": (_set("overall", math.inf), r"line 2: field 'overall': non-finite rating"),
    "rating above the scale": (
        _set("overall", 7.0),
        r"line 2: field 'overall': rating 7 is outside the scale 1..5",
    ),
    "negative rating": (
        _set("overall", -1, line=3),
        r"line 3: field 'overall': rating -1 is outside",
    ),
    "timestamp in milliseconds": (
        _set("unixReviewTime", 1_400_000_000_000),
        r"line 2: field 'unixReviewTime': timestamp 1400000000000 is outside 1970-01-01..2100-01-01",
    ),
    "overflowing timestamp": (
        _set("unixReviewTime", 10**30),
        r"line 2: field 'unixReviewTime': timestamp 1000000000000000000000000000000 is outside",
    ),
    "list id": (
        _set("reviewerID", ["A1", "A2"]),
        r"line 2: field 'reviewerID': expected a scalar id",
    ),
    "dict id": (_set("asin", {"id": "B1"}, line=4), r"line 4: field 'asin': expected a scalar id"),
}


@pytest.mark.parametrize("case", sorted(AMAZON_CASES))
def test_damaged_amazon_review_values_name_file_line_and_field(tmp_path, case):
    damage, message = AMAZON_CASES[case]
    path = write_json_lines(tmp_path / "Kitchen_5.json", damage(_reviews()))
    with pytest.raises(ValueError, match=rf"Kitchen_5\.json: {message}") as error:
        load_amazon_reviews(path)
    assert "\n" not in str(error.value)


def test_non_utf8_bytes_name_file_and_line(tmp_path):
    path = write_json_lines(tmp_path / "Kitchen_5.json", _reviews())
    lines = path.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"kettle", b"k\xe9ttle", 1)  # latin-1 e-acute
    path.write_bytes(b"".join(lines))
    with pytest.raises(
        ValueError, match=r"Kitchen_5\.json: line 3: field '<bytes>': not utf-8 text: byte 0xe9"
    ):
        load_amazon_reviews(path)


def test_truncated_gzip_names_file_and_line(tmp_path):
    path = write_json_lines(tmp_path / "Kitchen_5.json.gz", _reviews(), gz=True)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(
        ValueError,
        match=r"Kitchen_5\.json\.gz: line \d+: field '<file>': the gzip stream is truncated",
    ):
        load_amazon_reviews(path)


@pytest.mark.parametrize("content", [b"", b"\n\n", gzip.compress(b"")])
def test_empty_review_file_is_an_error(tmp_path, content):
    path = tmp_path / "Kitchen_5.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"Kitchen_5\.json: field '<rows>': no records"):
        load_amazon_reviews(path)


# ----------------------------------------------------------------------------- generic CSV

HEADER = "customer,product,stars,ts\n"
GOOD_ROWS = ["u1,i1,5,1500000000\n", "u1,i2,4,1500000100\n", "u2,i1,3,2021-03-04T10:00:00\n"]


def _generic(tmp_path, text: str | bytes, **extra):
    path = tmp_path / "orders.csv"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    mapping = {
        "interactions": {
            "path": "orders.csv",
            "user": "customer",
            "item": "product",
            "rating": "stars",
            "timestamp": "ts",
            **extra,
        }
    }
    return load_generic_table(mapping, base_dir=tmp_path)


def test_good_csv_loads(tmp_path):
    tables = _generic(tmp_path, HEADER + "".join(GOOD_ROWS), rating_scale=[1, 5])
    assert tables.interactions.num_rows == 3


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("u3,i2,5,1500000200,oops\n", r"line 5: field '<row>': 5 fields but the header has 4"),
        ("u3,i2,5\n", r"line 5: field '<row>': 3 fields but the header has 4"),
        ("u3,Kettle, large,5,1500000200\n", r"line 5: field '<row>': 5 fields .*unquoted ','"),
        ("u3,i2,inf,1500000200\n", r"line 5: field 'stars': non-finite rating"),
        ("u3,i2,4,2999-01-01T00:00:00\n", r"line 5: field 'ts': timestamp .* is outside"),
    ],
)
def test_damaged_csv_rows_name_file_line_and_field(tmp_path, row, message):
    with pytest.raises(ValueError, match=rf"orders\.csv: {message}"):
        _generic(tmp_path, HEADER + "".join(GOOD_ROWS) + row)


def test_rating_outside_the_declared_scale(tmp_path):
    with pytest.raises(
        ValueError, match=r"orders\.csv: line 3: field 'stars': rating 9 is outside the scale 1..5"
    ):
        _generic(tmp_path, HEADER + GOOD_ROWS[0] + "u1,i2,9,1500000100\n", rating_scale=[1, 5])
    with pytest.raises(
        ValueError, match=r"field interactions.rating_scale: expected \[low, high\]"
    ):
        _generic(tmp_path, HEADER + GOOD_ROWS[0], rating_scale=[5, 1])


def test_header_only_and_empty_csv_are_errors(tmp_path):
    with pytest.raises(ValueError, match=r"orders\.csv: field '<rows>': no data rows"):
        _generic(tmp_path, HEADER)
    with pytest.raises(ValueError, match=r"orders\.csv: field '<header>': the file is empty"):
        _generic(tmp_path, "")


def test_non_utf8_csv_names_line(tmp_path):
    with pytest.raises(ValueError, match=r"orders\.csv: line 3: field '<bytes>': not utf-8"):
        _generic(
            tmp_path,
            (HEADER + GOOD_ROWS[0]).encode() + "u1,caf\xe9,4,1500000100\n".encode("latin-1"),
        )


def test_non_scalar_id_in_jsonl(tmp_path):
    path = tmp_path / "orders.jsonl"
    path.write_text(
        json.dumps({"customer": "u1", "product": "i1"}) + "\n"
        + json.dumps({"customer": {"id": 7}, "product": "i2"}) + "\n"
    )  # fmt: skip
    mapping = {"interactions": {"path": "orders.jsonl", "user": "customer", "item": "product"}}
    with pytest.raises(
        ValueError, match=r"orders\.jsonl: line 2: field 'customer': expected a scalar id"
    ):
        load_generic_table(mapping, base_dir=tmp_path)


def test_truncated_parquet_names_the_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "orders.parquet"
    pq.write_table(pa.table({"customer": ["u1", "u2"], "product": ["i1", "i2"]}), path)
    path.write_bytes(path.read_bytes()[:-20])
    mapping = {"interactions": {"path": "orders.parquet", "user": "customer", "item": "product"}}
    with pytest.raises(
        ValueError, match=r"orders\.parquet: field '<file>': not a readable Parquet"
    ):
        load_generic_table(mapping, base_dir=tmp_path)
