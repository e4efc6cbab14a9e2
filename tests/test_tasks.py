"""Task examples: every template renders, no leakage, direct candidates, mixtures, seen/unseen."""

from __future__ import annotations

import logging
from collections import Counter

import datasets
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recsysllm.data.catalog import EntityCatalog, UnknownEntityError
from recsysllm.data.splits import build_splits
from recsysllm.data.tables import RecTables
from recsysllm.data.tasks import ANSWER_PLACEHOLDER, TaskBuilder, TaskMixture, render_example
from recsysllm.prompts import load_prompts
from recsysllm.schema import TASK_FAMILIES

DAY = 86_400
FEATURES = {"age": "is {value} years old", "occupation": "works as a {value}"}
REVIEWS = [
    "Great fit and the fabric is soft. Would buy again.",
    "Runs small, the color was not as pictured. Returned it.",
    "Sturdy box.",
]


def make_tables(rows, *, has_reviews, users=None, n_items=None) -> RecTables:
    """rows: (user, item, timestamp, rating, review, summary); items titled "Title <item>"."""
    item_ids = sorted({r[1] for r in rows} | {f"i{n}" for n in range(n_items or 0)})
    users = users or {"user": []}
    return RecTables(
        name="toy",
        interactions=datasets.Dataset.from_dict(
            {
                "user": [r[0] for r in rows],
                "item": [r[1] for r in rows],
                "timestamp": [r[2] for r in rows],
                "rating": [r[3] for r in rows],
                "review": [r[4] for r in rows],
                "summary": [r[5] for r in rows],
            }
        ),
        items=datasets.Dataset.from_dict(
            {"item": item_ids, "title": [f"Title {i}" for i in item_ids]}
        ),
        users=datasets.Dataset.from_dict(
            users, features=datasets.Features({c: datasets.Value("string") for c in users})
        ),
        user_features={c: FEATURES[c] for c in users if c != "user"},
        has_reviews=has_reviews,
    )


def review_rows(n_users=24, events=8):
    """n_users x events over 120 items, all covered; users 0, 3, 6, ... end on a timestamp tie."""
    rows = []
    for u in range(n_users):
        for j in range(events):
            day = j if (u % 3 or j < events - 1) else j - 1  # tie between valid and test
            review = REVIEWS[(u + j) % 3] if (u + j) % 5 else ""  # some events lack a review
            rows.append(
                (
                    f"u{u}",
                    f"i{(u * 5 + j) % 120}",
                    day * DAY,
                    float(1 + (u + j) % 5),
                    review,
                    "Summary words" if review else "",
                )
            )
    return rows


USERS = {
    "user": ["u0", "u1", "u2", "u3"],  # u4.. have no row at all
    "age": ["25-34", "", "18-24", "25-34"],
    "occupation": ["programmer", "student", "", "writer"],
}


@pytest.fixture(scope="module")
def prompts():
    return load_prompts()


@pytest.fixture(scope="module")
def review_world(prompts):
    tables = make_tables(review_rows(), has_reviews=True, users=USERS)
    splits = build_splits(tables, k=1, seed=0)
    catalog = EntityCatalog.from_tables(splits.tables)
    return splits, catalog, TaskBuilder(splits, catalog, prompts, history_budget=5)


@pytest.fixture(scope="module")
def movielens_world(prompts):
    rows = [(u, i, t, rating, "", "") for (u, i, t, rating, _, _) in review_rows(n_users=12)]
    tables = make_tables(rows, has_reviews=False, users=USERS)
    splits = build_splits(tables, k=1, seed=0, num_negatives=9)
    catalog = EntityCatalog.from_tables(splits.tables)
    return splits, catalog, TaskBuilder(splits, catalog, prompts, history_budget=5)


def check_example(example, catalog, prompts):
    """Invariants every rendered task example must satisfy."""
    template = prompts.get(example.template_id)
    assert example.task == template.family and example.seen == template.seen
    answers = [s for s in example.segments if s.answer]
    assert len(answers) == 1, example.describe()
    (answer,) = answers
    if template.answer_type == "item":
        assert answer.entity == example.target == answer.text
    else:
        assert answer.entity is None and answer.text.strip() == example.target
    if template.answer_type == "yesno":
        assert example.target in template.answer_words
    if template.answer_type == "rating":
        assert 1 <= float(example.target) <= 5
    if template.answer_mask == "gmask":
        assert example.segments[-1] is answer
    for segment in example.segments:
        assert segment.text and segment.text == segment.text.replace("  ", " ")
        if segment.entity is None:
            assert "{" not in segment.text
        else:
            assert catalog.entity_text(segment.entity) == segment.text
    assert not example.segments[0].text.startswith(" ")
    shown = [s.entity for s in example.segments if s.entity is not None and not s.answer]
    for key in example.history + example.candidates:
        assert key in shown
    if example.candidates and template.answer_type == "item":
        assert example.target in example.candidates


def test_every_template_renders_with_reviews_and_user_features(review_world, prompts):
    splits, catalog, builder = review_world
    rendered = set()
    for split in ("valid", "test"):
        for example in builder.examples(split, prompts="all", seed=0):
            check_example(example, catalog, prompts)
            rendered.add(example.template_id)
    for example in builder.examples("train", prompts="all", seed=0):
        check_example(example, catalog, prompts)
    assert rendered == {t.id for f in TASK_FAMILIES for t in prompts.templates(f)}


def test_user_profile_values_are_entities(review_world, prompts):
    _, _, builder = review_world
    by_user = {
        e.user: e
        for e in builder.examples("test", ["rating"], prompts="all")
        if e.template_id == "rating-1"
    }
    attributes = {
        u: [s.entity for s in e.segments if s.entity and s.entity.startswith("attr:")]
        for u, e in by_user.items()
    }
    assert attributes["u0"] == ["attr:age=25-34", "attr:occupation=programmer"]
    assert attributes["u1"] == ["attr:occupation=student"]  # unknown age is left out
    assert attributes["u5"] == []  # no users-table row: no profile, still renders
    assert "".join(s.text for s in by_user["u0"].segments).startswith(
        "The user is 25-34 years old and works as a programmer. The user has interacted with "
    )
    assert by_user["u5"].segments[0].text.startswith("The user has interacted with")


def test_review_families_are_skipped_with_one_log_line(movielens_world, prompts, caplog):
    _, catalog, builder = movielens_world
    with caplog.at_level(logging.INFO, logger="recsysllm.data.tasks"):
        examples = builder.examples("test", prompts="all", seed=0)
    skip_lines = [
        r.getMessage() for r in caplog.records if "skipping task families" in r.getMessage()
    ]
    assert len(skip_lines) == 1
    assert (
        "explanation" in skip_lines[0]
        and "review" in skip_lines[0]
        and "no review text" in skip_lines[0]
    )
    assert {e.task for e in examples} == {"rating", "sequential", "direct"}
    for example in examples:
        check_example(example, catalog, prompts)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="recsysllm.data.tasks"):
        training = builder.training_examples(TaskMixture(examples_per_epoch=50), seed=0, epoch=0)
    assert sum("skipping task families" in r.getMessage() for r in caplog.records) == 1
    assert len(training) == 50 and {e.task for e in training} <= {
        "rating",
        "sequential",
        "direct",
        "pretrain",
    }


def test_events_without_review_are_counted_not_silently_dropped(review_world, caplog):
    splits, _, builder = review_world
    with caplog.at_level(logging.INFO, logger="recsysllm.data.tasks"):
        examples = builder.examples("test", ["explanation"], prompts="all")
    without_review = sum(not splits.test[u].review for u in splits.users)
    assert without_review > 0
    n_templates = len(builder.prompts.templates("explanation"))
    assert len(examples) == (len(splits.users) - without_review) * n_templates
    assert any(
        f"explanation/no review text: {without_review * n_templates}" in r.getMessage()
        for r in caplog.records
    )


@st.composite
def interaction_data(draw):
    timed = draw(st.booleans())
    rows = []
    for user in range(draw(st.integers(1, 8))):
        n_events = draw(st.integers(1, 7))  # 1 and 2: short users, whole in one split
        for item in draw(
            st.lists(st.integers(0, 11), min_size=n_events, max_size=n_events, unique=True)
        ):
            timestamp = draw(st.integers(0, 3)) * DAY if timed else -1  # many ties
            rows.append((f"u{user}", f"i{item}", timestamp, 4.0, "Fine. Sturdy enough.", "ok"))
    order = draw(st.permutations(range(len(rows))))
    return [rows[i] for i in order]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=interaction_data())
def test_no_leakage(rows, prompts):
    splits = build_splits(make_tables(rows, has_reviews=True), k=1, num_negatives=0)
    builder = TaskBuilder(
        splits, EntityCatalog.from_tables(splits.tables), prompts, history_budget=4
    )
    # Independent expectation: each user's events ordered by (timestamp, row).
    ordered: dict[str, list[tuple[str, int]]] = {}
    for row in sorted(range(len(rows)), key=lambda r: (rows[r][2], r)):
        ordered.setdefault(rows[row][0], []).append((f"Title {rows[row][1]}", rows[row][2]))
    position = {
        user: {item: (p, ts) for p, (item, ts) in enumerate(events)}
        for user, events in ordered.items()
    }
    short = {user for user, events in ordered.items() if len(events) < 3}
    assert set(splits.short_users) == short
    for split, offset in (("test", 1), ("valid", 2)):
        for example in builder.examples(
            split, prompts="all", seed=0
        ) + builder.pretraining_documents(split):
            if example.user in short:
                # A short user is evaluated in its own split only, on its last event.
                assert splits.short_users[example.user] == split
                target_item, target_ts = ordered[example.user][-1]
                target_position = len(ordered[example.user]) - 1
            else:
                target_item, target_ts = ordered[example.user][-offset]
                target_position = len(ordered[example.user]) - offset
            if example.answer_type == "item":
                assert example.target == target_item
            assert target_item not in example.history
            for key in example.history:
                p, ts = position[example.user][key]
                assert p < target_position
                if target_ts >= 0:
                    assert ts < target_ts
    train_examples = builder.training_examples(TaskMixture(examples_per_epoch=30), seed=1, epoch=0)
    for example in train_examples + builder.examples("train", prompts="all"):
        if example.user in short:
            assert splits.short_users[example.user] == "train"
        if example.task in ("sequential", "direct") and example.answer_type == "item":
            target_position, target_ts = position[example.user][example.target]
            if example.user not in short:
                assert target_position < len(ordered[example.user]) - 2  # a train event
            assert example.target not in example.history
            for key in example.history:
                p, ts = position[example.user][key]
                assert p < target_position and (target_ts < 0 or ts < target_ts)


def test_direct_candidates_use_the_stored_lists(review_world, prompts):
    splits, catalog, builder = review_world
    again_splits = build_splits(
        make_tables(review_rows(), has_reviews=True, users=USERS), k=1, seed=0
    )
    again = TaskBuilder(
        again_splits, EntityCatalog.from_tables(again_splits.tables), prompts, history_budget=5
    )
    first = builder.examples("test", ["direct"], prompts="all", seed=7)
    second = again.examples("test", ["direct"], prompts="all", seed=7)
    assert first == second
    positions = set()
    listed = [e for e in first if e.answer_type == "item"]
    assert listed
    for example in listed:
        interacted = {e.item for e in splits.sequences[example.user]}
        assert len(example.candidates) == 100 == len(set(example.candidates))
        assert example.target == splits.test[example.user].item
        assert set(example.candidates) == set(splits.candidates["test"][example.user])
        assert not (set(example.candidates) - {example.target}) & interacted
        positions.add(example.candidates.index(example.target))
    assert len(positions) > 1  # shuffled: the target does not sit at a fixed position

    training = builder.training_examples(
        TaskMixture({"direct": 1.0}, examples_per_epoch=40), seed=0, epoch=0
    )
    for example in training:
        if example.answer_type == "item":
            interacted = {e.item for e in splits.sequences[example.user]}
            assert len(set(example.candidates)) == 100 and example.target in example.candidates
            assert not (set(example.candidates) - {example.target}) & interacted


def test_train_num_negatives_shortens_training_lists_only(review_world, prompts):
    splits, catalog, _ = review_world
    short = TaskBuilder(splits, catalog, prompts, history_budget=5, train_num_negatives=9)
    training = short.training_examples(
        TaskMixture({"direct": 1.0}, examples_per_epoch=40), seed=0, epoch=0
    )
    listed = [e for e in training if e.answer_type == "item"]
    assert listed
    for example in listed:
        interacted = {e.item for e in splits.sequences[example.user]}
        assert len(set(example.candidates)) == 10 and example.target in example.candidates
        assert not (set(example.candidates) - {example.target}) & interacted
    # Valid/test lists stay the stored 1 + 99.
    for example in short.examples("test", ["direct"], prompts="all", seed=7):
        if example.answer_type == "item":
            assert set(example.candidates) == set(splits.candidates["test"][example.user])
            assert len(example.candidates) == 100
    with pytest.raises(ValueError, match="train_num_negatives must be >= 1"):
        TaskBuilder(splits, catalog, prompts, train_num_negatives=0)


def test_train_num_negatives_list_mixes_list_lengths(review_world, prompts):
    splits, catalog, _ = review_world
    mixed = TaskBuilder(splits, catalog, prompts, history_budget=5, train_num_negatives=[4, 9])
    mixture = TaskMixture({"direct": 1.0}, examples_per_epoch=200)
    listed = [
        e for e in mixed.training_examples(mixture, seed=0, epoch=0) if e.answer_type == "item"
    ]
    lengths = [len(set(e.candidates)) for e in listed]
    assert set(lengths) == {5, 10}
    # Uniform over the two counts: far from all of one kind (binomial, n > 60).
    assert 0.3 < lengths.count(10) / len(lengths) < 0.7
    for example in listed:
        interacted = {e.item for e in splits.sequences[example.user]}
        assert example.target in example.candidates
        assert not (set(example.candidates) - {example.target}) & interacted
    # Seeded like every other draw: the same seed and epoch give the same lists.
    again = [
        e.candidates
        for e in mixed.training_examples(mixture, seed=0, epoch=0)
        if e.answer_type == "item"
    ]
    assert again == [e.candidates for e in listed]
    # A one-element list is the plain count.
    single = TaskBuilder(splits, catalog, prompts, history_budget=5, train_num_negatives=[9])
    plain = TaskBuilder(splits, catalog, prompts, history_budget=5, train_num_negatives=9)
    assert single.training_examples(mixture, seed=1, epoch=0) == plain.training_examples(
        mixture, seed=1, epoch=0
    )
    for bad in ([], [9, 0]):
        with pytest.raises(ValueError, match="train_num_negatives must be >= 1"):
            TaskBuilder(splits, catalog, prompts, train_num_negatives=bad)


def test_train_num_negatives_above_the_evaluation_lists_is_capped_at_them(
    review_world, prompts, caplog
):
    """A catalog too small for the configured lists gives the stored lists fewer negatives;
    training lists then get no more than those, and the log says so."""
    splits, catalog, _ = review_world
    stored = len(next(iter(splits.candidates["test"].values()))) - 1
    with caplog.at_level("WARNING", logger="recsysllm.data.tasks"):
        capped = TaskBuilder(splits, catalog, prompts, train_num_negatives=[4, stored + 400])
    assert f"only {stored} negatives" in caplog.text
    mixture = TaskMixture({"direct": 1.0}, examples_per_epoch=100)
    lengths = {
        len(e.candidates)
        for e in capped.training_examples(mixture, seed=0, epoch=0)
        if e.answer_type == "item"
    }
    assert lengths == {5, stored + 1}


def test_training_examples_use_only_seen_templates_and_follow_the_weights(review_world, prompts):
    _, catalog, builder = review_world
    unseen = {t.id for f in TASK_FAMILIES for t in prompts.templates(f, seen=False)}
    mixture = TaskMixture(examples_per_epoch=300)
    used = set()
    for epoch in range(3):
        examples = builder.training_examples(mixture, seed=0, epoch=epoch)
        assert len(examples) == 300
        for example in examples:
            assert example.seen and example.template_id not in unseen
            if example.task != "pretrain":
                check_example(example, catalog, prompts)
            used.add(example.template_id)
    assert used - {""} == {t.id for f in TASK_FAMILIES for t in prompts.templates(f, seen=True)}
    assert {e.template_id for e in builder.examples("valid", prompts="unseen")} == unseen

    weighted = builder.training_examples(
        TaskMixture({"rating": 3.0, "sequential": 1.0}, 40), seed=0, epoch=0
    )
    assert Counter(e.task for e in weighted) == {"rating": 30, "sequential": 10}
    with_docs = builder.training_examples(
        TaskMixture({"review": 1.0, "pretrain": 1.0}, 11), seed=0, epoch=0
    )
    assert Counter(e.task for e in with_docs) in (
        {"review": 6, "pretrain": 5},
        {"review": 5, "pretrain": 6},
    )
    # examples_per_epoch None: one per (user, usable family).
    assert len(
        builder.training_examples(TaskMixture({"rating": 1.0, "direct": 2.0}), 0, 0)
    ) == 2 * len(builder.users)


def test_training_examples_draw_only_the_listed_templates(review_world, prompts):
    _, catalog, builder = review_world
    listed = ("sequential-1", "sequential-3", "direct-4")
    mixture = TaskMixture(
        {"sequential": 3.0, "direct": 1.0, "pretrain": 1.0},
        examples_per_epoch=200,
        templates=listed,
    )
    examples = builder.training_examples(mixture, seed=0, epoch=0)
    # Weights still decide the family counts (largest remainder of 200 * 3/5, 1/5, 1/5).
    assert Counter(e.task for e in examples) == {"sequential": 120, "direct": 40, "pretrain": 40}
    by_template = Counter(e.template_id for e in examples if e.task != "pretrain")
    assert set(by_template) == set(listed)  # both sequential ids drawn, nothing else
    for example in examples:
        if example.task != "pretrain":
            check_example(example, catalog, prompts)
    # Without the list the same families draw every seen template.
    everything = builder.training_examples(
        TaskMixture({"sequential": 3.0, "direct": 1.0}, examples_per_epoch=400), seed=0, epoch=0
    )
    assert {e.template_id for e in everything} == {
        t.id for f in ("sequential", "direct") for t in prompts.templates(f, seen=True)
    }


@pytest.mark.parametrize(
    ("templates", "message"),
    [
        (("sequential-1", "sequential-99"), "unknown template id 'sequential-99'"),
        (("sequential-8",), "'sequential-8' is an unseen template"),
        (("sequential-1",), "family 'direct' has weight 1.0 but none of its templates"),
    ],
)
def test_listed_templates_are_checked(review_world, templates, message):
    _, _, builder = review_world
    mixture = TaskMixture({"sequential": 1.0, "direct": 1.0}, 10, templates=templates)
    with pytest.raises(ValueError, match=message):
        builder.training_examples(mixture, seed=0, epoch=0)
    with pytest.raises(ValueError, match="non-empty"):
        TaskMixture({"sequential": 1.0}, 10, templates=())


def test_training_examples_are_a_function_of_seed_and_epoch(review_world):
    _, _, builder = review_world
    mixture = TaskMixture(examples_per_epoch=60)
    first = builder.training_examples(mixture, seed=3, epoch=1)
    assert builder.training_examples(mixture, seed=3, epoch=1) == first
    assert builder.training_examples(mixture, seed=3, epoch=2) != first
    assert builder.training_examples(mixture, seed=4, epoch=1) != first


def test_target_sampling_users_weighs_users_equally(prompts):
    # One heavy user (90 events) and nine light ones (8 events): drawn by events the heavy
    # user's targets dominate; drawn by users each user gets about a tenth.
    rows = [("heavy", f"i{j}", j * DAY, 4.0, "", "") for j in range(90)]
    rows += [(f"light{u}", f"i{7 * u + j}", j * DAY, 3.0, "", "") for u in range(9) for j in range(8)]  # fmt: skip
    splits = build_splits(make_tables(rows, has_reviews=False), k=1, seed=0, num_negatives=0)
    builder = TaskBuilder(splits, EntityCatalog.from_tables(splits.tables), prompts)
    shares = {}
    for sampling in ("events", "users"):
        mixture = TaskMixture(
            weights={"sequential": 1.0},
            examples_per_epoch=3000,
            templates=("sequential-1",),
            target_sampling=sampling,
        )
        examples = builder.training_examples(mixture, seed=0, epoch=0)
        users = [e.user for e in examples]
        shares[sampling] = {u: users.count(u) / len(users) for u in set(users)}
    # Train targets with an earlier event: heavy 88 - 1, light 6 - 1 each (two events of
    # every user go to valid and test).
    assert shares["events"]["heavy"] == pytest.approx(87 / (87 + 9 * 5), abs=0.03)
    assert len(shares["users"]) == 10
    assert all(share == pytest.approx(0.1, abs=0.02) for share in shares["users"].values())
    with pytest.raises(ValueError, match="target_sampling 'user' not in"):
        TaskMixture(target_sampling="user")


def test_target_sampling_users_recent_keeps_the_later_of_two_events(prompts):
    # Users weigh equally as with "users"; within a user the i-th of n usable targets
    # (chronological, 0-based) is drawn with probability (2i + 1) / n^2.
    rows = [("heavy", f"i{j}", j * DAY, 4.0, "", "") for j in range(40)]
    rows += [(f"light{u}", f"i{7 * u + j}", j * DAY, 3.0, "", "") for u in range(4) for j in range(7)]  # fmt: skip
    splits = build_splits(make_tables(rows, has_reviews=False), k=1, seed=0, num_negatives=0)
    builder = TaskBuilder(splits, EntityCatalog.from_tables(splits.tables), prompts)
    mixture = TaskMixture(
        weights={"sequential": 1.0},
        examples_per_epoch=10000,
        templates=("sequential-1",),
        target_sampling="users_recent",
    )
    examples = builder.training_examples(mixture, seed=0, epoch=0)
    users = [e.user for e in examples]
    assert all(users.count(u) / len(users) == pytest.approx(0.2, abs=0.02) for u in set(users))
    # Usable targets: positions 1 .. n (position 0 has no earlier event; the last two
    # events are valid and test): n = 37 for the heavy user, 4 for each light one.
    for name, n in (("heavy", 37), ("light", 4)):
        chosen = [e for e in examples if e.user.startswith(name)]
        index = [[ev.item for ev in splits.sequences[e.user]].index(e.target) - 1 for e in chosen]
        assert min(index) >= 0 and max(index) < n
        expected_mean = sum(i * (2 * i + 1) for i in range(n)) / n**2
        # Uniform within the user would give (n - 1) / 2 (18 for the heavy user, not 24.3).
        assert np.mean(index) == pytest.approx(expected_mean, abs=0.05 * n)
        if name == "light":
            shares = np.bincount(index, minlength=n) / len(index)
            assert shares == pytest.approx([(2 * i + 1) / n**2 for i in range(n)], abs=0.02)


def test_pretraining_documents(review_world):
    splits, _, builder = review_world
    for split in ("train", "valid", "test"):
        documents = builder.pretraining_documents(split, seed=0)
        assert len(documents) == len(splits.users)
        for document in documents:
            assert (
                document.task == "pretrain"
                and document.target is None
                and document.answer_mask is None
            )
            assert not any(s.answer for s in document.segments)
            text = "".join(s.text for s in document.segments)
            assert text.endswith(".") and text.count(". ") >= 1 or len(document.history) <= 5
            assert [
                s.entity for s in document.segments if s.entity and not s.entity.startswith("attr:")
            ] == list(document.history)
            sequence = [e.item for e in splits.sequences[document.user]]
            limit = len(sequence) - (2 if split in ("train", "valid") else 1)
            assert all(sequence.index(key) < limit for key in document.history)
    documents = builder.pretraining_documents("train", seed=0)
    assert documents == builder.pretraining_documents("train", seed=0)
    user0 = builder.pretraining_documents("test")[0]
    text = "".join(s.text for s in user0.segments)
    assert text.startswith(
        "The user is 25-34 years old and works as a programmer. The user interacted with Title "
    )
    assert "After that, the user interacted with" not in text  # budget 5: one sentence


def test_render_example_is_the_builders_renderer(review_world, prompts):
    splits, catalog, builder = review_world
    built = next(
        e
        for e in builder.examples("test", ["sequential"])
        if e.template_id == "sequential-1" and e.user == "u0"
    )
    features = {"age": "25-34", "occupation": "programmer"}
    again = render_example(
        prompts.get("sequential-1"), catalog, user="u0", user_features=features, feature_templates=FEATURES,
        history=built.history, target=built.target, timestamp=built.timestamp,
    )  # fmt: skip
    assert again == built

    unknown = render_example(
        prompts.get("direct-3"), catalog, user="new", user_features={}, feature_templates=FEATURES,
        history=built.history, candidates=built.history,
    )  # fmt: skip
    (answer,) = [s for s in unknown.segments if s.answer]
    assert (
        answer.text.strip() == ANSWER_PLACEHOLDER
        and unknown.target is None
        and unknown.answer_mask == "mask"
    )
    with pytest.raises(UnknownEntityError, match="Title nope"):
        render_example(
            prompts.get("sequential-1"), catalog, user="x", user_features={}, feature_templates={},
            history=["Title nope"],
        )  # fmt: skip
    with pytest.raises(UnknownEntityError, match="attr:age=99"):
        render_example(
            prompts.get("sequential-1"), catalog, user="x", user_features={"age": "99"}, feature_templates=FEATURES,
            history=[],
        )  # fmt: skip
    with pytest.raises(
        ValueError, match=r"template 'rating-5'.*answer words \('like', 'dislike'\)"
    ):
        render_example(
            prompts.get("rating-5"), catalog, user="x", user_features={}, feature_templates={},
            history=[], item=built.target, target="yes",
        )  # fmt: skip
    with pytest.raises(ValueError, match=r"template 'rating-1'.*\{item\} needs an item"):
        render_example(
            prompts.get("rating-1"),
            catalog,
            user="x",
            user_features={},
            feature_templates={},
            history=[],
        )


def test_catalog_must_cover_the_splits(review_world, prompts):
    splits, _, _ = review_world
    small = EntityCatalog("toy", {"Title i0": "i0"}, {})
    with pytest.raises(ValueError, match="lacks .* items of the splits"):
        TaskBuilder(splits, small, prompts)


def test_one_event_users_give_rating_explanation_review_and_direct_examples(prompts, caplog):
    # Clothing-reviews shape: every user has exactly one reviewed, rated event; age known.
    n_users = 200
    rows = [
        (f"r{u}", f"i{u % 120}", -1, float(1 + u % 5), REVIEWS[u % 3], f"Summary {u}")
        for u in range(n_users)
    ]
    users = {"user": [f"r{u}" for u in range(n_users)], "age": ["25-34"] * n_users}
    splits = build_splits(make_tables(rows, has_reviews=True, users=users), k=1, num_negatives=9)
    catalog = EntityCatalog.from_tables(splits.tables)
    builder = TaskBuilder(splits, catalog, prompts, history_budget=5)
    by_split = {s: set(splits.split_users(s)) for s in ("train", "valid", "test")}
    assert set(splits.short_users) == set(users["user"])
    assert sum(map(len, by_split.values())) == n_users  # each user in exactly one split
    assert by_split["valid"] and by_split["test"] and len(by_split["train"]) > n_users / 2
    row_of = {row[0]: row for row in rows}
    n_sequential = len(prompts.templates("sequential"))
    with_profile = Counter()
    for split in ("valid", "test"):
        with caplog.at_level(logging.INFO, logger="recsysllm.data.tasks"):
            caplog.clear()
            examples = builder.examples(split, prompts="all", seed=0)
        assert {e.user for e in examples} == by_split[split]
        # Sequential needs a history: skipped for every user, counted in the call's one line.
        assert {e.task for e in examples} == {"rating", "explanation", "review", "direct"}
        lines = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
        assert len(lines) == 1
        assert f"sequential/no earlier event: {len(by_split[split]) * n_sequential}" in lines[0]
        for example in examples:
            check_example(example, catalog, prompts)
            user, item, _, rating, review, summary = row_of[example.user]
            assert example.history == ()
            template = prompts.get(example.template_id)
            if "user_profile" in template.placeholders:  # the profile is still there
                attributes = [
                    s.entity for s in example.segments if s.entity and "attr:" in s.entity
                ]
                assert attributes == ["attr:age=25-34"]
                with_profile[example.task] += 1
            if example.task == "explanation":
                assert example.target == review.split(". ")[0].rstrip(".") + "." or (
                    example.target == review
                )
            elif example.task == "review" and template.answer_type == "text":
                assert example.target == summary
            elif template.answer_type == "rating":
                assert float(example.target) == rating
            elif example.task == "direct" and template.answer_type == "item":
                assert example.target == f"Title {item}" and len(example.candidates) == 10
        assert set(with_profile) == {"rating", "explanation", "direct"}  # review: no profile
        # Pretraining documents need an earlier event: none for one-event users.
        assert builder.pretraining_documents(split) == []
    train = builder.examples("train", prompts="all", seed=0)
    assert {e.user for e in train} == by_split["train"]
    documents = builder.pretraining_documents("train", seed=0)
    assert {d.user: d.history for d in documents} == {
        u: (f"Title {row_of[u][1]}",) for u in by_split["train"]
    }
    epoch = builder.training_examples(TaskMixture(examples_per_epoch=100), seed=0, epoch=0)
    assert len(epoch) == 100 and {e.user for e in epoch} <= by_split["train"]
    assert "sequential" not in {e.task for e in epoch}
    # Default epoch size: one per (user with train events, family); pretrain included.
    default = builder.training_examples(TaskMixture({"rating": 1.0, "pretrain": 1.0}), 0, 0)
    assert Counter(e.task for e in default) == {
        "rating": len(by_split["train"]),
        "pretrain": len(by_split["train"]),
    }
