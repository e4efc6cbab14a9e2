"""The entity catalog: every item and user-attribute value a prompt may name.

Items are identified by text, never by numeric ids (DESIGN.md section 8). An
item's *key* is its title; when two or more items share a title, each of them
gets the key ``"<title> [id <raw item id>]"`` (e.g. ``"Heat (1995) [id 123]"``),
so keys stay unique and readable. For items the key is also the surface text
(``segment.text == segment.entity``), so the entity trie can decode exactly the
keys back.

A user attribute value (e.g. age "25-34") is an entity with key
``"attr:<column>=<value>"`` and surface text ``<value>``.

The catalog's :attr:`EntityCatalog.hash` is a sha256 over its sorted content, so
the same data gives the same hash in any process; checkpoints store it to detect a
catalog that changed under an adapter.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path

import datasets

from recsysllm.data.tables import RecTables
from recsysllm.files import atomic_write
from recsysllm.schema import Segment

ATTRIBUTE_PREFIX = "attr:"
_FORMAT_VERSION = 1


class UnknownEntityError(LookupError):
    """An entity key that the catalog does not hold."""


def attribute_key(column: str, value: str) -> str:
    """Catalog key of a user attribute value, e.g. ``attr:age=25-34``."""
    return f"{ATTRIBUTE_PREFIX}{column}={value}"


def item_key_map(items: datasets.Dataset, *, source: str = "items") -> dict[str, str]:
    """Raw item id -> item key (the title, disambiguated when titles collide).

    Args:
        items: a table with columns ``item`` and ``title`` (RecTables.items).
        source: name used in error messages (data set or file name).

    Raises:
        ValueError: an empty title, a repeated raw item id, or a disambiguated key
            that collides with another item's plain title; the message names the row.
    """
    columns = items.select_columns(["item", "title"]).to_dict()
    raw_ids = columns["item"]
    titles = [str(title or "").strip() for title in columns["title"]]
    seen_rows: dict[str, int] = {}
    for row, (raw_id, title) in enumerate(zip(raw_ids, titles, strict=True)):
        if not title:
            raise ValueError(f"{source}: items row {row} (item {raw_id!r}): field 'title' is empty")
        if raw_id in seen_rows:
            raise ValueError(
                f"{source}: items row {row}: field 'item' repeats id {raw_id!r} (first at row {seen_rows[raw_id]})"
            )
        seen_rows[raw_id] = row
    title_counts = Counter(titles)
    keys = {
        raw_id: title if title_counts[title] == 1 else f"{title} [id {raw_id}]"
        for raw_id, title in zip(raw_ids, titles, strict=True)
    }
    if len(set(keys.values())) != len(keys):
        # Only possible when a real title looks like "X [id Y]" of another item.
        duplicated = [key for key, count in Counter(keys.values()).items() if count > 1]
        raise ValueError(f"{source}: items: disambiguated title keys collide: {duplicated[:5]}")
    return keys


class EntityCatalog:
    """Item keys and user-attribute values of one data set.

    Attributes:
        name: data set name.
        items: item key -> surface text (equal to the key).
        item_ids: item key -> raw item id of the source.
        attributes: attribute key (``attr:<column>=<value>``) -> surface text (the value).

    Example:
        >>> catalog = EntityCatalog("toy", {"Heat (1995)": "7"}, {"attr:age=25-34": "25-34"})
        >>> catalog.item_keys
        ('Heat (1995)',)
        >>> catalog.item_segment("Heat (1995)").text
        'Heat (1995)'
    """

    def __init__(
        self, name: str, item_ids: Mapping[str, str], attributes: Mapping[str, str]
    ) -> None:
        self.name = name
        self.item_ids = dict(item_ids)
        self.items = {key: key for key in self.item_ids}
        self.attributes = dict(attributes)
        for key, value in self.attributes.items():
            if not key.startswith(ATTRIBUTE_PREFIX) or not value:
                raise ValueError(f"catalog {name!r}: bad attribute entity {key!r} -> {value!r}")
        overlap = set(self.items) & set(self.attributes)
        if overlap:
            raise ValueError(
                f"catalog {name!r}: keys are both items and attributes: {sorted(overlap)[:5]}"
            )
        self.item_keys: tuple[str, ...] = tuple(sorted(self.items))
        self.attribute_keys: tuple[str, ...] = tuple(sorted(self.attributes))
        self.hash = self._content_hash()
        # Segments are immutable, so one object per entity serves every example.
        self._segments = {key: Segment(text, entity=key) for key, text in self.entities().items()}
        self._item_segments = {key: self._segments[key] for key in self.items}

    @classmethod
    def from_tables(cls, tables: RecTables) -> EntityCatalog:
        """Catalog of every item of ``tables.items`` and every non-empty user attribute value.

        Build it from ``RecSplits.tables`` (the k-core filtered tables) so the item keys
        match the ones the splits use.
        """
        attributes = {}
        for column in tables.user_features:
            for value in tables.users[column]:
                value = (value or "").strip()
                if value:
                    attributes[attribute_key(column, value)] = value
        key_of = item_key_map(tables.items, source=tables.name)
        return cls(tables.name, {key: raw_id for raw_id, key in key_of.items()}, attributes)

    def _content_hash(self) -> str:
        content = {
            "items": sorted(self.item_ids.items()),
            "attributes": sorted(self.attributes.items()),
        }
        blob = json.dumps(content, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def __len__(self) -> int:
        return len(self.items) + len(self.attributes)

    def __contains__(self, key: object) -> bool:
        return key in self._segments

    def entities(self) -> dict[str, str]:
        """Every entity key -> surface text (items and attribute values): the trie's pool."""
        return {**self.items, **self.attributes}

    def entity_text(self, key: str) -> str:
        """Surface text of an entity key (item or attribute)."""
        return self.segment(key).text

    def segment(self, key: str) -> Segment:
        """The (non-answer) entity segment of a key.

        Raises:
            UnknownEntityError: the key is not in the catalog.
        """
        try:
            return self._segments[key]
        except KeyError:
            raise UnknownEntityError(
                f"entity {key!r} is not in catalog {self.name!r} "
                f"({len(self.items)} items, {len(self.attributes)} attribute values, hash {self.hash[:12]})"
            ) from None

    def item_segment(self, key: str, *, answer: bool = False) -> Segment:
        """The entity segment of an item key.

        Raises:
            UnknownEntityError: ``key`` is not an item of the catalog.
        """
        if key not in self.items:
            raise UnknownEntityError(
                f"item {key!r} is not in catalog {self.name!r} ({len(self.items)} items, hash {self.hash[:12]})"
            )
        segment = self._segments[key]
        return Segment(segment.text, entity=key, answer=True) if answer else segment

    def item_segments(self, keys: Iterable[str]) -> list[Segment]:
        """Entity segments of item keys (the fast path for histories and candidate lists).

        Raises:
            UnknownEntityError: the first key that is not a catalog item.
        """
        try:
            return [self._item_segments[key] for key in keys]
        except KeyError:
            for key in keys:
                self.item_segment(key)
            raise

    def require_items(self, keys: Iterable[str]) -> None:
        """Raise :class:`UnknownEntityError` for the first key that is not a catalog item."""
        for key in keys:
            self.item_segment(key)

    def save(self, path: str | os.PathLike) -> None:
        """Write the catalog as JSON (atomically: temp file, then rename)."""
        path = Path(path)
        payload = {
            "format_version": _FORMAT_VERSION,
            "name": self.name,
            "hash": self.hash,
            "items": dict(sorted(self.item_ids.items())),
            "attributes": dict(sorted(self.attributes.items())),
        }
        write_json_atomic(path, payload)

    @classmethod
    def load(cls, path: str | os.PathLike) -> EntityCatalog:
        """Read a catalog written by :meth:`save`; checks its stored hash.

        Raises:
            ValueError: malformed file, a missing field, or a hash that does not
                match the content; the message names the file and the field.
        """
        path = Path(path)
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {error.lineno}: not valid JSON ({error.msg})") from None
        for field_name in ("name", "hash", "items", "attributes"):
            if field_name not in payload:
                raise ValueError(f"{path}: missing field {field_name!r}")
        catalog = cls(payload["name"], payload["items"], payload["attributes"])
        if catalog.hash != payload["hash"]:
            raise ValueError(
                f"{path}: field 'hash' is {payload['hash'][:12]}... but the content hashes to "
                f"{catalog.hash[:12]}...: the file was edited or is corrupt"
            )
        return catalog


def write_json_atomic(path: Path, payload: object) -> None:
    """Write JSON (UTF-8, indent 1) with :func:`recsysllm.files.atomic_write`."""
    atomic_write(path, json.dumps(payload, ensure_ascii=False, indent=1))
