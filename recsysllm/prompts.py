"""Prompt templates: one YAML file per task family in ``prompts/``.

File format (``prompts/<family>.yaml``)::

    family: rating
    templates:
      - id: rating-star-1
        seen: true              # false: held out of training (unseen-template evaluation)
        answer_type: rating     # item | rating | yesno | text
        answer_mask: mask       # mask (entity / short answer in place) | gmask (free text at the end)
        answer_words: [yes, no] # yesno only: positive word first (default yes/no)
        text: "{user_profile} How many stars would the user give {item}? {answer}"

Placeholders: {user_profile}, {history}, {item}, {candidates}, {hint}, {review} and
exactly one {answer}. Which ones a template may use, and must use, depends on its
family and answer type (tables below); everything is checked at load time and an
error names the file, the template id and the offending placeholder or field.

What a template asks is decided by its family and answer type:

==============  ===========  ==========================================================
family          answer_type  task
==============  ===========  ==========================================================
rating          rating       user (+ history), item -> 1-5 stars
rating          yesno        user, item -> will the user rate it 4 or more (yes/no, like/dislike)
sequential      item         history -> next item; with {candidates}: pick from candidates
sequential      yesno        history + item -> is it the next one
explanation     text         user, item, optional {hint} word -> review sentence
review          text         review text -> summary
review          rating       review text -> rating
direct          yesno        user -> will the user interact with {item}
direct          item         user + 100 {candidates} -> item
==============  ===========  ==========================================================
"""

from __future__ import annotations

import hashlib
import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from recsysllm.files import atomic_write, load_yaml
from recsysllm.schema import ANSWER_MASKS, ANSWER_TYPES, TASK_FAMILIES

DEFAULT_PROMPTS_DIR = Path(__file__).resolve().parent.parent / "prompts"
PROMPT_SETS = ("seen", "unseen", "all")

PLACEHOLDERS = frozenset(
    {"user_profile", "history", "item", "candidates", "hint", "review", "answer"}
)
# Placeholders a family can fill (review prompts see only the review and the item).
FAMILY_PLACEHOLDERS = {
    "rating": frozenset({"user_profile", "history", "item", "answer"}),
    "sequential": frozenset({"user_profile", "history", "item", "candidates", "answer"}),
    "explanation": frozenset({"user_profile", "history", "item", "hint", "answer"}),
    "review": frozenset({"item", "review", "answer"}),
    "direct": frozenset({"user_profile", "history", "item", "candidates", "answer"}),
}
# (family, answer_type) -> placeholders the template must contain besides {answer}.
REQUIRED_PLACEHOLDERS = {
    ("rating", "rating"): frozenset({"item"}),
    ("rating", "yesno"): frozenset({"item"}),
    ("sequential", "item"): frozenset({"history"}),
    ("sequential", "yesno"): frozenset({"history", "item"}),
    ("explanation", "text"): frozenset({"item"}),
    ("review", "text"): frozenset({"review"}),
    ("review", "rating"): frozenset({"review"}),
    ("direct", "yesno"): frozenset({"item"}),
    ("direct", "item"): frozenset({"candidates"}),
}
# An item answer must not be named in its own prompt; a yes/no question asks about one item.
FORBIDDEN_PLACEHOLDERS = {"item": frozenset({"item"}), "yesno": frozenset({"candidates"})}
ANSWER_MASK_OF_TYPE = {"item": "mask", "rating": "mask", "yesno": "mask", "text": "gmask"}
TEMPLATE_FIELDS = frozenset({"id", "seen", "answer_type", "answer_mask", "answer_words", "text"})


class PromptError(ValueError):
    """A prompt file or template that breaks the format."""


@dataclass(frozen=True)
class PromptTemplate:
    """One template of a task family.

    Attributes:
        family: task family (one of schema.TASK_FAMILIES).
        id: unique id across the prompt set.
        seen: True if used in training; False: held out for unseen-template evaluation.
        text: template text with {placeholders}.
        answer_type: item | rating | yesno | text.
        answer_mask: mask | gmask.
        answer_words: (positive, negative) answer words of a yesno template, else None.
        parts: the parsed text: (literal text, placeholder name or None) pairs.
        source: file the template was read from ("" when built in code).
    """

    family: str
    id: str
    seen: bool
    text: str
    answer_type: str
    answer_mask: str
    answer_words: tuple[str, str] | None = None
    parts: tuple[tuple[str, str | None], ...] = ()
    source: str = ""

    @property
    def placeholders(self) -> frozenset[str]:
        return frozenset(name for _, name in self.parts if name is not None)

    def describe(self) -> str:
        return f"{self.source or '<code>'}: template {self.id!r}"

    def to_dict(self) -> dict:
        """The template's YAML fields."""
        data = {
            "id": self.id,
            "seen": self.seen,
            "answer_type": self.answer_type,
            "answer_mask": self.answer_mask,
        }
        if self.answer_words is not None:
            data["answer_words"] = list(self.answer_words)
        data["text"] = self.text
        return data


def parse_template(
    family: str,
    fields: dict,
    *,
    source: str = "",
    line: int | None = None,
) -> PromptTemplate:
    """Validate one template's fields and parse its text.

    Raises:
        PromptError: naming the source file (and line), the template id and the
            offending placeholder or field.
    """
    where = f"{source or '<code>'}{f': line {line}' if line else ''}"
    if not isinstance(fields, dict):
        raise PromptError(f"{where}: a template must be a mapping, got {type(fields).__name__}")
    template_id = fields.get("id")
    if not isinstance(template_id, str) or not template_id:
        raise PromptError(f"{where}: template without a string field 'id'")
    where = f"{where}: template {template_id!r}"
    unknown = sorted(set(fields) - TEMPLATE_FIELDS)
    if unknown:
        raise PromptError(
            f"{where}: unknown field {unknown[0]!r} (fields: {sorted(TEMPLATE_FIELDS)})"
        )
    for name in ("seen", "answer_type", "answer_mask", "text"):
        if name not in fields:
            raise PromptError(f"{where}: missing field {name!r}")
    seen, answer_type, answer_mask, text = (
        fields[n] for n in ("seen", "answer_type", "answer_mask", "text")
    )
    if not isinstance(seen, bool):
        raise PromptError(f"{where}: field 'seen' must be true or false, got {seen!r}")
    if not isinstance(text, str) or not text.strip():
        raise PromptError(f"{where}: field 'text' must be a non-empty string")
    if answer_type not in ANSWER_TYPES:
        raise PromptError(f"{where}: field 'answer_type' {answer_type!r} not in {ANSWER_TYPES}")
    if answer_mask not in ANSWER_MASKS:
        raise PromptError(f"{where}: field 'answer_mask' {answer_mask!r} not in {ANSWER_MASKS}")
    if (family, answer_type) not in REQUIRED_PLACEHOLDERS:
        allowed = [kind for fam, kind in REQUIRED_PLACEHOLDERS if fam == family]
        raise PromptError(
            f"{where}: field 'answer_type' {answer_type!r} is not one of {family}'s {allowed}"
        )
    if answer_mask != ANSWER_MASK_OF_TYPE[answer_type]:
        raise PromptError(
            f"{where}: field 'answer_mask' must be {ANSWER_MASK_OF_TYPE[answer_type]!r} for answer_type {answer_type!r}"
        )

    answer_words = fields.get("answer_words")
    if answer_type == "yesno":
        answer_words = tuple(answer_words or ("yes", "no"))
        if (
            len(answer_words) != 2
            or len(set(answer_words)) != 2
            or not all(isinstance(w, str) and w.strip() for w in answer_words)
        ):
            raise PromptError(
                f"{where}: field 'answer_words' must be two distinct words, got {list(answer_words)}"
            )
    elif answer_words is not None:
        raise PromptError(f"{where}: field 'answer_words' is only for answer_type 'yesno'")

    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as error:
        raise PromptError(f"{where}: field 'text' is not a valid template ({error})") from None
    parts = []
    for literal, name, spec, conversion in parsed:
        if name is not None:
            if name not in PLACEHOLDERS:
                raise PromptError(
                    f"{where}: unknown placeholder {{{name}}} (known: {sorted(PLACEHOLDERS)})"
                )
            if name not in FAMILY_PLACEHOLDERS[family]:
                raise PromptError(
                    f"{where}: placeholder {{{name}}} cannot be filled in the {family} family"
                )
            if name in FORBIDDEN_PLACEHOLDERS.get(answer_type, ()):
                raise PromptError(
                    f"{where}: placeholder {{{name}}} is not allowed with answer_type {answer_type!r}"
                )
            if spec or conversion:
                raise PromptError(
                    f"{where}: placeholder {{{name}}} must not carry a format spec or conversion"
                )
        parts.append((literal, name))
    names = [name for _, name in parts if name is not None]
    if names.count("answer") != 1:
        raise PromptError(
            f"{where}: field 'text' must contain {{answer}} exactly once (found {names.count('answer')})"
        )
    missing = sorted(REQUIRED_PLACEHOLDERS[(family, answer_type)] - set(names))
    if missing:
        raise PromptError(
            f"{where}: missing placeholder {{{missing[0]}}} needed by a {family} {answer_type} template"
        )
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise PromptError(f"{where}: placeholder {{{repeated[0]}}} appears more than once")
    if answer_mask == "gmask" and not text.rstrip().endswith("{answer}"):
        raise PromptError(
            f"{where}: a gmask template must end with {{answer}} (free text is generated at the end)"
        )
    return PromptTemplate(
        family=family,
        id=template_id,
        seen=seen,
        text=text,
        answer_type=answer_type,
        answer_mask=answer_mask,
        answer_words=answer_words,
        parts=tuple(parts),
        source=source,
    )


class PromptSet:
    """Every template of every family, with the seen/unseen split.

    Example:
        >>> prompts = load_prompts()
        >>> all(not t.seen for t in prompts.templates("rating", seen=False))
        True
    """

    def __init__(self, templates: Sequence[PromptTemplate]) -> None:
        by_id: dict[str, PromptTemplate] = {}
        for template in templates:
            if template.id in by_id:
                raise PromptError(
                    f"{template.describe()}: duplicate template id (also in {by_id[template.id].source or '<code>'})"
                )
            by_id[template.id] = template
        self._by_id = by_id
        self._templates = tuple(templates)
        content = [(t.family, t.to_dict()) for t in sorted(self._templates, key=lambda t: t.id)]
        blob = json.dumps(content, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        self.hash = hashlib.sha256(blob.encode("utf-8")).hexdigest()

    @property
    def families(self) -> tuple[str, ...]:
        """Families with at least one template, in TASK_FAMILIES order."""
        present = {t.family for t in self._templates}
        return tuple(family for family in TASK_FAMILIES if family in present)

    def templates(self, family: str, seen: bool | None = None) -> tuple[PromptTemplate, ...]:
        """Templates of a family (file order); ``seen`` True/False keeps only seen/unseen ones."""
        if family not in TASK_FAMILIES:
            raise ValueError(f"unknown task family {family!r}; known: {TASK_FAMILIES}")
        return tuple(
            t for t in self._templates if t.family == family and (seen is None or t.seen == seen)
        )

    def select(self, family: str, prompts: str) -> tuple[PromptTemplate, ...]:
        """Templates of a family for a prompt set name: "seen", "unseen" or "all"."""
        if prompts not in PROMPT_SETS:
            raise ValueError(f"prompts must be one of {PROMPT_SETS}, got {prompts!r}")
        return self.templates(family, seen=None if prompts == "all" else prompts == "seen")

    def get(self, template_id: str) -> PromptTemplate:
        try:
            return self._by_id[template_id]
        except KeyError:
            raise KeyError(f"no prompt template with id {template_id!r}") from None

    def __len__(self) -> int:
        return len(self._templates)

    def save(self, directory: str | os.PathLike) -> None:
        """Write one ``<family>.yaml`` per family (atomically), e.g. into a checkpoint."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for family in self.families:
            payload = {"family": family, "templates": [t.to_dict() for t in self.templates(family)]}
            text = yaml.safe_dump(payload, sort_keys=False, allow_unicode=True, width=1000)
            atomic_write(directory / f"{family}.yaml", text)


def _template_lines(text: str) -> list[int | None]:
    """1-based line of each item of the file's ``templates`` list (for error messages)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    if not isinstance(root, yaml.MappingNode):
        return []
    for key, value in root.value:
        if key.value == "templates" and isinstance(value, yaml.SequenceNode):
            return [node.start_mark.line + 1 for node in value.value]
    return []


def load_prompt_file(path: str | os.PathLike) -> list[PromptTemplate]:
    """Templates of one ``<family>.yaml`` file (validated)."""
    path = Path(path)
    family = path.stem
    if family not in TASK_FAMILIES:
        raise PromptError(f"{path}: file name must be <family>.yaml with family in {TASK_FAMILIES}")
    text = path.read_text(encoding="utf-8")
    try:
        payload = load_yaml(text, str(path))  # also refuses a repeated key
    except ValueError as error:
        raise PromptError(str(error)) from None
    if not isinstance(payload, dict) or set(payload) != {"family", "templates"}:
        raise PromptError(
            f"{path}: the file must be a mapping with exactly the fields 'family' and 'templates'"
        )
    if payload["family"] != family:
        raise PromptError(
            f"{path}: field 'family' is {payload['family']!r} but the file name says {family!r}"
        )
    if not isinstance(payload["templates"], list) or not payload["templates"]:
        raise PromptError(f"{path}: field 'templates' must be a non-empty list")
    lines = _template_lines(text)
    templates = []
    for index, fields in enumerate(payload["templates"]):
        line = lines[index] if index < len(lines) else None
        templates.append(parse_template(family, fields, source=str(path), line=line))
    return templates


def load_prompts(directory: str | os.PathLike | None = None) -> PromptSet:
    """Load every ``<family>.yaml`` of a directory (default: the repository's ``prompts/``).

    Raises:
        PromptError: no prompt file, a YAML file that is not a family, or any invalid
            template (duplicate ids across files included).
    """
    directory = Path(directory) if directory is not None else DEFAULT_PROMPTS_DIR
    if not directory.is_dir():
        raise PromptError(f"{directory}: prompt directory does not exist")
    files = sorted(directory.glob("*.yaml")) + sorted(directory.glob("*.yml"))
    if not files:
        raise PromptError(f"{directory}: no <family>.yaml prompt files")
    templates = []
    for path in files:
        templates += load_prompt_file(path)
    return PromptSet(templates)
