"""A generated Amazon-style category with long product titles (seeded, no downloads).

It reproduces the shape of the held-out category of issue 12 on which the demo recipe
collapsed: long titles (15-60 words), brand product lines whose titles share a long
common prefix (one line of 68 variants), a popularity skew, and histories with real
sequential structure, so that a recommender can beat popularity and a model that
favours one well-predicted prefix shows it.

- Items: ``num_families`` brand lines (the first with 68 variants, the others 2-30) whose
  titles are ``<brand> <10-30 words shared by the line>, <3-20 words of the variant>``,
  then single items with titles of 15-45 words, until ``num_items``. Each item belongs
  to one of 8 departments and has a Zipf popularity (exponent 1, over a seeded order).
- Users: 1-2 home departments; 5 + Geometric(1/8) events (at most 30), one per day.
  The first item is drawn by popularity in the home departments; each next one is, with
  probability 0.5, a *successor* of the previous item (the next variant of its line, or
  one of two "also bought" items of its department fixed per item), else again by
  popularity in the home departments. No item twice.

Written in the Amazon Review Data 2018 layout (``<Category>_5.json`` and
``meta_<Category>.json``), so ``data.source: amazon`` reads it like a real category.

Example:
    >>> from recsysllm.data.synthetic import write_long_title_category
    >>> write_long_title_category("/tmp/long", seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from recsysllm.files import atomic_write

DEPARTMENTS = {
    "Kitchen": ["Travel Mug", "Chef Knife", "Cutting Board", "Kettle", "Frying Pan", "Blender"],
    "Outdoor": ["Camping Tent", "Sleeping Bag", "Headlamp", "Water Bottle", "Backpack"],
    "Office": ["Desk Lamp", "Notebook", "Gel Pen Set", "Monitor Stand", "Desk Organizer"],
    "Audio": ["Wireless Earbuds", "Bluetooth Speaker", "Headphones", "Sound Bar"],
    "Fitness": ["Yoga Mat", "Resistance Bands", "Dumbbell Set", "Jump Rope", "Foam Roller"],
    "Beauty": ["Face Serum", "Hair Dryer", "Makeup Brush Set", "Moisturizer", "Nail Kit"],
    "Pets": ["Dog Leash", "Cat Scratcher", "Pet Bed", "Chew Toy", "Litter Mat"],
    "Garden": ["Garden Hose", "Pruning Shears", "Plant Pot", "Watering Can", "Seed Starter"],
}
ADJECTIVES = [
    "Premium",
    "Professional",
    "Heavy",
    "Duty",
    "Lightweight",
    "Portable",
    "Compact",
    "Durable",
    "Ergonomic",
    "Adjustable",
    "Foldable",
    "Waterproof",
    "Rechargeable",
    "Insulated",
    "Reusable",
    "Non-Slip",
    "Ultra",
    "Slim",
    "Extra",
    "Large",
    "Deluxe",
    "Classic",
    "Modern",
    "Upgraded",
    "Advanced",
    "Eco-Friendly",
    "Stainless",
    "Quick",
    "Dry",
]
MATERIALS = [
    "Steel",
    "Bamboo",
    "Silicone",
    "Aluminum",
    "Cotton",
    "Nylon",
    "Leather",
    "Ceramic",
    "Glass",
    "Wood",
    "Polyester",
    "Titanium",
    "Rubber",
    "Canvas",
    "Copper",
]
FEATURES = [
    "Leak Proof Lid", "Soft Grip Handle", "Carrying Case", "USB-C Charging", "Anti-Slip Base",
    "Quick Release Buckle", "Memory Foam Padding", "Magnetic Closure", "LED Indicator",
    "Detachable Strap", "Reinforced Stitching", "Double Wall Insulation", "BPA Free Coating",
    "Noise Cancelling", "Touch Control", "Long Battery Life", "Dishwasher Safe Parts",
]  # fmt: skip
USES = [
    "Home and Office", "Travel and Camping", "Men and Women", "Kids and Adults", "Daily Use",
    "Gym and Workout", "Indoor and Outdoor", "Gift Giving", "Hot and Cold Drinks",
    "Beginners and Experts", "Small Spaces", "Everyday Carry",
]  # fmt: skip
COLORS = [
    "Black",
    "White",
    "Red",
    "Blue",
    "Navy",
    "Green",
    "Olive",
    "Gray",
    "Silver",
    "Gold",
    "Pink",
    "Purple",
    "Teal",
    "Orange",
    "Beige",
]
SIZES = ["Small", "Medium", "Large", "X-Large", "12 oz", "16 oz", "20 oz", "32 oz", "1 Pack"]
BRAND_SYLLABLES = [
    "Ac",
    "Bel",
    "Cor",
    "Dex",
    "Ev",
    "Fal",
    "Gor",
    "Hal",
    "Iv",
    "Jun",
    "Kel",
    "Lum",
    "Mor",
    "Nex",
    "Or",
    "Pax",
    "Qu",
    "Ral",
    "Sol",
    "Tor",
]
FILLER = [
    "with",
    "for",
    "and",
    "featuring",
    "includes",
    "designed",
    "perfect",
    "ideal",
    "great",
    "easy",
    "clean",
    "setup",
    "storage",
    "version",
    "edition",
    "model",
    "series",
    "kit",
    "set",
    "bundle",
    "pack",
    "replacement",
    "accessory",
    "style",
    "color",
    "size",
]
BIG_LINE_VARIANTS = 68  # the collapsing brand line of issue 12 had 68 titles


def _words(rng: np.random.Generator, pool: list[str], count: int) -> list[str]:
    return [pool[int(i)] for i in rng.integers(0, len(pool), size=count)]


def _brand(rng: np.random.Generator) -> str:
    return (
        "".join(_words(rng, BRAND_SYLLABLES, 2)) + _words(rng, ["a", "o", "ix", "er", "on"], 1)[0]
    )


def _long_phrase(rng: np.random.Generator, department: str, length: int) -> list[str]:
    """About ``length`` words of product description for ``department``."""
    words: list[str] = []
    words += _words(rng, ADJECTIVES, 2) + _words(rng, MATERIALS, 1)
    words += _words(rng, DEPARTMENTS[department], 1)[0].split()
    while len(words) < length:
        choice = rng.integers(0, 4)
        if choice == 0:
            words += ["with", *_words(rng, FEATURES, 1)[0].split()]
        elif choice == 1:
            words += ["for", *_words(rng, USES, 1)[0].split()]
        elif choice == 2:
            words += _words(rng, ADJECTIVES, 1) + _words(rng, FILLER, 1)
        else:
            words += _words(rng, FILLER + MATERIALS, 2)
    return words[:length]


def long_title_records(
    seed: int = 0, num_items: int = 1200, num_families: int = 30, num_users: int = 1500
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(reviews, meta) of the generated category, as Amazon-2018 records (see the module).

    Args:
        seed: seed of everything (numpy's default_rng).
        num_items: items in the meta file (the 5-core keeps the ones with 5 reviews).
        num_families: brand product lines (the first has 68 variants).
        num_users: reviewers.
    """
    rng = np.random.default_rng(seed)
    departments = list(DEPARTMENTS)
    titles: list[str] = []
    item_department: list[int] = []
    item_brand: list[str] = []
    next_variant: dict[int, int] = {}
    for family in range(num_families):
        if len(titles) >= num_items:
            break
        size = BIG_LINE_VARIANTS if family == 0 else int(rng.integers(2, 31))
        size = min(size, num_items - len(titles))
        department = int(rng.integers(0, len(departments)))
        brand = _brand(rng)
        shared = " ".join(_long_phrase(rng, departments[department], int(rng.integers(10, 31))))
        first = len(titles)
        prefix = f"{brand} {shared}"
        for variant in range(size):
            tail = [*_words(rng, COLORS, 1), *_words(rng, SIZES, 1)[0].split()]
            tail += _long_phrase(rng, departments[department], int(rng.integers(1, 19)))
            titles.append(f"{prefix}, {' '.join(tail[: 60 - len(prefix.split())])}")
            item_department.append(department)
            item_brand.append(brand)
            if variant:
                next_variant[first + variant - 1] = first + variant
    while len(titles) < num_items:
        department = int(rng.integers(0, len(departments)))
        brand = _brand(rng)
        words = [brand, *_long_phrase(rng, departments[department], int(rng.integers(14, 45)))]
        titles.append(" ".join(words))
        item_department.append(department)
        item_brand.append(brand)

    # Zipf popularity over a seeded order of the items.
    popularity = np.empty(num_items)
    popularity[rng.permutation(num_items)] = 1.0 / np.arange(1, num_items + 1)
    by_department = [
        # dtype: a department without items must stay an (empty) integer index
        np.array([i for i in range(num_items) if item_department[i] == d], dtype=int)
        for d in range(len(departments))
    ]
    also_bought = {}
    for item in range(num_items):
        pool = by_department[item_department[item]]
        weights = popularity[pool] / popularity[pool].sum()
        also_bought[item] = [int(x) for x in rng.choice(pool, size=2, p=weights)]

    def by_popularity(pool: np.ndarray, exclude: set[int]) -> int:
        allowed = np.array([i for i in pool if i not in exclude], dtype=int)
        weights = popularity[allowed] / popularity[allowed].sum()
        return int(rng.choice(allowed, p=weights))

    reviews = []
    for user in range(num_users):
        homes = rng.choice(len(departments), size=int(rng.integers(1, 3)), replace=False)
        home_pool = np.concatenate([by_department[d] for d in homes])
        length = min(30, num_items, 5 + int(rng.geometric(1 / 8)) - 1)
        history: list[int] = []
        while len(history) < length:
            item = None
            if history and rng.random() < 0.5:
                previous = history[-1]
                successors = [*([next_variant[previous]] if previous in next_variant else [])]
                successors += also_bought[previous]
                successors = [s for s in successors if s not in history]
                if successors:
                    item = successors[int(rng.integers(0, len(successors)))]
            if item is None:
                pool = home_pool if len(set(home_pool) - set(history)) else np.arange(num_items)
                item = by_popularity(pool, set(history))
            history.append(item)
        for day, item in enumerate(history):
            reviews.append(
                {
                    "overall": float(rng.integers(3, 6)),
                    "reviewerID": f"U{user:06d}",
                    "asin": f"L{item:09d}",
                    "reviewText": "",
                    "summary": "",
                    "unixReviewTime": 1_500_000_000 + 86_400 * (user % 97 + day),
                }
            )
    meta = [
        {
            "asin": f"L{item:09d}",
            "title": titles[item],
            "brand": item_brand[item],
            "category": ["Generated", departments[item_department[item]]],
        }
        for item in range(num_items)
    ]
    return reviews, meta


def write_long_title_category(
    directory: str | os.PathLike, category: str = "LongTitles", seed: int = 0, **sizes: int
) -> tuple[Path, Path]:
    """Write ``<category>_5.json`` and ``meta_<category>.json`` (atomically) into ``directory``.

    Args:
        directory: target directory (created).
        category: the category name (``data.category``).
        seed: generator seed.
        **sizes: ``num_items``, ``num_families``, ``num_users`` (:func:`long_title_records`).

    Returns:
        The reviews path and the meta path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    reviews, meta = long_title_records(seed, **sizes)
    paths = directory / f"{category}_5.json", directory / f"meta_{category}.json"
    for path, records in zip(paths, (reviews, meta), strict=True):
        atomic_write(path, "".join(json.dumps(record) + "\n" for record in records))
    return paths
