"""The entity catalog: every item and user-attribute value a prompt may name.

Items are identified by text, never by numeric ids (DESIGN.md section 8). An
item's *key* is its title; when two or more items share a title, each of them
gets the key ``"<title> [id <raw item id>]"`` (e.g. ``"Heat (1995) [id 123]"``),
so keys stay unique and readable. For items the key is also the surface text
(``segment.text == segment.entity``), so the entity trie can decode exactly the
keys back.

With a name cap (``data.item_name_max_tokens``, :func:`capped_item_key_map`), every
item's key is instead its title cut to at most N tokens of the model's tokenizer, and
items whose cut titles coincide (or whose titles were equal to begin with) are told
apart (``data.item_name_disambiguation``) by a short suffix ``" #1"``, ``" #2"``, ...
or by the words of their own titles after the words they share, so the key -> item map
stays one-to-one.

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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import datasets

from recsysllm.data.tables import RecTables
from recsysllm.files import atomic_write
from recsysllm.schema import ITEM_NAME_DISAMBIGUATIONS, Segment

ATTRIBUTE_PREFIX = "attr:"
_FORMAT_VERSION = 1


class UnknownEntityError(LookupError):
    """An entity key that the catalog does not hold."""


def attribute_key(column: str, value: str) -> str:
    """Catalog key of a user attribute value, e.g. ``attr:age=25-34``."""
    return f"{ATTRIBUTE_PREFIX}{column}={value}"


def item_titles(items: datasets.Dataset, *, source: str = "items") -> dict[str, str]:
    """Raw item id -> title (stripped), checked: no empty title, no repeated id.

    Raises:
        ValueError: an empty title or a repeated raw item id; the message names the row.
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
    return dict(zip(raw_ids, titles, strict=True))


def item_key_map(items: datasets.Dataset, *, source: str = "items") -> dict[str, str]:
    """Raw item id -> item key (the title, disambiguated when titles collide).

    Args:
        items: a table with columns ``item`` and ``title`` (RecTables.items).
        source: name used in error messages (data set or file name).

    Raises:
        ValueError: an empty title, a repeated raw item id, or a disambiguated key
            that collides with another item's plain title; the message names the row.
    """
    titles = item_titles(items, source=source)
    title_counts = Counter(titles.values())
    keys = {
        raw_id: title if title_counts[title] == 1 else f"{title} [id {raw_id}]"
        for raw_id, title in titles.items()
    }
    if len(set(keys.values())) != len(keys):
        # Only possible when a real title looks like "X [id Y]" of another item.
        duplicated = [key for key, count in Counter(keys.values()).items() if count > 1]
        raise ValueError(f"{source}: items: disambiguated title keys collide: {duplicated[:5]}")
    return keys


def capped_item_key_map(
    items: datasets.Dataset,
    count_tokens: Callable[[str], int],
    max_tokens: int,
    *,
    disambiguation: str = "words",
    source: str = "items",
) -> dict[str, str]:
    """Raw item id -> item key of at most ``max_tokens`` tokens, one-to-one.

    - A title of at most ``max_tokens`` tokens that no other item shares is its own key,
      unchanged (also when a longer title's cut would read the same).
    - A longer title is cut to its longest prefix of whole words (whitespace-separated,
      joined by one space, trailing ``,;:-|/(&+`` and spaces dropped) that fits; a first
      word alone too long is cut by characters.
    - Items whose cuts coincide with another name are told apart as ``disambiguation``
      says:

      - ``"number"``: numbered ``" #1"``, ``" #2"``, ... in order of (full title, raw id),
        each title cut so that title and suffix together fit.
      - ``"words"``: by their own words. The cut titles of a group share a longest
        common whole-word prefix; each name keeps at most half the cap of it (the
        *head*, e.g. the brand) followed by the first words of its title after it
        (the *tail*, e.g. "Red, Size 10"), as many as fit. Names that still coincide
        (titles equal, or equal in the tail's first words) are numbered as above.

    The keys depend only on the titles, the raw ids and ``count_tokens`` (not on the
    order of the rows), so training, the checkpoint and evaluation that use the same
    tokenizer get the same keys.

    Args:
        items: a table with columns ``item`` and ``title`` (RecTables.items).
        count_tokens: tokens of an entity name, e.g. ``len(tokenizer.encode_entity(name))``
            (the leading-space convention of the trie and the collator).
        max_tokens: the cap (``data.item_name_max_tokens``).
        disambiguation: ``"words"`` (default) or ``"number"``
            (``data.item_name_disambiguation``).
        source: name used in error messages (data set or file name).

    Raises:
        ValueError: an empty title or a repeated raw id (as :func:`item_key_map`), a
            title whose first character alone exceeds the cap, an unknown
            ``disambiguation``, or capped keys that still collide (a real title that
            reads like another's numbered key).

    Example:
        >>> words = lambda name: len(name.split())  # a tokenizer with one token per word
        >>> table = datasets.Dataset.from_dict(
        ...     {"item": ["a", "b", "c"],
        ...      "title": ["Acme Travel Mug, Red", "Acme Travel Mug, Blue", "Kettle"]})
        >>> capped_item_key_map(table, words, 3)
        {'a': 'Acme Red', 'b': 'Acme Blue', 'c': 'Kettle'}
        >>> capped_item_key_map(table, words, 3, disambiguation="number")
        {'a': 'Acme Travel #2', 'b': 'Acme Travel #1', 'c': 'Kettle'}
    """
    if max_tokens < 1:
        raise ValueError(f"{source}: item name cap must be >= 1 token, got {max_tokens}")
    if disambiguation not in ITEM_NAME_DISAMBIGUATIONS:
        raise ValueError(
            f"{source}: item name disambiguation must be one of {ITEM_NAME_DISAMBIGUATIONS}, "
            f"got {disambiguation!r}"
        )
    titles = item_titles(items, source=source)
    title_counts = Counter(titles.values())
    cut = {
        raw_id: _cut_title(title, count_tokens, max_tokens, source)
        for raw_id, title in titles.items()
    }
    counts = Counter(cut.values())
    # A fitting title no other item has keeps its name (a cut that lands on it is renamed).
    colliding = {
        raw_id
        for raw_id, name in cut.items()
        if counts[name] > 1 and not (name == titles[raw_id] and title_counts[name] == 1)
    }
    keys = {raw_id: name for raw_id, name in cut.items() if raw_id not in colliding}
    if colliding and disambiguation == "words":
        named = _named_by_words(colliding, titles, cut, count_tokens, max_tokens, source)
        taken = Counter(keys.values()) + Counter(named.values())
        keys.update({raw_id: name for raw_id, name in named.items() if taken[name] == 1})
        colliding = {raw_id for raw_id, name in named.items() if taken[name] > 1}
    if colliding:
        keys.update(_numbered(colliding, titles, count_tokens, max_tokens, source))
    duplicated = [key for key, count in Counter(keys.values()).items() if count > 1]
    if duplicated:
        raise ValueError(
            f"{source}: items: names capped at {max_tokens} tokens collide: {duplicated[:5]}; "
            "choose another data.item_name_max_tokens"
        )
    return {raw_id: keys[raw_id] for raw_id in titles}


def _numbered(
    members: set[str],
    titles: Mapping[str, str],
    count_tokens: Callable[[str], int],
    max_tokens: int,
    source: str,
) -> dict[str, str]:
    """``members`` named ``<title cut> #<n>``, numbered per cut by (full title, raw id)."""
    # Room for the longest suffix any member can get.
    room = max(count_tokens(_SUFFIX.format(n).lstrip()) for n in range(1, len(members) + 1))
    groups: dict[str, list[str]] = {}
    for raw_id in members:
        base = _cut_title(titles[raw_id], count_tokens, max_tokens - room, source)
        groups.setdefault(base, []).append(raw_id)
    keys = {}
    for base, group in groups.items():
        for number, raw_id in enumerate(sorted(group, key=lambda r: (titles[r], r)), 1):
            suffix = _SUFFIX.format(number)
            budget = max_tokens - room
            key = base + suffix
            while count_tokens(key) > max_tokens:  # a tokenizer that merges across spaces
                budget -= 1
                key = _cut_title(titles[raw_id], count_tokens, budget, source) + suffix
            keys[raw_id] = key
    return keys


def _named_by_words(
    members: set[str],
    titles: Mapping[str, str],
    cut: Mapping[str, str],
    count_tokens: Callable[[str], int],
    max_tokens: int,
    source: str,
) -> dict[str, str]:
    """``members`` named head (the group's shared words, at most half the cap) + tail (the
    first words of their own title after them); see :func:`capped_item_key_map`."""
    by_cut: dict[str, list[str]] = {}
    for raw_id, name in cut.items():
        by_cut.setdefault(name, []).append(raw_id)
    shared_words: dict[str, int] = {}  # per cut: leading words its titles share
    names = {}
    for raw_id in members:
        if cut[raw_id] not in shared_words:
            group = [titles[other].split() for other in by_cut[cut[raw_id]]]
            shared_words[cut[raw_id]] = _common_prefix_length(group)
        shared = shared_words[cut[raw_id]]
        words = titles[raw_id].split()
        head = ""
        if shared:
            head = _cut_title(" ".join(words[:shared]), count_tokens, max_tokens // 2, source)
            head = head.rstrip(_TRAILING) or head
        tail_words = " ".join(words[shared:])
        name = head
        budget = max_tokens - (count_tokens(head) if head else 0)
        while tail_words and budget >= 1:
            try:
                tail = _cut_title(tail_words, count_tokens, budget, source)
            except ValueError:  # not one character of the tail fits: left to the numbers
                break
            candidate = f"{head} {tail}" if head else tail
            if count_tokens(candidate) <= max_tokens:
                name = candidate
                break
            budget -= 1  # a tokenizer that merges across the join
        names[raw_id] = name
    return names


def _common_prefix_length(word_lists: list[list[str]]) -> int:
    """Number of leading words all ``word_lists`` share."""
    length = 0
    for column in zip(*word_lists, strict=False):
        if any(word != column[0] for word in column):
            break
        length += 1
    return length


_SUFFIX = " #{}"
# Dropped from the end of a cut title: separators that only lead into the cut words.
_TRAILING = " ,;:-|/(&+"


def _cut_title(title: str, count_tokens: Callable[[str], int], budget: int, source: str) -> str:
    """``title`` when it fits ``budget`` tokens, else its longest fitting whole-word prefix."""
    if budget >= 1 and count_tokens(title) <= budget:
        return title
    words = title.split()
    # Words are pre-tokenized apart, so tokens grow with the number of words: bisect.
    fits = _longest_fitting(len(words), lambda n: count_tokens(" ".join(words[:n])) <= budget)
    if fits:
        prefix = " ".join(words[:fits])
        return prefix.rstrip(_TRAILING) or prefix
    # The first word alone is too long: cut characters.
    fits = _longest_fitting(len(words[0]), lambda n: count_tokens(words[0][:n]) <= budget)
    if not fits:
        raise ValueError(
            f"{source}: items: title {title!r} cannot be cut to {budget} token(s); "
            "raise data.item_name_max_tokens"
        )
    return words[0][:fits]


def _longest_fitting(too_long: int, fits: Callable[[int], bool]) -> int:
    """The largest n in ``0..too_long - 1`` with ``fits(n)``, by bisection (``fits`` is
    monotone, ``fits(0)`` assumed and ``fits(too_long)`` known to be false)."""
    low = 0
    while too_long - low > 1:
        middle = (low + too_long) // 2
        if fits(middle):
            low = middle
        else:
            too_long = middle
    return low


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
    def from_tables(
        cls, tables: RecTables, item_keys: Mapping[str, str] | None = None
    ) -> EntityCatalog:
        """Catalog of every item of ``tables.items`` and every non-empty user attribute value.

        Build it from ``RecSplits.tables`` (the k-core filtered tables) with
        ``RecSplits.item_keys`` so the item keys match the ones the splits use.

        Args:
            tables: the tables.
            item_keys: raw item id -> key (e.g. :func:`capped_item_key_map`); default
                :func:`item_key_map` of ``tables.items``.
        """
        attributes = {}
        for column in tables.user_features:
            for value in tables.users[column]:
                value = (value or "").strip()
                if value:
                    attributes[attribute_key(column, value)] = value
        key_of = item_key_map(tables.items, source=tables.name) if item_keys is None else item_keys
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
