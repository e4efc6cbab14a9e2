"""The real clothing-reviews data (one review per user) yields valid/test text examples."""

from __future__ import annotations

from collections import Counter

import pytest
from conftest import fetch_or_skip

from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.sources import load_dataset_by_name
from recsysllm.data.splits import SPLITS, build_splits
from recsysllm.data.tasks import TaskBuilder, explanation_sentence
from recsysllm.prompts import load_prompts

N_REVIEWS = 23_486


@pytest.mark.network
def test_real_clothing_reviews_give_valid_and_test_text_examples():
    tables = load_dataset_by_name(
        "clothing-reviews", fetch_or_skip("clothing-reviews", "clothing-reviews")
    )
    splits = build_splits(tables, k=1, seed=0)
    # Each review is its own user: every user is short and sits whole in one split.
    assert len(splits.users) == N_REVIEWS == len(splits.short_users)
    members = {split: set(splits.split_users(split)) for split in SPLITS}
    assert sum(map(len, members.values())) == N_REVIEWS
    assert not (members["train"] & members["valid"] or members["train"] & members["test"])
    assert not members["valid"] & members["test"]
    for split in ("valid", "test"):
        # ~10% each: Binomial(23486, 0.1) has sd ~46, so +-300 is ~6.5 sd.
        assert abs(len(members[split]) - N_REVIEWS / 10) < 300, len(members[split])

    builder = TaskBuilder(splits, EntityCatalog.from_tables(splits.tables), load_prompts())
    reviews = {user: events[-1] for user, events in splits.sequences.items()}
    for split in ("valid", "test"):
        examples = builder.examples(split, ["explanation", "review", "rating"], prompts="seen")
        users = {task: {e.user for e in examples if e.task == task} for task in Counter(
            e.task for e in examples
        )}  # fmt: skip
        assert set(users) == {"explanation", "review", "rating"}
        for task in ("explanation", "review"):
            assert users[task] <= members[split]
            # A few reviews lack text (or a summary): most users still get an example.
            assert len(users[task]) > 0.85 * len(members[split]), (task, len(users[task]))
        for example in examples:
            event = reviews[example.user]
            assert example.history == ()  # one review per user: nothing before it
            if example.task == "explanation":
                # Real review text: the review's opening words.
                assert " ".join(event.review.split()).startswith(example.target)
                assert example.target == explanation_sentence(event.review)
            elif example.answer_type == "text":  # review -> its title
                assert example.target == " ".join(event.summary.split())
            elif example.answer_type == "yesno":  # "4 stars or more?"
                words = builder.prompts.get(example.template_id).answer_words
                assert example.target == words[0 if event.rating >= 4 else 1]
            else:
                assert float(example.target) == event.rating
