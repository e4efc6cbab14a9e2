"""Small generated data files in the real formats, and damaged copies of them (no downloads).

``write_amazon_2018`` writes a 5-core-shaped review file and a meta file with the field
layout of the Amazon Review Data 2018 release (one JSON object per line, gzip optional).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

WORDS = [
    "great",
    "soft",
    "warm",
    "bright",
    "sturdy",
    "light",
    "handy",
    "quiet",
    "simple",
    "clever",
    "tidy",
    "strong",
    "fresh",
    "smooth",
    "cozy",
    "sharp",
]


def amazon_2018_records(n_users: int = 60, n_items: int = 40, per_user: int = 8):
    """(reviews, meta) as lists of dicts; every user reviews ``per_user`` distinct items."""
    reviews, meta = [], []
    for item in range(n_items):
        asin = f"B{item:09d}"
        meta.append(
            {
                "category": ["Home & Kitchen", "Kitchen", WORDS[item % len(WORDS)].title()],
                "description": [f"A {WORDS[item % 7]} thing."],
                "title": f"{WORDS[item % len(WORDS)].title()} Kettle Model {item}",
                "also_buy": [f"B{(item + 1) % n_items:09d}"],
                "brand": f"Brand{item % 5}",
                "feature": ["dishwasher safe"],
                "rank": f"{1000 + item} in Kitchen",
                "main_cat": "Amazon Home",
                "date": "March 3, 2014",
                "price": f"${10 + item}.99",
                "asin": asin,
                "imageURL": [],
                "imageURLHighRes": [],
            }
        )
    for user in range(n_users):
        for j in range(per_user):
            item = (user * 3 + j * 5) % n_items  # distinct for j < 8 when n_items = 40
            word = WORDS[(user + j) % len(WORDS)]
            reviews.append(
                {
                    "overall": float(1 + (user + item) % 5),
                    "verified": True,
                    "reviewTime": "09 13, 2015",
                    "reviewerID": f"A{user:012d}",
                    "asin": f"B{item:09d}",
                    "style": {"Color:": " Red"},
                    "reviewerName": f"Reviewer {user}",
                    "reviewText": f"This kettle is {word}. It boils fast and looks {word}.",
                    "summary": f"{word.title()} kettle",
                    "unixReviewTime": 1_400_000_000 + 86_400 * (user + 7 * j),
                }
            )
    return reviews, meta


def write_json_lines(path: Path, records: list, gz: bool = False) -> Path:
    text = "".join(json.dumps(record) + "\n" for record in records)
    if gz:
        path.write_bytes(gzip.compress(text.encode()))
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_amazon_2018(directory: Path, category: str = "Kitchen", gz: bool = True, **kw):
    """``<category>_5.json(.gz)`` and ``meta_<category>.json(.gz)`` in ``directory``."""
    reviews, meta = amazon_2018_records(**kw)
    suffix = ".json.gz" if gz else ".json"
    directory.mkdir(parents=True, exist_ok=True)
    return (
        write_json_lines(directory / f"{category}_5{suffix}", reviews, gz),
        write_json_lines(directory / f"meta_{category}{suffix}", meta, gz),
    )
