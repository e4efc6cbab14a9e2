"""Prompt YAMLs: coverage of every family and sub-variant, seen/unseen split, load-time validation."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recsysllm.prompts import DEFAULT_PROMPTS_DIR, PromptError, load_prompts
from recsysllm.schema import TASK_FAMILIES

REPO_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"


def write(directory: Path, family: str, body: str) -> Path:
    path = directory / f"{family}.yaml"
    path.write_text(f"family: {family}\ntemplates:\n{body}")
    return path


def template(
    id_: str, text: str, answer_type: str = "item", answer_mask: str = "mask", seen: str = "true"
) -> str:
    return (
        f"  - id: {id_}\n    seen: {seen}\n    answer_type: {answer_type}\n"
        f'    answer_mask: {answer_mask}\n    text: "{text}"\n'
    )


def test_default_directory_is_the_repository_prompts_folder():
    assert DEFAULT_PROMPTS_DIR == REPO_PROMPTS
    assert load_prompts().hash == load_prompts(REPO_PROMPTS).hash


def test_every_family_has_enough_seen_and_unseen_templates():
    prompts = load_prompts()
    assert prompts.families == TASK_FAMILIES
    minimum = {"rating": 8, "sequential": 8, "explanation": 8, "direct": 8, "review": 4}
    for family in TASK_FAMILIES:
        templates = prompts.templates(family)
        assert len(templates) >= minimum[family], family
        unseen = prompts.templates(family, seen=False)
        assert unseen and all(not t.seen for t in unseen), family
        assert prompts.templates(family, seen=True), family
        assert set(prompts.select(family, "all")) == set(templates)
        assert set(prompts.select(family, "unseen")) == set(unseen)


def test_every_sub_variant_is_covered():
    prompts = load_prompts()

    def kinds(family):
        return {
            (t.answer_type, "candidates" in t.placeholders, t.answer_words)
            for t in prompts.templates(family)
        }

    assert {
        ("rating", False, None),
        ("yesno", False, ("yes", "no")),
        ("yesno", False, ("like", "dislike")),
    } <= kinds("rating")
    assert {("item", False, None), ("item", True, None), ("yesno", False, ("yes", "no"))} <= kinds(
        "sequential"
    )
    assert {("text", False, None)} == kinds("explanation")
    assert any("hint" in t.placeholders for t in prompts.templates("explanation"))
    assert any("hint" not in t.placeholders for t in prompts.templates("explanation"))
    assert {("text", False, None), ("rating", False, None)} == kinds("review")
    assert {("yesno", False, ("yes", "no")), ("item", True, None)} == kinds("direct")
    for family in TASK_FAMILIES:
        for t in prompts.templates(family):
            assert t.answer_mask == ("gmask" if t.answer_type == "text" else "mask"), t.id
            if t.answer_mask == "gmask":
                assert t.parts[-1][1] == "answer" and not t.parts[-1][0].endswith(" " * 2)


def test_unknown_placeholder_names_file_template_and_placeholder(tmp_path):
    path = write(tmp_path, "sequential", template("seq-a", "{history} then {user_name}? {answer}"))
    with pytest.raises(PromptError) as error:
        load_prompts(tmp_path)
    message = str(error.value)
    assert str(path) in message and "line 3" in message
    assert "template 'seq-a'" in message and "{user_name}" in message


def test_missing_answer_and_duplicate_ids_are_errors(tmp_path):
    write(tmp_path, "sequential", template("seq-a", "{history} next?"))
    with pytest.raises(PromptError, match=r"template 'seq-a'.*\{answer\} exactly once"):
        load_prompts(tmp_path)
    write(
        tmp_path,
        "sequential",
        template("seq-a", "{history}: {answer}") + template("seq-a", "{history}? {answer}"),
    )
    with pytest.raises(PromptError, match=r"template 'seq-a': duplicate template id"):
        load_prompts(tmp_path)
    write(tmp_path, "sequential", template("same", "{history}: {answer}"))
    write(tmp_path, "direct", template("same", "{candidates}: {answer}"))
    with pytest.raises(
        PromptError,
        match=r"sequential\.yaml: template 'same': duplicate template id .also in .*direct\.yaml",
    ):
        load_prompts(tmp_path)


@pytest.mark.parametrize(
    ("family", "body", "message"),
    [
        (
            "sequential",
            template("t", "{item} {history} {answer}"),
            r"\{item\} is not allowed with answer_type 'item'",
        ),
        (
            "review",
            template("t", "{history} {review} {answer}", "text", "gmask"),
            r"\{history\} cannot be filled in the review family",
        ),
        (
            "explanation",
            template("t", "{item}: {answer} thanks", "text", "gmask"),
            "must end with {answer}",
        ),
        (
            "rating",
            template("t", "{item}: {answer}", "rating", "gmask"),
            "answer_mask' must be 'mask'",
        ),
        (
            "rating",
            template("t", "{item}: {answer}", "item"),
            "answer_type' 'item' is not one of rating's",
        ),
        ("direct", template("t", "which? {answer}"), r"missing placeholder \{candidates\}"),
        (
            "sequential",
            template("t", "{history} {history}: {answer}"),
            r"\{history\} appears more than once",
        ),
        ("sequential", template("t", "{history!r}: {answer}"), "format spec or conversion"),
        (
            "rating",
            template("t", "{item}: {answer}", "yesno", seen="maybe"),
            "'seen' must be true or false",
        ),
        (
            "rating",
            template("t", "{item}: {answer}", "yesno") + "    colour: red\n",
            "unknown field 'colour'",
        ),
    ],
)
def test_invalid_templates_are_rejected_with_the_reason(tmp_path, family, body, message):
    path = write(tmp_path, family, body)
    with pytest.raises(PromptError, match=message) as error:
        load_prompts(tmp_path)
    assert str(path) in str(error.value) and "template 't'" in str(error.value)


def test_file_level_errors(tmp_path):
    (tmp_path / "ratings.yaml").write_text("family: rating\ntemplates: []\n")
    with pytest.raises(PromptError, match=r"ratings\.yaml: file name must be <family>\.yaml"):
        load_prompts(tmp_path)
    (tmp_path / "ratings.yaml").unlink()
    (tmp_path / "rating.yaml").write_text("family: direct\ntemplates: []\n")
    with pytest.raises(PromptError, match="field 'family' is 'direct'"):
        load_prompts(tmp_path)
    (tmp_path / "rating.yaml").write_text("family: rating\ntemplates: [\n")
    with pytest.raises(PromptError, match=r"rating\.yaml: line \d+: malformed YAML"):
        load_prompts(tmp_path)


def test_save_roundtrip_and_hash_sensitivity(tmp_path):
    prompts = load_prompts()
    prompts.save(tmp_path / "saved")
    assert load_prompts(tmp_path / "saved").hash == prompts.hash

    edited = tmp_path / "edited"
    shutil.copytree(REPO_PROMPTS, edited)
    path = edited / "rating.yaml"
    path.write_text(
        path.read_text().replace("How many stars, from 1 to 5,", "How many stars (1-5)", 1)
    )
    changed = load_prompts(edited)
    assert changed.hash != prompts.hash
    assert len(changed) == len(prompts)
