"""Data types shared by the data, tokenization, collator and generation modules.

Data moves in one direction (see docs/ARCHITECTURE.md):

    sources -> splits -> Example (segments) -> TokenizedExample -> collator batch

An :class:`Example` is a list of :class:`Segment` s: plain text or one whole entity
(an item title or a user attribute value). Exactly the segments flagged
``answer=True`` form the answer of a task example; a pretraining document has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TASK_FAMILIES = ("rating", "sequential", "explanation", "review", "direct")
PRETRAIN_TASK = "pretrain"
# How a training example's target event is drawn (data.target_sampling).
TARGET_SAMPLING = ("events", "users", "users_recent")
# How a name cap tells apart items whose cut names coincide (data.item_name_disambiguation).
ITEM_NAME_DISAMBIGUATIONS = ("number", "words")

# How the collator hides the answer of a task example.
ANSWER_MASKS = ("mask", "gmask")
# What kind of answer a task example expects (drives decoding and metrics).
ANSWER_TYPES = ("item", "rating", "yesno", "text")


@dataclass(frozen=True)
class Segment:
    """One piece of an example.

    Attributes:
        text: surface string. For an entity this is its name without a leading
            space; the tokenizer adds the one leading space every entity carries,
            so its token ids are the same wherever it appears.
        entity: catalog key of the entity (the item key for items, ``"attr:<column>=<value>"``
            style keys for user attributes), or ``None`` for plain text.
        answer: True for the segment(s) that are the answer of a task example.
    """

    text: str
    entity: str | None = None
    answer: bool = False

    @property
    def is_entity(self) -> bool:
        return self.entity is not None


@dataclass(frozen=True)
class Example:
    """One training or evaluation example, before tokenization.

    Attributes:
        segments: the whole text with the answer in place (flagged ``answer=True``).
        task: one of TASK_FAMILIES or PRETRAIN_TASK.
        template_id: id of the prompt template ("" for pretraining documents).
        seen: whether the template is used in training (False: held-out template).
        user: user id, for error messages and per-user evaluation.
        target: gold answer as text (item key for item answers, "4" for a rating,
            "yes"/"no", or the reference sentence); None for pretraining documents.
        answer_mask: "mask" (answer is an entity or short text, hidden in place by one
            [MASK]) or "gmask" (free text at the end, hidden by [gMASK]); None for
            pretraining documents.
        answer_type: one of ANSWER_TYPES; None for pretraining documents.
        candidates: item keys offered in the prompt (1-of-N prompts), in prompt order.
        history: item keys of the user's sampled history shown in the prompt.
        timestamp: time of the target interaction (None when unknown).
        history_segments: [start, end) indices in ``segments`` of the rendered history
            list (its item entities and separators), so truncation can drop the
            oldest history items and nothing else; None when no history is shown.
    """

    segments: tuple[Segment, ...]
    task: str
    template_id: str = ""
    seen: bool = True
    user: str = ""
    target: str | None = None
    answer_mask: str | None = None
    answer_type: str | None = None
    candidates: tuple[str, ...] = ()
    history: tuple[str, ...] = ()
    timestamp: int | None = None
    history_segments: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.answer_mask is not None and self.answer_mask not in ANSWER_MASKS:
            raise ValueError(
                f"{self.describe()}: answer_mask {self.answer_mask!r} not in {ANSWER_MASKS}"
            )
        if self.answer_type is not None and self.answer_type not in ANSWER_TYPES:
            raise ValueError(
                f"{self.describe()}: answer_type {self.answer_type!r} not in {ANSWER_TYPES}"
            )
        has_answer = any(s.answer for s in self.segments)
        if self.task != PRETRAIN_TASK and self.answer_mask is not None and not has_answer:
            raise ValueError(f"{self.describe()}: task example has no answer segment")

    def describe(self) -> str:
        """Identity used in every error message about this example."""
        return f"example(task={self.task!r}, template={self.template_id!r}, user={self.user!r})"


@dataclass
class TokenizedExample:
    """An Example after segment tokenization (no [CLS]/[eos]: the collator adds them).

    Attributes:
        input_ids: token ids of the whole text, answer included.
        unit_ids: per token, the index of the entity occurrence it belongs to
            (0, 1, 2, ... in order of appearance) or -1 for plain text. Two
            occurrences of the same entity get different indices.
        sentence_ids: per token, the index of its sentence (for [sMASK]).
        answer_span: [start, end) token range of the answer, or None.
        answer_mask: copied from the Example.
        example: the source Example (task, template, user for errors and metrics).
    """

    input_ids: list[int]
    unit_ids: list[int]
    sentence_ids: list[int]
    answer_span: tuple[int, int] | None = None
    answer_mask: str | None = None
    example: Example | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        n = len(self.input_ids)
        if len(self.unit_ids) != n or len(self.sentence_ids) != n:
            raise ValueError(
                f"{self.describe()}: input_ids ({n}), unit_ids ({len(self.unit_ids)}) and "
                f"sentence_ids ({len(self.sentence_ids)}) differ in length"
            )

    def describe(self) -> str:
        return self.example.describe() if self.example is not None else "tokenized example"
