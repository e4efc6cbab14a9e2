"""Raw data files -> :class:`~recsysllm.data.tables.RecTables`.

One loader per source format, each returning the three tables of ``tables.py``
(interactions, items, users) with exactly its column contract:

- :func:`load_movielens_100k`: GroupLens raw files (``u.data``, ``u.item``, ``u.user``)
  or RecBole atomic files (``ml-100k.inter``, ``.item``, ``.user``), auto-detected.
- :func:`load_amazon_reviews`: Amazon review 5-core files, 2014 release (meta lines are
  Python literals) or 2018 release (JSON lines), gzipped or plain.
- :func:`load_clothing_reviews`: Women's E-Commerce Clothing Reviews (parquet or CSV).
- :func:`load_generic_table`: your own CSV / TSV / Parquet / JSONL files, described by a
  small YAML mapping (format below).
- :func:`load_dataset_by_name`: dispatch by data set name.

Tables are streamed in batches into Arrow files in a per-process temporary directory
and memory-mapped (``datasets.Dataset.from_file``), so a large catalog never sits in
Python lists. Bad input raises ``ValueError`` naming the file, the line (1-based, text
files) or row (0-based, Parquet), and the field. Nothing is dropped silently: fallbacks
are counted in ``RecTables.notes``.

Generic YAML mapping (paths relative to the YAML file; only ``interactions.path``,
``interactions.user`` and ``interactions.item`` are required)::

    name: my-shop
    interactions:
      path: orders.csv          # .csv, .tsv, .parquet or .jsonl/.json (JSON lines); text may be .gz
      user: customer_id
      item: product_id
      timestamp: ts             # integer seconds since epoch or ISO 8601 ("2021-03-04T10:00:00")
      rating: stars
      rating_scale: [1, 5]      # ratings outside it are refused (default: any finite number)
      review: review_text
      summary: headline
    items:
      path: products.parquet
      item: product_id
      title: name               # items without a title get the counted fallback "item <id>"
      attributes: [brand, category]
    users:
      path: customers.jsonl
      user: customer_id
      features:                 # column -> template that textualizes its value
        age: "is {value} years old"
        city: "lives in {value}"

Absent interaction columns get the markers of ``tables.py`` (timestamp -1, rating NaN,
review/summary ""); ``has_reviews`` is true when ``review`` is mapped.
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import logging
import math
import re
import tempfile
import uuid
import zlib
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from recsysllm.data.tables import INTERACTION_COLUMNS, ITEM_COLUMNS, USER_COLUMNS, RecTables
from recsysllm.files import read_yaml

logger = logging.getLogger(__name__)

ML_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
ML_USER_FEATURES = {
    "age": "is {value} years old",
    "gender": "is {value}",
    "occupation": "works as {value}",
    "zip": "lives in zip code {value}",
}
AGE_FEATURE = {"age": "is {value} years old"}
GENDERS = {"M": "male", "F": "female"}
# (upper bound exclusive, label); ages are bucketed so that each bucket is one entity.
AGE_BUCKETS = (
    (18, "under 18"),
    (25, "18-24"),
    (35, "25-34"),
    (45, "35-44"),
    (55, "45-54"),
    (65, "55-64"),
)
OLDEST_AGE_BUCKET = "65+"
# The one MovieLens-100K movie with no title is spelled "unknown" (GroupLens) or
# "unkonwn" (RecBole); it gets the counted title fallback like any untitled item.
ML_MISSING_TITLES = {"unknown", "unkonwn"}
ARROW_TYPES = {"string": pa.string(), "int64": pa.int64(), "float32": pa.float32()}
BATCH_ROWS = 50_000
# Star ratings of every built-in source; a generic mapping declares its own (rating_scale).
STAR_SCALE = (1.0, 5.0)
# Sane interaction times, seconds since epoch: 1970-01-01 (inclusive) to 2100-01-01.
TIMESTAMP_RANGE = (0, 4_102_444_800)

AMAZON_META_ASIN = re.compile(r"""['"]asin['"]\s*:\s*['"]([^'"]+)['"]""")


# ----------------------------------------------------------------------------- tables


_table_dir: tempfile.TemporaryDirectory[str] | None = None


def _tables_directory() -> Path:
    """Per-process directory of the memory-mapped Arrow files (removed at exit)."""
    global _table_dir
    if _table_dir is None:
        _table_dir = tempfile.TemporaryDirectory(prefix="recsysllm-tables-")
    return Path(_table_dir.name)


class TableWriter:
    """Streams rows into an Arrow file batch by batch, then memory-maps it as a Dataset.

    Args:
        columns: column name -> "string" | "int64" | "float32", in column order.
    """

    def __init__(self, columns: dict[str, str]) -> None:
        self.schema = pa.schema([(name, ARROW_TYPES[kind]) for name, kind in columns.items()])
        self.path = _tables_directory() / f"{uuid.uuid4().hex}.arrow"
        self._sink = pa.OSFile(str(self.path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._columns: list[list[Any]] = [[] for _ in columns]
        self.rows = 0

    def add(self, *values: Any) -> None:
        """Append one row (values in column order)."""
        for column, value in zip(self._columns, values, strict=True):
            column.append(value)
        self.rows += 1
        if len(self._columns[0]) >= BATCH_ROWS:
            self._flush()

    def _flush(self) -> None:
        arrays = [pa.array(c, type=f.type) for c, f in zip(self._columns, self.schema, strict=True)]
        self._writer.write_batch(pa.record_batch(arrays, schema=self.schema))
        self._columns = [[] for _ in self._columns]

    def finish(self) -> datasets.Dataset:
        """Close the file and return it memory-mapped."""
        self._flush()  # also writes an empty batch for an empty table, which is fine
        self._writer.close()
        self._sink.close()
        return datasets.Dataset.from_file(str(self.path))


def _interaction_writer() -> TableWriter:
    return TableWriter(INTERACTION_COLUMNS)


def _item_writer(attributes: tuple[str, ...]) -> TableWriter:
    return TableWriter(dict(ITEM_COLUMNS, **dict.fromkeys(attributes, "string")))


def _user_writer(features: dict[str, str]) -> TableWriter:
    return TableWriter(dict(USER_COLUMNS, **dict.fromkeys(features, "string")))


def _users_without_features(user_ids: dict[str, None]) -> datasets.Dataset:
    users = _user_writer({})
    for user in user_ids:
        users.add(user)
    return users.finish()


# ----------------------------------------------------------------------------- values


def _where(path: Path, line: int | None = None, row: int | None = None) -> str:
    if line is not None:
        return f"{path}: line {line}"
    if row is not None:
        return f"{path}: row {row}"
    return str(path)


def _fail(where: str, field: str, reason: str) -> ValueError:
    return ValueError(f"{where}: field {field!r}: {reason}")


def _require(record: dict[str, Any], field: str, where: str) -> Any:
    value = record.get(field)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _fail(where, field, "missing")
    return value


def _as_id(value: Any, where: str, field: str) -> str:
    """An id as a string: ints stay ints ("7", not "7.0"), strings are stripped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        raise _fail(where, field, "missing")
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise _fail(
            where,
            field,
            f"expected a scalar id (text or integer), got {type(value).__name__} {value!r:.60}",
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail(where, field, f"not a valid id: {value!r}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    text = str(value).strip()
    if not text:
        raise _fail(where, field, "empty id")
    return text


def _as_rating(
    value: Any, where: str, field: str, scale: tuple[float, float] | None = STAR_SCALE
) -> float:
    """A finite rating inside ``scale`` (inclusive; None: any finite number)."""
    if isinstance(value, bool):
        raise _fail(where, field, f"not a number: {value!r}")
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise _fail(where, field, f"not a number: {value!r:.60}") from None
    if math.isnan(rating):
        raise _fail(where, field, "NaN rating")
    if not math.isfinite(rating):
        raise _fail(where, field, f"non-finite rating {value!r}")
    if scale is not None and not scale[0] <= rating <= scale[1]:
        raise _fail(
            where, field, f"rating {rating:g} is outside the scale {scale[0]:g}..{scale[1]:g}"
        )
    return rating


def _as_timestamp(value: Any, where: str, field: str) -> int:
    """Seconds since epoch from an integer (or integral float / string) or an ISO 8601 string.

    Refuses times outside 1970-01-01..2100-01-01 (TIMESTAMP_RANGE): a value in
    milliseconds, a typo, or one that would overflow the int64 column.
    """
    seconds = _timestamp_seconds(value)
    if seconds is None:
        raise _fail(where, field, f"not a timestamp (integer seconds or ISO 8601): {value!r:.60}")
    low, high = TIMESTAMP_RANGE
    if not low <= seconds < high:
        raise _fail(
            where,
            field,
            f"timestamp {value!r:.60} is outside 1970-01-01..2100-01-01 ({low}..{high} seconds "
            "since epoch; milliseconds?)",
        )
    return seconds


def _timestamp_seconds(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            if re.fullmatch(r"-?\d+(\.0*)?", text):
                return int(text.split(".")[0])
            return _iso_seconds(text)
        except (ValueError, OverflowError):
            return None
    return None


def _iso_seconds(text: str) -> int:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:  # naive times are read as UTC so results do not depend on the machine
        moment = moment.replace(tzinfo=timezone.utc)
    return int(moment.timestamp())


def _as_text(value: Any, where: str, field: str) -> str:
    """Optional free text: None / NaN -> ""; a list or dict is an error, never str()'d."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, dict, set)):
        raise _fail(
            where, field, f"expected text or a number, got {type(value).__name__} {value!r:.60}"
        )
    return str(value).strip()


def age_bucket(age: int) -> str:
    """The age range label of ``age``, e.g. 29 -> "25-34", 16 -> "under 18", 70 -> "65+"."""
    for upper, label in AGE_BUCKETS:
        if age < upper:
            return label
    return OLDEST_AGE_BUCKET


def _as_age_bucket(value: Any, where: str, field: str) -> str:
    try:
        age = int(str(value).strip())
    except ValueError:
        raise _fail(where, field, f"not an integer age: {value!r}") from None
    if age < 0:
        raise _fail(where, field, f"negative age: {age}")
    return age_bucket(age)


def _text_lines(path: Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """(1-based line number, line with its ending) of a plain or gzipped text file.

    Gzip is detected by its magic bytes, not the name. Each line is decoded on its own,
    so bytes that are not ``encoding`` and a gzip stream that ends early are reported
    with the file and line instead of a bare codec or zlib error.
    """
    with open(path, "rb") as probe:
        gzipped = probe.read(2) == b"\x1f\x8b"
    line_number = 0
    try:
        with gzip.open(path, "rb") if gzipped else open(path, "rb") as f:
            for line_number, raw in enumerate(f, start=1):
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as error:
                    raise _fail(
                        _where(path, line_number),
                        "<bytes>",
                        f"not {encoding} text: byte 0x{raw[error.start]:02x} at column "
                        f"{error.start + 1} (convert the file to {encoding})",
                    ) from None
                yield line_number, text
    except (EOFError, gzip.BadGzipFile, zlib.error) as error:
        raise _fail(
            _where(path, line_number + 1),
            "<file>",
            f"the gzip stream is truncated or corrupt after {line_number} complete lines "
            f"({error}); download the file again",
        ) from None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: {path} does not exist")
    return path


# ----------------------------------------------------------------------------- MovieLens


def load_movielens_100k(path: str | Path) -> RecTables:
    """Load MovieLens-100K from a directory in GroupLens raw or RecBole atomic format.

    The raw format is what the GroupLens zip holds (``u.data``, ``u.item``, ``u.user``);
    the atomic format is what ``recsysllm data fetch movielens-100k`` extracts
    (``ml-100k.inter``, ``ml-100k.item``, ``ml-100k.user``). Both give the same tables:
    item titles as in ``u.item`` (e.g. "Toy Story (1995)"; RecBole's separate title and
    year are joined back), ``year`` and ``genres`` ("Animation, Children's, Comedy") as
    item attributes, users with age range, gender ("male"/"female"), occupation and zip.
    The one untitled movie gets the title "item <id>", counted in
    ``notes["items_without_title"]``.

    Args:
        path: directory holding one of the two formats.

    Returns:
        RecTables named "ml-100k", 100,000 interactions, 1,682 items, 943 users.

    Example:
        >>> tables = load_movielens_100k("data/ml-100k")  # doctest: +SKIP
        >>> tables.items[0]["title"]  # doctest: +SKIP
        'Toy Story (1995)'
    """
    directory = Path(path)
    if (directory / "u.data").is_file():
        return _load_movielens_raw(directory)
    if (directory / "ml-100k.inter").is_file():
        return _load_movielens_atomic(directory)
    raise FileNotFoundError(
        f"{directory}: no MovieLens-100K files (expected u.data/u.item/u.user or "
        "ml-100k.inter/.item/.user; `recsysllm data fetch movielens-100k DIR` gets the latter)"
    )


def _movielens_item(item_id: str, name: str, year: str) -> tuple[str, str, bool]:
    """(title, year, is_fallback) of one movie."""
    if name.strip() in ML_MISSING_TITLES or not name.strip():
        return f"item {item_id}", "", True
    return name.strip(), year, False


def _finish_movielens(
    interactions: TableWriter, items: TableWriter, users: TableWriter, untitled: int
) -> RecTables:
    if untitled:
        logger.warning("ml-100k: %d item(s) without title get the title 'item <id>'", untitled)
    return RecTables(
        name="ml-100k",
        interactions=interactions.finish(),
        items=items.finish(),
        users=users.finish(),
        user_features=dict(ML_USER_FEATURES),
        item_attributes=("year", "genres"),
        has_reviews=False,
        notes={"items_without_title": untitled},
    )


def _check_known(ids: set[str], value: str, where: str, field: str, table: Path) -> None:
    if value not in ids:
        raise _fail(where, field, f"{value!r} is not in {table.name}")


def _load_movielens_raw(directory: Path) -> RecTables:
    item_path, user_path = directory / "u.item", directory / "u.user"
    items = _item_writer(("year", "genres"))
    item_ids: set[str] = set()
    untitled = 0
    # u.item is latin-1 (accented titles such as "Misérables, Les (1995)").
    with open(_require_file(item_path, "MovieLens u.item"), encoding="latin-1") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = _where(item_path, line_number)
            fields = line.rstrip("\r\n").split("|")
            if len(fields) != 5 + len(ML_GENRES):
                raise _fail(
                    where, "<line>", f"expected {5 + len(ML_GENRES)} '|' fields, got {len(fields)}"
                )
            item_id = _as_id(fields[0], where, "movie id")
            if item_id in item_ids:
                raise _fail(where, "movie id", f"duplicate id {item_id!r}")
            item_ids.add(item_id)
            flags = fields[5:]
            if any(flag not in ("0", "1") for flag in flags):
                raise _fail(where, "genres", f"genre flags must be 0/1, got {flags}")
            genres = [genre for genre, flag in zip(ML_GENRES, flags, strict=True) if flag == "1"]
            release_year = fields[2].strip()[-4:]  # "01-Jan-1995"
            title, year, fallback = _movielens_item(
                item_id, fields[1], release_year if release_year.isdigit() else ""
            )
            untitled += fallback
            items.add(item_id, title, year, ", ".join(genres))

    users = _user_writer(ML_USER_FEATURES)
    user_ids: set[str] = set()
    with open(_require_file(user_path, "MovieLens u.user"), encoding="latin-1") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = _where(user_path, line_number)
            fields = line.rstrip("\r\n").split("|")
            if len(fields) != 5:
                raise _fail(where, "<line>", f"expected 5 '|' fields, got {len(fields)}")
            user_id = _as_id(fields[0], where, "user id")
            if user_id in user_ids:
                raise _fail(where, "user id", f"duplicate id {user_id!r}")
            user_ids.add(user_id)
            gender = GENDERS.get(fields[2].strip())
            if gender is None:
                raise _fail(where, "gender", f"expected M or F, got {fields[2]!r}")
            age = _as_age_bucket(fields[1], where, "age")
            users.add(user_id, age, gender, fields[3].strip(), fields[4].strip())

    data_path = directory / "u.data"
    interactions = _interaction_writer()
    with open(data_path, encoding="latin-1") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = _where(data_path, line_number)
            fields = line.split()
            if len(fields) != 4:
                raise _fail(
                    where, "<line>", f"expected 4 whitespace-separated fields, got {len(fields)}"
                )
            user = _as_id(fields[0], where, "user id")
            item = _as_id(fields[1], where, "item id")
            _check_known(user_ids, user, where, "user id", user_path)
            _check_known(item_ids, item, where, "item id", item_path)
            rating = _as_rating(fields[2], where, "rating")
            timestamp = _as_timestamp(fields[3], where, "timestamp")
            interactions.add(user, item, timestamp, rating, "", "")
    if not interactions.rows:
        raise _fail(str(data_path), "<rows>", "no ratings: the file is empty")
    return _finish_movielens(interactions, items, users, untitled)


def _atomic_rows(path: Path, fields: tuple[str, ...]) -> Iterator[tuple[str, list[str]]]:
    """Rows of a RecBole atomic file as (location, values of ``fields``).

    The header names columns ``name:type``; ``fields`` are looked up by name.
    """
    lines = _text_lines(_require_file(path, "RecBole atomic file"))
    first = next(lines, None)
    if first is None:
        raise _fail(str(path), "<header>", "the file is empty (expected a header line)")
    header = [column.split(":")[0] for column in first[1].rstrip("\r\n").split("\t")]
    missing = [field for field in fields if field not in header]
    if missing:
        raise _fail(_where(path, 1), missing[0], f"column missing from header {header}")
    indices = [header.index(field) for field in fields]
    rows = 0
    for line_number, line in lines:
        if not line.strip():
            continue
        values = line.rstrip("\r\n").split("\t")
        where = _where(path, line_number)
        if len(values) != len(header):
            raise _fail(
                where,
                "<line>",
                f"expected {len(header)} tab-separated fields, got {len(values)}",
            )
        rows += 1
        yield where, [values[i] for i in indices]
    if not rows:
        raise _fail(str(path), "<rows>", "no data rows: the file has only a header")


def _load_movielens_atomic(directory: Path) -> RecTables:
    item_path = directory / "ml-100k.item"
    user_path = directory / "ml-100k.user"
    inter_path = directory / "ml-100k.inter"

    items = _item_writer(("year", "genres"))
    item_ids: set[str] = set()
    untitled = 0
    for where, (item_id, name, year, genre_words) in _atomic_rows(
        item_path, ("item_id", "movie_title", "release_year", "class")
    ):
        item_id = _as_id(item_id, where, "item_id")
        if item_id in item_ids:
            raise _fail(where, "item_id", f"duplicate id {item_id!r}")
        item_ids.add(item_id)
        # RecBole splits "Toy Story (1995)" into title and year and writes genres space-separated
        # (no genre name contains a space); join both back to the GroupLens form.
        year = year.strip() if year.strip().isdigit() else ""
        title, year, fallback = _movielens_item(item_id, name, year)
        if not fallback and year:
            title = f"{title} ({year})"
        untitled += fallback
        items.add(item_id, title, year, ", ".join(genre_words.split()))

    users = _user_writer(ML_USER_FEATURES)
    user_ids: set[str] = set()
    for where, (user_id, age, gender, occupation, zip_code) in _atomic_rows(
        user_path, ("user_id", "age", "gender", "occupation", "zip_code")
    ):
        user_id = _as_id(user_id, where, "user_id")
        if user_id in user_ids:
            raise _fail(where, "user_id", f"duplicate id {user_id!r}")
        user_ids.add(user_id)
        gender_name = GENDERS.get(gender.strip())
        if gender_name is None:
            raise _fail(where, "gender", f"expected M or F, got {gender!r}")
        age_label = _as_age_bucket(age, where, "age")
        users.add(user_id, age_label, gender_name, occupation.strip(), zip_code.strip())

    interactions = _interaction_writer()
    for where, (user, item, rating, timestamp) in _atomic_rows(
        inter_path, ("user_id", "item_id", "rating", "timestamp")
    ):
        user = _as_id(user, where, "user_id")
        item = _as_id(item, where, "item_id")
        _check_known(user_ids, user, where, "user_id", user_path)
        _check_known(item_ids, item, where, "item_id", item_path)
        interactions.add(
            user,
            item,
            _as_timestamp(timestamp, where, "timestamp"),
            _as_rating(rating, where, "rating"),
            "",
            "",
        )
    return _finish_movielens(interactions, items, users, untitled)


# ----------------------------------------------------------------------------- Amazon


def _parse_record(line: str, where: str) -> dict[str, Any]:
    """One JSON line, or one Python-literal line (2014 meta files use single quotes)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError as json_error:
        try:
            record = ast.literal_eval(line)  # never eval: literals only
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(
                f"{where}: field '<record>': not a JSON object or Python literal ({json_error})"
            ) from None
    if not isinstance(record, dict):
        raise ValueError(
            f"{where}: field '<record>': expected an object, got {type(record).__name__}"
        )
    return record


def _records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) for each non-empty line of a JSON-lines / literal-lines file.

    Raises:
        ValueError: the file has no record (empty or blank), naming it.
    """
    count = 0
    for line_number, line in _text_lines(path):
        if line.strip():
            where = _where(path, line_number)
            count += 1
            yield where, _parse_record(line, where)
    if not count:
        raise _fail(str(path), "<rows>", "no records: the file is empty")


def _amazon_categories(record: dict[str, Any]) -> str:
    """2014 ``categories`` (list of category paths) or 2018 ``category`` (one path) as "a, b, c"."""
    raw = record.get("categories", record.get("category")) or []
    names: dict[str, None] = {}
    for entry in raw:
        for name in entry if isinstance(entry, list) else [entry]:
            if str(name).strip():
                names[str(name).strip()] = None
    return ", ".join(names)


def load_amazon_reviews(
    reviews_path: str | Path, meta_path: str | Path | None = None, category: str | None = None
) -> RecTables:
    """Load an Amazon review file (2014 or 2018 release) and, optionally, its meta file.

    Review lines are JSON objects with ``reviewerID``, ``asin``, ``overall`` and
    ``unixReviewTime`` (required) and ``reviewText``, ``summary`` (optional, "" when absent,
    counted in ``notes["reviews_without_text"]``). Meta lines are JSON (2018) or Python
    literals (2014, parsed with ``ast.literal_eval``) with ``asin`` and optional ``title``,
    ``brand``, ``categories``/``category`` and ``price``. Only items that have reviews
    are kept: meta lines of other items are skipped unparsed and counted in
    ``notes["meta_items_without_reviews"]``. An item without a title gets
    "<brand> item <asin>" or "item <asin>", counted in ``notes["items_without_title"]``.

    Args:
        reviews_path: ``reviews_<Category>_5.json(.gz)`` (2014) or ``<Category>_5.json(.gz)``
            (2018).
        meta_path: ``meta_<Category>.json(.gz)``; without it every item gets the fallback title.
        category: category name used in the data set name, e.g. "Beauty" -> "amazon-beauty".

    Returns:
        RecTables with item attributes brand, categories, price and no user features.
    """
    reviews_path = _require_file(Path(reviews_path), "Amazon reviews")
    name = f"amazon-{category.lower().replace(' ', '_')}" if category else "amazon"

    interactions = _interaction_writer()
    user_ids: dict[str, None] = {}  # first-appearance order
    item_ids: dict[str, None] = {}
    without_text = 0
    for where, record in _records(reviews_path):
        user = _as_id(_require(record, "reviewerID", where), where, "reviewerID")
        item = _as_id(_require(record, "asin", where), where, "asin")
        rating = _as_rating(_require(record, "overall", where), where, "overall")
        timestamp = _as_timestamp(
            _require(record, "unixReviewTime", where), where, "unixReviewTime"
        )
        review = _as_text(record.get("reviewText"), where, "reviewText")
        without_text += not review
        interactions.add(
            user, item, timestamp, rating, review, _as_text(record.get("summary"), where, "summary")
        )
        user_ids[user] = None
        item_ids[item] = None

    meta: dict[str, tuple[str, str, str, str]] = {}
    skipped_meta = duplicate_meta = 0
    if meta_path is not None:
        meta_path = _require_file(Path(meta_path), "Amazon meta")
        meta_lines = 0
        for line_number, line in _text_lines(meta_path):
            if not line.strip():
                continue
            meta_lines += 1
            # Meta files cover every item of a category (10-20x the 5-core items):
            # read the asin with a regex and parse only the lines that are needed.
            found = AMAZON_META_ASIN.search(line)
            if found and found.group(1) not in item_ids:
                skipped_meta += 1
                continue
            where = _where(meta_path, line_number)
            record = _parse_record(line, where)
            asin = _as_id(_require(record, "asin", where), where, "asin")
            if asin not in item_ids:
                skipped_meta += 1
                continue
            if asin in meta:  # the 2018 meta files repeat some items; the first line wins
                duplicate_meta += 1
                continue
            price = record.get("price")
            meta[asin] = (
                _as_text(record.get("title"), where, "title"),
                _as_text(record.get("brand"), where, "brand"),
                _amazon_categories(record),
                "" if price is None else str(price).strip(),
            )
        if not meta_lines:
            raise _fail(str(meta_path), "<rows>", "no records: the file is empty")

    items = _item_writer(("brand", "categories", "price"))
    untitled = 0
    for asin in item_ids:
        title, brand, categories, price = meta.get(asin, ("", "", "", ""))
        if not title:
            title = f"{brand} item {asin}" if brand else f"item {asin}"
            untitled += 1
        items.add(asin, title, brand, categories, price)
    if untitled:
        logger.warning(
            "%s: %d item(s) without title get the title '<brand> item <asin>'", name, untitled
        )

    notes = {
        "items_without_title": untitled,
        "reviews_without_text": without_text,
        "meta_items_without_reviews": skipped_meta,
        "duplicate_meta_lines": duplicate_meta,
    }
    return RecTables(
        name=name,
        interactions=interactions.finish(),
        items=items.finish(),
        users=_users_without_features(user_ids),
        user_features={},
        item_attributes=("brand", "categories", "price"),
        has_reviews=True,
        notes=notes,
    )


def _find_amazon_files(directory: Path, category: str) -> tuple[Path, Path | None]:
    """Reviews and meta files of ``category`` in ``directory`` (2014 or 2018 names, .gz or not)."""
    cat = category.replace(" ", "_")

    def first(names: list[str]) -> Path | None:
        return next((directory / n for n in names if (directory / n).is_file()), None)

    reviews = first(
        [f"reviews_{cat}_5.json.gz", f"reviews_{cat}_5.json", f"{cat}_5.json.gz", f"{cat}_5.json"]
    )
    if reviews is None:
        raise FileNotFoundError(f"{directory}: no reviews_{cat}_5.json(.gz) or {cat}_5.json(.gz)")
    return reviews, first([f"meta_{cat}.json.gz", f"meta_{cat}.json"])


# ----------------------------------------------------------------------------- clothing

CLOTHING_FILE = "WomensClothingE-CommerceReviews.parquet.brotli"
CLOTHING_COLUMNS = (
    "Clothing ID",
    "Age",
    "Title",
    "Review Text",
    "Rating",
    "Department Name",
    "Class Name",
)


def load_clothing_reviews(path: str | Path) -> RecTables:
    """Load Women's E-Commerce Clothing Reviews (23,486 reviews of 1,206 garments).

    The data set has no reviewer ids, so each review is its own user: user id = the
    review's 0-based row index, with the reviewer's age range as the one user feature.
    Items are clothing ids titled "<Class Name> #<Clothing ID>" (e.g. "Dresses #1077",
    unique because the id is in it); the class is the item's most frequent one. The few
    items whose class is never given are titled "item #<id>" and counted in
    ``notes["items_without_title"]``. review = Review Text, summary = Title (both ""
    when absent), rating = Rating, timestamp -1 (the data set has no times). Recommended
    IND, Positive Feedback Count and Division Name are not used.

    Args:
        path: the parquet file fetched by ``recsysllm data fetch clothing-reviews``, or
            the directory holding it.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CLOTHING_FILE
    _require_file(path, "clothing reviews")
    try:
        table = pq.read_table(
            path, columns=[c for c in CLOTHING_COLUMNS if c in pq.read_schema(path).names]
        )
    except pa.ArrowException as error:
        raise _fail(str(path), "<file>", f"not a readable Parquet file ({error})") from None
    if not table.num_rows:
        raise _fail(str(path), "<rows>", "no reviews: the table has no rows")
    missing = [c for c in CLOTHING_COLUMNS if c not in table.column_names]
    if missing:
        raise _fail(str(path), missing[0], f"column missing; columns are {table.column_names}")

    interactions = _interaction_writer()
    users = _user_writer(AGE_FEATURE)
    classes: dict[str, Counter[tuple[str, str]]] = {}
    rows = zip(*(table.column(c).to_pylist() for c in CLOTHING_COLUMNS), strict=True)
    for index, (item_id, age, title, text, rating, department, class_name) in enumerate(rows):
        where = _where(path, row=index)
        item = _as_id(item_id, where, "Clothing ID")
        user = str(index)
        users.add(user, _as_age_bucket(age, where, "Age"))
        interactions.add(
            user,
            item,
            -1,
            _as_rating(rating, where, "Rating"),
            _as_text(text, where, "Review Text"),
            _as_text(title, where, "Title"),
        )
        counts = classes.setdefault(item, Counter())
        class_text = _as_text(class_name, where, "Class Name")
        if class_text:
            counts[(class_text, _as_text(department, where, "Department Name"))] += 1

    items = _item_writer(("department", "class"))
    untitled = 0
    for item, counts in classes.items():
        if counts:
            # most_common is stable (first seen wins a tie), so titles do not depend on hashing
            (class_name, department), _ = counts.most_common(1)[0]
            items.add(item, f"{class_name} #{item}", department, class_name)
        else:
            untitled += 1
            items.add(item, f"item #{item}", "", "")
    if untitled:
        logger.warning("clothing-reviews: %d item(s) without class name get 'item #<id>'", untitled)
    return RecTables(
        name="clothing-reviews",
        interactions=interactions.finish(),
        items=items.finish(),
        users=users.finish(),
        user_features=dict(AGE_FEATURE),
        item_attributes=("department", "class"),
        has_reviews=True,
        notes={"items_without_title": untitled},
    )


# ----------------------------------------------------------------------------- generic


def _table_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """(location, record) of every row of a CSV / TSV / Parquet / JSON-lines file."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    rows = 0
    if kind in (".csv", ".tsv"):
        delimiter = "\t" if kind == ".tsv" else ","
        reader = csv.reader((line for _, line in _text_lines(path)), delimiter=delimiter)
        header = next(reader, None)
        for values in reader:
            # line_num is the line where the record ends, exact with multi-line fields
            where = _where(path, reader.line_num)
            if not values:
                continue  # a blank line
            if len(values) != len(header):
                raise _fail(
                    where,
                    "<row>",
                    f"{len(values)} fields but the header has {len(header)} "
                    f"(an unquoted {delimiter!r} inside a value?)",
                )
            rows += 1
            yield where, dict(zip(header, values, strict=True))
    elif kind == ".parquet":
        try:
            batches = pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS)
            for batch in batches:
                for record in batch.to_pylist():
                    yield _where(path, row=rows), record
                    rows += 1
        except pa.ArrowException as error:
            raise _fail(str(path), "<file>", f"not a readable Parquet file ({error})") from None
    elif kind in (".jsonl", ".json"):
        yield from _records(path)
        return
    else:
        raise ValueError(
            f"{path}: unsupported table format {kind!r} (use .csv, .tsv, .parquet or .jsonl)"
        )
    if not rows:
        raise _fail(str(path), "<rows>", "no data rows: the file is empty or has only a header")


def _columns_of(path: Path) -> list[str] | None:
    """Column names of a CSV/TSV/Parquet file (None for JSON lines: fields are per line)."""
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    kind = suffixes[-1] if suffixes else ""
    if kind == ".parquet":
        try:
            return pq.read_schema(path).names
        except pa.ArrowException as error:
            raise _fail(str(path), "<file>", f"not a readable Parquet file ({error})") from None
    if kind in (".csv", ".tsv"):
        lines = (line for _, line in _text_lines(path))
        header = next(csv.reader(lines, delimiter="\t" if kind == ".tsv" else ","), [])
        if not header:
            raise _fail(str(path), "<header>", "the file is empty (expected a header line)")
        return header
    return None


def _mapping_section(
    mapping: dict[str, Any], section: str, source: str, keys: set[str]
) -> dict[str, Any]:
    value = mapping.get(section)
    if not isinstance(value, dict):
        raise ValueError(f"{source}: field {section!r}: expected a mapping, got {value!r}")
    unknown = sorted(set(value) - keys)
    if unknown:
        raise ValueError(
            f"{source}: field {section}.{unknown[0]}: unknown key; allowed {sorted(keys)}"
        )
    return value


def _section_file(
    section: dict[str, Any], name: str, base_dir: Path, source: str, columns: list[str]
) -> Path:
    """Path of a mapping section's file, checked to exist and to hold the mapped ``columns``."""
    if not isinstance(section.get("path"), str) or not section["path"]:
        raise ValueError(f"{source}: field {name}.path: required (a string)")
    path = _require_file(base_dir / section["path"], f"{source}: {name}.path")
    header = _columns_of(path)
    if header is not None:  # JSON lines have no header: their fields are checked per line
        missing = [c for c in columns if c not in header]
        if missing:
            raise _fail(
                f"{path}: line 1" if path.suffix != ".parquet" else str(path),
                missing[0],
                f"column missing; columns are {header}",
            )
    return path


def _mapped_columns(
    section: dict[str, Any],
    name: str,
    source: str,
    required: tuple[str, ...],
    optional: tuple[str, ...],
) -> list[str]:
    """File columns named by a mapping section (required keys first)."""
    for key in required:
        if not isinstance(section.get(key), str) or not section[key]:
            raise ValueError(f"{source}: field {name}.{key}: required (a column name)")
    return [section[k] for k in (*required, *optional) if section.get(k)]


def _rating_scale(value: Any, source: str) -> tuple[float, float] | None:
    """The mapping's ``interactions.rating_scale`` ([low, high], finite, low < high) or None."""
    if value is None:
        return None
    if (
        not isinstance(value, list)
        or len(value) != 2
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        or not all(math.isfinite(v) for v in value)
        or value[0] >= value[1]
    ):
        raise ValueError(
            f"{source}: field interactions.rating_scale: expected [low, high] with finite "
            f"numbers low < high, got {value!r}"
        )
    return float(value[0]), float(value[1])


def load_generic_table(
    mapping: str | Path | dict[str, Any], base_dir: str | Path | None = None
) -> RecTables:
    """Load your own interactions (+ optional items and users) described by a YAML mapping.

    The mapping format is documented in this module's docstring. Items referenced by
    interactions but absent from the items file (or all items when there is none) get
    the title "item <id>", counted in ``notes["items_without_title"]``; users absent from
    the users file get "" for every feature, counted in ``notes["users_without_features"]``.

    Args:
        mapping: path of the YAML mapping file, or the mapping itself as a dict.
        base_dir: directory that relative paths start from (default: the YAML file's
            directory, or the current directory for a dict).

    Example:
        >>> tables = load_generic_table("data/shop/mapping.yaml")  # doctest: +SKIP
    """
    if isinstance(mapping, dict):
        source = "generic mapping"
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        source = str(mapping)
        loaded = read_yaml(_require_file(Path(mapping), "generic mapping"))
        if not isinstance(loaded, dict):
            raise ValueError(f"{source}: expected a YAML mapping at the top level")
        mapping = loaded
        base = Path(base_dir) if base_dir is not None else Path(source).parent
    unknown = sorted(set(mapping) - {"name", "interactions", "items", "users"})
    if unknown:
        raise ValueError(
            f"{source}: field {unknown[0]!r}: unknown key; allowed interactions, items, users, name"
        )
    name = str(mapping.get("name", "generic"))

    spec = _mapping_section(
        mapping,
        "interactions",
        source,
        {"path", "user", "item", "timestamp", "rating", "rating_scale", "review", "summary"},
    )
    scale = _rating_scale(spec.get("rating_scale"), source)
    columns = _mapped_columns(
        spec, "interactions", source, ("user", "item"), ("timestamp", "rating", "review", "summary")
    )
    inter_path = _section_file(spec, "interactions", base, source, columns)
    interactions = _interaction_writer()
    user_ids: dict[str, None] = {}
    item_ids: dict[str, None] = {}
    for where, record in _table_records(inter_path):
        user = _as_id(_require(record, spec["user"], where), where, spec["user"])
        item = _as_id(_require(record, spec["item"], where), where, spec["item"])
        timestamp, rating = -1, math.nan
        if spec.get("timestamp"):
            timestamp = _as_timestamp(
                _require(record, spec["timestamp"], where), where, spec["timestamp"]
            )
        if spec.get("rating"):
            rating = _as_rating(
                _require(record, spec["rating"], where), where, spec["rating"], scale
            )
        review = (
            _as_text(record.get(spec["review"]), where, spec["review"])
            if spec.get("review")
            else ""
        )
        summary = (
            _as_text(record.get(spec["summary"]), where, spec["summary"])
            if spec.get("summary")
            else ""
        )
        interactions.add(user, item, timestamp, rating, review, summary)
        user_ids[user] = None
        item_ids[item] = None

    attributes: tuple[str, ...] = ()
    untitled = 0
    if "items" in mapping:
        item_spec = _mapping_section(
            mapping, "items", source, {"path", "item", "title", "attributes"}
        )
        attributes = tuple(item_spec.get("attributes") or ())
        if not all(isinstance(a, str) and a for a in attributes):
            raise ValueError(f"{source}: field items.attributes: expected a list of column names")
        columns = _mapped_columns(item_spec, "items", source, ("item",), ("title",)) + list(
            attributes
        )
        items = _item_writer(attributes)
        seen: set[str] = set()
        for where, record in _table_records(
            _section_file(item_spec, "items", base, source, columns)
        ):
            item = _as_id(_require(record, item_spec["item"], where), where, item_spec["item"])
            if item in seen:
                raise _fail(where, item_spec["item"], f"duplicate item id {item!r}")
            seen.add(item)
            title = (
                _as_text(record.get(item_spec["title"]), where, item_spec["title"])
                if item_spec.get("title")
                else ""
            )
            if not title:
                title, untitled = f"item {item}", untitled + 1
            items.add(item, title, *(_as_text(record.get(a), where, a) for a in attributes))
        for item in item_ids:
            if item not in seen:
                untitled += 1
                items.add(item, f"item {item}", *([""] * len(attributes)))
    else:
        items = _item_writer(())
        for item in item_ids:
            items.add(item, f"item {item}")
        untitled = len(item_ids)
    if untitled:
        logger.warning("%s: %d item(s) without title get the title 'item <id>'", name, untitled)
    notes = {"items_without_title": untitled}

    features: dict[str, str] = {}
    if "users" in mapping:
        user_spec = _mapping_section(mapping, "users", source, {"path", "user", "features"})
        features = dict(user_spec.get("features") or {})
        for column, template in features.items():
            if not isinstance(template, str) or "{value}" not in template:
                raise ValueError(
                    f"{source}: field users.features.{column}: template must contain {{value}}"
                )
        columns = _mapped_columns(user_spec, "users", source, ("user",), ()) + list(features)
        users = _user_writer(features)
        seen = set()
        for where, record in _table_records(
            _section_file(user_spec, "users", base, source, columns)
        ):
            user = _as_id(_require(record, user_spec["user"], where), where, user_spec["user"])
            if user in seen:
                raise _fail(where, user_spec["user"], f"duplicate user id {user!r}")
            seen.add(user)
            users.add(user, *(_as_text(record.get(column), where, column) for column in features))
        missing_users = [u for u in user_ids if u not in seen]
        for user in missing_users:
            users.add(user, *([""] * len(features)))
        notes["users_without_features"] = len(missing_users)
        user_table = users.finish()
    else:
        user_table = _users_without_features(user_ids)

    return RecTables(
        name=name,
        interactions=interactions.finish(),
        items=items.finish(),
        users=user_table,
        user_features=features,
        item_attributes=attributes,
        has_reviews=bool(spec.get("review")),
        notes=notes,
    )


# ----------------------------------------------------------------------------- dispatch

DATASET_NAMES = ("movielens-100k", "ml-100k", "amazon", "clothing-reviews", "generic")


def load_dataset_by_name(name: str, path: str | Path, category: str | None = None) -> RecTables:
    """Load a data set by name.

    Args:
        name: "movielens-100k" / "ml-100k" (directory), "amazon" (a reviews file, or a
            directory plus ``category``), "clothing-reviews" (file or directory) or
            "generic" (the YAML mapping file).
        path: where the data lies.
        category: Amazon category, e.g. "Beauty" (required when ``path`` is a directory).

    Example:
        >>> load_dataset_by_name("amazon", "data/amazon", category="Beauty")  # doctest: +SKIP
    """
    path = Path(path)
    if name in ("movielens-100k", "ml-100k"):
        return load_movielens_100k(path)
    if name == "amazon":
        if path.is_dir():
            if category is None:
                raise ValueError(
                    f"amazon: {path} is a directory; give the category (e.g. 'Beauty')"
                )
            reviews, meta = _find_amazon_files(path, category)
            return load_amazon_reviews(reviews, meta, category)
        return load_amazon_reviews(path, None, category)
    if name == "clothing-reviews":
        return load_clothing_reviews(path)
    if name == "generic":
        return load_generic_table(path)
    raise ValueError(f"unknown data set {name!r}; known: {list(DATASET_NAMES)}")
