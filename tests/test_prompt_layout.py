"""The prompt layout (recsysllm/prompt_layout.py): Part A never depends on the answer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from recsysllm.collator import BlankInfillingCollator
from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.splits import build_splits
from recsysllm.data.tasks import TaskBuilder
from recsysllm.prompt_layout import (
    AnswerBudget,
    PromptTooLongError,
    SpecialTokenIds,
    build_prompt,
    check_prompts_fit,
)
from recsysllm.prompts import load_prompts
from recsysllm.schema import Example, Segment

WORDS = ["red", "blue", "night", "river", "story", "king", "of the", "return", "city", "dream"]


def _write_data(directory, num_users=12, per_user=30):
    """Long histories and titles of 1 to 7 words, so answers differ in token count."""
    directory.mkdir(parents=True, exist_ok=True)
    rows = ["user,item,ts,stars"]
    for user in range(num_users):
        for step in range(per_user):
            item = user * per_user + step
            rows.append(f"u{user:02d},{item},{1_000_000 + 86_400 * step},{1 + (user + step) % 5}")
    (directory / "ratings.csv").write_text("\n".join(rows) + "\n")
    rng = np.random.default_rng(0)
    titles = ["item,name"]
    for i in range(num_users * per_user):
        words = " ".join(rng.choice(WORDS, size=int(rng.integers(1, 8))))
        titles.append(f"{i},{words.title()} {i} ({1950 + i % 50})")
    (directory / "items.csv").write_text("\n".join(titles) + "\n")
    (directory / "mapping.yaml").write_text(
        "name: toy\n"
        "interactions: {path: ratings.csv, user: user, item: item, timestamp: ts, rating: stars}\n"
        "items: {path: items.csv, item: item, title: name}\n"
    )
    return directory / "mapping.yaml"


@pytest.fixture(scope="module")
def task_data(tmp_path_factory):
    from recsysllm.data.sources import load_dataset_by_name

    mapping = _write_data(tmp_path_factory.mktemp("layout") / "data")
    tables = load_dataset_by_name("generic", str(mapping))
    splits = build_splits(tables, k=1, seed=0, num_negatives=9)
    catalog = EntityCatalog.from_tables(splits.tables)
    prompts = load_prompts()
    tasks = TaskBuilder(splits, catalog, prompts, history_budget=20)
    examples = tasks.examples("test", prompts="all", seed=3)
    examples += tasks.examples("train", prompts="all", seed=3)[::7]
    return catalog, prompts, examples


def _with_answer(example: Example, text: str, entity: str | None) -> Example:
    """The example with its answer segment replaced (everything else untouched)."""
    index = next(i for i, s in enumerate(example.segments) if s.answer)
    old = example.segments[index]
    if entity is None and old.entity is None:
        # Keep the leading-space convention of plain answers (" yes", " 4").
        text = old.text[: len(old.text) - len(old.text.lstrip())] + text
    answer = Segment(text, entity=entity, answer=True)
    segments = (*example.segments[:index], answer, *example.segments[index + 1 :])
    return dataclasses.replace(example, segments=segments, target=text.strip())


def _other_answers(example: Example, catalog: EntityCatalog, rng) -> list[Example]:
    if example.answer_type == "item":
        keys = rng.choice(catalog.item_keys, size=6, replace=False)
        return [_with_answer(example, key, key) for key in keys]
    if example.answer_type == "rating":
        return [_with_answer(example, value, None) for value in ("1", "5", "3.5")]
    if example.answer_type == "yesno":
        return [_with_answer(example, value, None) for value in ("yes", "no")]
    long_text = " ".join(rng.choice(WORDS, size=80))
    return [_with_answer(example, text, None) for text in ("ok", long_text)]


def test_part_a_does_not_depend_on_the_answer(task_data, tiny_tokenizer):
    """Property: for random examples of every family, replacing the answer by any other
    catalog item (or answer value) leaves the rendered Part A byte-identical, in
    training (the collator's Part A) and in inference (build_prompt)."""
    catalog, prompts, examples = task_data
    rng = np.random.default_rng(5)
    budget = AnswerBudget.for_catalog(catalog, tiny_tokenizer, text=24)
    families = set()
    truncated = 0
    for index in rng.choice(len(examples), size=120, replace=False):
        example = examples[int(index)]
        max_length = int(rng.integers(60, 400))
        collate = BlankInfillingCollator(
            tiny_tokenizer, max_length=max_length, packing=False, answer_budget=budget
        )
        variants = [example, *_other_answers(example, catalog, rng)]
        part_as, errors = set(), set()
        for variant in variants:
            tokenized = tiny_tokenizer.tokenize_example(variant)
            try:
                encoded = collate.encode(tokenized)
            except PromptTooLongError as error:
                errors.add(str(error).split(":", 2)[-1])
                continue
            prompt = collate.build_prompt(tokenized)
            assert prompt.input_ids == encoded.part_a_ids  # inference = training Part A
            assert prompt.intra == encoded.part_a_intra
            assert encoded.length <= max_length
            part_as.add((tuple(prompt.input_ids), tuple(prompt.intra), prompt.mask_position))
            truncated += prompt.truncated
        # Every answer gives the same Part A, or every answer is refused alike.
        assert len(part_as) + len(errors) == 1, example.describe()
        families.add(example.task)
    assert families == {"rating", "sequential", "direct"}
    assert truncated > 50  # the property was exercised under truncation


def test_history_goes_first_and_candidates_stay_whole(task_data, tiny_tokenizer):
    catalog, prompts, examples = task_data
    special = SpecialTokenIds.from_tokenizer(tiny_tokenizer)
    budget = AnswerBudget.for_catalog(catalog, tiny_tokenizer)
    direct = [e for e in examples if e.candidates and len(e.history) >= 10][:10]
    assert direct
    for example in direct:
        tokenized = tiny_tokenizer.tokenize_example(example)
        full = build_prompt(tokenized, special, budget, max_length=4096)
        assert not full.truncated
        text = tiny_tokenizer.decode(full.input_ids)
        # A length that must drop some (not all) history: the oldest item goes, the newest stays.
        oldest_ids = tiny_tokenizer.encode_entity(example.history[0])
        cut = build_prompt(tokenized, special, budget, max_length=len(full.input_ids) + budget.item)
        assert cut.truncated
        assert len(cut.input_ids) + 1 + budget.item <= len(full.input_ids) + budget.item
        shown = tiny_tokenizer.decode(cut.input_ids)
        for candidate in example.candidates:
            assert candidate in shown  # every candidate is still listed
        assert example.history[-1] in shown
        assert (
            not _contains(cut.input_ids, oldest_ids)
            or example.history.count(example.history[0]) > 1
        )
        assert example.history[0] in text


def _contains(ids, sub) -> bool:
    sub = list(sub)
    return any(list(ids[i : i + len(sub)]) == sub for i in range(len(ids) - len(sub) + 1))


def test_candidates_that_cannot_fit_are_refused_naming_the_template(task_data, tiny_tokenizer):
    catalog, prompts, examples = task_data
    special = SpecialTokenIds.from_tokenizer(tiny_tokenizer)
    budget = AnswerBudget.for_catalog(catalog, tiny_tokenizer)
    direct = [tiny_tokenizer.tokenize_example(e) for e in examples if e.candidates]
    with pytest.raises(PromptTooLongError) as error:
        check_prompts_fit(direct, special, budget, max_length=40, where="eval")
    message = str(error.value)
    assert "direct-3" in message and "max_length is 40" in message and "needs" in message
    counts = check_prompts_fit(direct, special, budget, max_length=4096)
    assert set(counts.values()) == {0}


def test_only_training_imports_the_collator():
    """Inference, generation, evaluation and the API lay prompts out with prompt_layout;
    the training collator stays a training module."""
    import ast
    from pathlib import Path

    import recsysllm

    package = Path(recsysllm.__file__).parent
    importers = set()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if "recsysllm.collator" in names:
                importers.add(path.relative_to(package).as_posix())
    assert importers == {"training.py"}
