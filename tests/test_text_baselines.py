"""The non-LM rating and text reference rows (item_mean, item_text, lead) and the ROUGE
helpers the text bootstrap uses, on hand-built one-review-per-user data."""

from __future__ import annotations

import datasets
import pytest

from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.splits import build_splits
from recsysllm.data.tables import RecTables
from recsysllm.data.tasks import TaskBuilder
from recsysllm.evaluation import metrics
from recsysllm.evaluation.evaluator import EvalProtocol
from recsysllm.evaluation.text_baselines import (
    lead_words,
    most_common_text,
    reference_rows,
)
from recsysllm.prompts import load_prompts

# item -> (rating, review text, title) of each of its reviews; one review per user.
REVIEWS = {
    "0": [
        (5.0, "Love this dress. It fits well.", "Love it"),
        (4.0, "Love this dress. Great color.", "Love it"),
        (2.0, "Too tight around the waist.", "Runs small"),
        (5.0, "Perfect for summer days at the beach.", "Beach ready"),
    ],
    "1": [
        (3.0, "The fabric is thin and a bit see through.", "Thin fabric"),
        (1.0, "Returned it the same day. Awful cut.", "Awful"),
    ],
    "2": [(4.0, "Soft and warm sweater for winter evenings.", "Cozy sweater")] * 30,
}


def tables() -> RecTables:
    rows = {k: [] for k in ("user", "item", "timestamp", "rating", "review", "summary")}
    for item, reviews in REVIEWS.items():
        for rating, review, title in reviews:
            rows["user"].append(f"u{len(rows['user']):02d}")
            rows["item"].append(item)
            rows["timestamp"].append(-1)
            rows["rating"].append(rating)
            rows["review"].append(review)
            rows["summary"].append(title)
    titles = {"0": "Dresses #0", "1": "Blouses #1", "2": "Sweaters #2"}
    return RecTables(
        name="tiny-reviews",
        interactions=datasets.Dataset.from_dict(rows),
        items=datasets.Dataset.from_dict({"item": list(titles), "title": list(titles.values())}),
        users=datasets.Dataset.from_dict({"user": rows["user"]}),
        user_features={},
        has_reviews=True,
    )


def test_most_common_text_and_lead_words():
    assert most_common_text(["b", "a a", "b", "a a"], 2) == "a a"  # tie: length 2 closest
    assert most_common_text(["x y z", "y z", "x"], 1) == "x"
    assert most_common_text(["d", "c"], 1) == "c"  # tie on both: alphabetical
    assert lead_words("  Soft and\n warm sweater ", 3) == "Soft and warm"


def test_reference_rows_from_known_events_only():
    splits = build_splits(tables(), k=1, seed=0)
    builder = TaskBuilder(splits, EntityCatalog.from_tables(splits.tables), load_prompts())
    examples = builder.examples("test", ["rating", "explanation", "review"], prompts="all")
    assert {e.task for e in examples} == {"rating", "explanation", "review"}
    rows = reference_rows(examples, splits, "test", EvalProtocol())
    assert set(rows) == {"item_mean", "item_text", "lead"}

    # Known events for test: train users and valid users (every user is whole in one split).
    # user -> (item, (rating, review, title)), in the order tables() numbered them
    reviews = [(item, review) for item, item_reviews in REVIEWS.items() for review in item_reviews]
    users = {f"u{index:02d}": pair for index, pair in enumerate(reviews)}
    known = [users[u] for u in users if splits.short_users[u] in ("train", "valid")]
    test_users = {u for u in users if splits.short_users[u] == "test"}
    assert test_users and {o.user for o in rows["item_mean"].outcomes} == test_users

    for outcome in rows["item_mean"].outcomes:
        item = users[outcome.user][0]
        same = [r for i, (r, _, _) in known if i == item]
        pooled = [r for _, (r, _, _) in known]
        expected = sum(same) / len(same) if same else sum(pooled) / len(pooled)
        assert outcome.rating == pytest.approx(expected)
        assert float(outcome.target) == users[outcome.user][1][0]

    by_user = {}
    for outcome in rows["item_text"].outcomes:
        by_user.setdefault(outcome.user, {})[outcome.family] = outcome.text
    titles = [t for _, (_, _, t) in known]
    for user, texts in by_user.items():
        item = users[user][0]
        item_titles = [t for i, (_, _, t) in known if i == item]
        if item == "2":  # 30 identical reviews: the item's only title
            assert texts["review"] == "Cozy sweater"
            assert texts["explanation"] == "Soft and warm sweater for winter evenings."
        if item_titles and len(set(item_titles)) == 1:
            assert texts["review"] == item_titles[0]
        if not item_titles:  # an item with no known review: the family's most common
            assert texts["review"] == max(set(titles), key=titles.count)
    # u02 reviewed item 0 ("Runs small"); item 0's known reviews are u00, u01 and u03.
    assert splits.short_users["u02"] == "test"
    assert by_user["u02"] == {"review": "Love it", "explanation": "Love this dress."}
    (u02,) = [o for o in rows["item_mean"].outcomes if o.user == "u02" and o.family == "rating"][:1]
    assert u02.rating == pytest.approx((5 + 4 + 5) / 3)
    assert [o.text for o in rows["lead"].outcomes if o.user == "u02"][0] == "Too tight"
    # The review's lead words: as many as the median known title (2 words here).
    for outcome in rows["lead"].outcomes:
        assert outcome.family == "review" and outcome.variant == "text"
        assert outcome.text == " ".join(users[outcome.user][1][1].split()[:2])
    assert {o.family for o in rows["lead"].outcomes} == {"review"}


def test_rouge_per_example_and_its_means_equal_rouge():
    hypotheses = ["love this dress", "too small", "", "soft warm sweater"]
    references = ["love the dress", "runs small", "nice", "soft and warm sweater"]
    per_example = metrics.rouge_per_example(hypotheses, references)
    assert metrics.mean_rouge(per_example, range(4)) == pytest.approx(
        metrics.rouge(hypotheses, references)
    )
    rows = [3, 0, 3]
    picked = metrics.rouge([hypotheses[i] for i in rows], [references[i] for i in rows])
    assert metrics.mean_rouge(per_example, rows) == pytest.approx(picked)
    assert per_example[1]["rouge1"] == pytest.approx(0.5)  # "small" of 2 and 2 words
