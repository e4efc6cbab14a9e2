"""The three tables every source produces, held as Arrow-backed ``datasets.Dataset``."""

from __future__ import annotations

from dataclasses import dataclass, field

import datasets

# Column contract. Every source fills every column; absent values use the marker noted.
INTERACTION_COLUMNS = {
    "user": "string",  # user id
    "item": "string",  # raw item id of the source (asin, movie id, ...)
    "timestamp": "int64",  # seconds since epoch; -1 when the source has none
    "rating": "float32",  # NaN when absent
    "review": "string",  # "" when absent
    "summary": "string",  # "" when absent
}
ITEM_COLUMNS = {
    "item": "string",  # raw item id, unique
    "title": "string",  # display title (never empty: sources apply a counted fallback)
}
USER_COLUMNS = {
    "user": "string",  # user id, unique; feature columns follow (strings, "" when unknown)
}


@dataclass
class RecTables:
    """Interactions, items and users of one data set.

    Attributes:
        name: data set name, e.g. "ml-100k".
        interactions: columns INTERACTION_COLUMNS.
        items: columns ITEM_COLUMNS plus ``item_attributes``.
        users: columns USER_COLUMNS plus the keys of ``user_features``.
        user_features: user feature column -> template that textualizes its value,
            e.g. ``{"age": "is {value} years old"}``; values become entities.
        item_attributes: extra item columns (genres, brand, ...), as strings.
        has_reviews: whether interactions carry review text (explanation / review families).
        notes: counted fallbacks and other facts worth reporting (e.g. items without title).
    """

    name: str
    interactions: datasets.Dataset
    items: datasets.Dataset
    users: datasets.Dataset
    user_features: dict[str, str] = field(default_factory=dict)
    item_attributes: tuple[str, ...] = ()
    has_reviews: bool = False
    notes: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for table_name, table, required in (
            ("interactions", self.interactions, INTERACTION_COLUMNS),
            ("items", self.items, ITEM_COLUMNS),
            (
                "users",
                self.users,
                dict(USER_COLUMNS, **dict.fromkeys(self.user_features, "string")),
            ),
        ):
            missing = [c for c in required if c not in table.column_names]
            if missing:
                raise ValueError(f"{self.name}: {table_name} table lacks columns {missing}")
