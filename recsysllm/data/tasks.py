"""Task examples: RecSplits + EntityCatalog + PromptSet -> schema.Example (segments).

Every example, in training, evaluation and the API, is rendered by one function,
:func:`render_example`, so all three see identical text.

Targets and histories:

- valid / test (``TaskBuilder.examples``): one example per user per selected
  template of each family; the target is that split's event (second-last / last)
  and the history is sampled (DESIGN.md section 3) from the user's earlier events
  with a timestamp strictly before the target's.
- Short users (1 or 2 events, ``RecSplits.short_users``) sit whole in one split:
  in valid/test their last event is the target and their earlier events, possibly
  none, the history; in train every event is a target. Families that need a
  history (sequential) skip a target without one (counted, as below); rating,
  explanation, review and direct (whose {history} then reads EMPTY_HISTORY_TEXT)
  are built, with the user's profile as usual.
- train: every train event of every user may be a target, with the history
  sampled from the events before it. ``examples("train")`` gives one example per
  (train event, family) with a template drawn uniformly from the selected ones;
  ``training_examples`` draws a fixed number per epoch from a :class:`TaskMixture`.

What each family asks (target in brackets): rating [stars "1".."5", or the
template's yes/no words for "4 stars or more"], sequential [next item; or yes/no
for one item that is the target or a negative with probability 1/2], explanation
[the first sentence of the review, at most 50 words; the hint is its longest
word of 4+ letters], review [the summary, or the rating], direct [the target among
100 candidates; or yes/no as for sequential]. Candidates and yes/no negatives come
from the stored lists of ``RecSplits.candidates`` for valid/test (shuffled with a
seeded generator so the target's position varies) and are sampled from items the
user never interacted with for training. When the splits hold no stored lists
(``num_negatives`` 0: the direct family is not used), templates with candidates are
skipped and counted, and yes/no negatives are drawn with the example's seeded generator.

An example whose target lacks what its template needs (no rating, no review, no
summary, no hint word, no earlier event for a sequential prompt) is skipped and
counted; each call logs one line with the counts. A family whose data is missing
altogether (no review text on MovieLens; no ratings) is skipped with one log line.
"""

from __future__ import annotations

import logging
import math
import re
import zlib
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from recsysllm.data.catalog import EntityCatalog, attribute_key
from recsysllm.data.sampling import SamplingConfig, sample_history
from recsysllm.data.splits import EVAL_SPLITS, SPLITS, Event, RecSplits, sample_negatives
from recsysllm.prompts import PromptSet, PromptTemplate
from recsysllm.schema import PRETRAIN_TASK, TARGET_SAMPLING, TASK_FAMILIES, Example, Segment

logger = logging.getLogger(__name__)

# Text of the answer segment when the target is unknown (API inference): the collator
# and build_prompt replace the whole answer span by its mask token, so this text is
# never seen by the model; it only marks where the answer goes.
ANSWER_PLACEHOLDER = "[answer]"
# Shown for {history} when the user has no earlier events (direct/rating prompts).
EMPTY_HISTORY_TEXT = "no items yet"
ITEM_SEPARATOR = ", "
# A rating of 4 or more is a positive answer of yes/no rating prompts.
POSITIVE_RATING = 4.0
MAX_EXPLANATION_WORDS = 50
# History items per sentence of a pretraining document (sentences feed [sMASK]).
ITEMS_PER_SENTENCE = 5

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[A-Za-z]+")
_SEPARATOR = Segment(ITEM_SEPARATOR)


def format_rating(rating: float) -> str:
    """Answer text of a rating: "4" for 4.0, "3.5" for 3.5."""
    return f"{rating:g}"


def explanation_sentence(review: str) -> str:
    """The review's first sentence (at most MAX_EXPLANATION_WORDS words), whitespace-normalised."""
    text = _WHITESPACE.sub(" ", review).strip()
    sentence = _SENTENCE_END.split(text, maxsplit=1)[0]
    return " ".join(sentence.split(" ")[:MAX_EXPLANATION_WORDS])


def hint_word(sentence: str) -> str | None:
    """The longest alphabetic word of 4+ letters (first on ties), lowercased; None if none."""
    words = [word for word in _WORD.findall(sentence) if len(word) >= 4]
    return max(words, key=len).lower() if words else None


@lru_cache(maxsize=256)
def _feature_parts(column: str, template: str) -> tuple[str, str]:
    """Text before and after {value} in a user-feature template."""
    if template.count("{value}") != 1:
        raise ValueError(
            f"user feature {column!r}: template {template!r} must contain {{value}} exactly once"
        )
    before, after = template.split("{value}")
    return _WHITESPACE.sub(" ", before), _WHITESPACE.sub(" ", after)


def profile_segments(
    catalog: EntityCatalog, user_features: Mapping[str, str], feature_templates: Mapping[str, str]
) -> list[Segment]:
    """Profile sentence, e.g. "The user is 25-34 years old and works as a programmer.".

    Attribute values are entity segments.

    Features appear in ``feature_templates`` order; empty values are left out, and a
    user without any known feature gets no profile at all.

    Raises:
        UnknownEntityError: a value that is not an attribute entity of the catalog.
    """
    phrases = []
    for column, template in feature_templates.items():
        value = (user_features.get(column) or "").strip()
        if value:
            before, after = _feature_parts(column, template)
            phrases.append(
                (Segment(before), catalog.segment(attribute_key(column, value)), Segment(after))
            )
    if not phrases:
        return []
    segments = [Segment("The user ")]
    for index, phrase in enumerate(phrases):
        if index:
            segments.append(Segment(" and " if index == len(phrases) - 1 else ", "))
        segments += phrase
    segments.append(Segment("."))
    return segments


def _item_list(catalog: EntityCatalog, keys: Sequence[str]) -> list[Segment]:
    """Item entity segments joined by ITEM_SEPARATOR text segments."""
    segments = [_SEPARATOR] * (2 * len(keys) - 1) if keys else []
    segments[::2] = catalog.item_segments(keys)
    return segments


@lru_cache(maxsize=4096)
def _plain(text: str) -> str:
    """Whitespace-normalised text (template literals repeat: cached)."""
    return _WHITESPACE.sub(" ", text)


def _answer_segment(
    template: PromptTemplate, catalog: EntityCatalog, target: str | None
) -> tuple[Segment, str | None]:
    """The answer segment and the (normalised) gold target."""
    where = f"{template.describe()}: target {target!r}"
    if target is None:
        return Segment(ANSWER_PLACEHOLDER, answer=True), None
    if template.answer_type == "item":
        return catalog.item_segment(target, answer=True), target
    if template.answer_type == "yesno":
        if target not in template.answer_words:
            raise ValueError(
                f"{where} is not one of the template's answer words {template.answer_words}"
            )
        return Segment(target, answer=True), target
    if template.answer_type == "rating":
        try:
            value = float(target)
        except ValueError:
            raise ValueError(f"{where} is not a number") from None
        if not 1.0 <= value <= 5.0:
            raise ValueError(f"{where} is outside 1-5")
        return Segment(target, answer=True), target
    text = _WHITESPACE.sub(" ", target).strip()
    if not text:
        raise ValueError(f"{where}: empty text answer")
    return Segment(text, answer=True), text


class _SegmentList:
    """Appends segments: neighbouring plain text merges, whitespace stays single.

    Plain text arrives whitespace-normalised; only a junction can double a space (e.g.
    around an empty {user_profile}). The text is trimmed at both ends, and the space
    before a plain-text answer moves into it ("Answer: " + "yes" -> "Answer:" + " yes"),
    so the answer span starts at its natural word boundary, as the tokenizer would
    split the whole text.
    """

    def __init__(self) -> None:
        self.segments: list[Segment] = []

    def text(self, text: str, answer: bool = False) -> None:
        segments = self.segments
        previous = segments[-1] if segments else None
        if previous is None:
            text = text.lstrip()
        elif previous.entity is None and previous.text.endswith(" "):
            if previous.answer == answer:
                text = text.lstrip()
            elif answer:
                text = " " + text.lstrip()
                segments[-1] = previous = Segment(previous.text[:-1])
        if not text:
            return
        if previous is not None and previous.entity is None and previous.answer == answer:
            segments[-1] = Segment(previous.text + text, answer=answer)
        else:
            segments.append(Segment(text, answer=answer))

    def add(self, segments: Sequence[Segment]) -> None:
        """Entity segments, or item lists (which start and end with an entity)."""
        self.segments += segments

    def mixed(self, segments: Sequence[Segment]) -> None:
        """Any segments (e.g. a profile sentence), plain text merged as by :meth:`text`."""
        for segment in segments:
            if segment.entity is None:
                self.text(segment.text, segment.answer)
            else:
                self.segments.append(segment)

    def finish(self) -> tuple[Segment, ...]:
        segments = self.segments
        if segments and segments[-1].entity is None and not segments[-1].answer:
            segments[-1] = Segment(segments[-1].text.rstrip())
        return tuple(segment for segment in segments if segment.text)


def render_example(
    template: PromptTemplate,
    catalog: EntityCatalog,
    *,
    user: str,
    user_features: Mapping[str, str],
    feature_templates: Mapping[str, str],
    history: Sequence[str],
    item: str | None = None,
    candidates: Sequence[str] = (),
    target: str | None = None,
    hint: str | None = None,
    review: str | None = None,
    timestamp: int | None = None,
) -> Example:
    """Render one template into an Example: the one rendering path of training, evaluation and the API.

    Args:
        template: the prompt template (its family is the example's task).
        catalog: resolves item keys and attribute values to entity segments.
        user: user id (for errors and per-user metrics; not shown in the prompt).
        user_features: feature column -> value ("" = unknown) of this user.
        feature_templates: feature column -> template such as ``"is {value} years old"``
            (``RecTables.user_features``).
        history: item keys shown for {history}, chronological.
        item: item key for {item}.
        candidates: item keys for {candidates}, in prompt order.
        target: gold answer: item key, rating text ("4"), one of the template's
            answer words, or free text. ``None`` (inference): the answer segment holds
            ANSWER_PLACEHOLDER, which the collator replaces by the mask token anyway.
        hint: word for {hint}.
        review: review text for {review}.
        timestamp: time of the target interaction, if known.

    Raises:
        ValueError: a placeholder of the template without a value, or a target that
            does not fit the answer type; the message names the template.
        UnknownEntityError: an item key or attribute value not in the catalog.

    Example:
        >>> render_example(prompts.get("sequential-1"), catalog, user="7", user_features={},
        ...                feature_templates={}, history=["Heat (1995)"], target="Fargo (1996)")
        ... # doctest: +SKIP
    """
    segments = _SegmentList()
    history_segments = None
    answer, gold = _answer_segment(template, catalog, target)
    for literal, name in template.parts:
        segments.text(_plain(literal))
        if name is None:
            continue
        if name == "answer":
            if answer.entity is None:
                segments.text(answer.text, answer=True)
            else:
                segments.add([answer])
        elif name == "user_profile":
            segments.mixed(profile_segments(catalog, user_features, feature_templates))
        elif name == "history":
            if history:
                first = len(segments.segments)
                segments.add(_item_list(catalog, history))
                history_segments = (first, len(segments.segments))
            else:
                segments.text(EMPTY_HISTORY_TEXT)
        elif name == "candidates":
            if not candidates:
                raise ValueError(f"{template.describe()}: {{candidates}} needs candidate items")
            segments.add(_item_list(catalog, candidates))
        elif name == "item":
            if item is None:
                raise ValueError(f"{template.describe()}: {{item}} needs an item")
            segments.add([catalog.item_segment(item)])
        elif name == "hint":
            if not hint or not hint.strip():
                raise ValueError(f"{template.describe()}: {{hint}} needs a hint word")
            segments.text(_WHITESPACE.sub(" ", hint.strip()))
        elif name == "review":
            if not review or not review.strip():
                raise ValueError(f"{template.describe()}: {{review}} needs review text")
            segments.text(_WHITESPACE.sub(" ", review).strip())
    placeholders = template.placeholders
    return Example(
        segments=segments.finish(),
        task=template.family,
        template_id=template.id,
        seen=template.seen,
        user=user,
        target=gold,
        answer_mask=template.answer_mask,
        answer_type=template.answer_type,
        candidates=tuple(candidates) if "candidates" in placeholders else (),
        history=tuple(history) if "history" in placeholders else (),
        timestamp=timestamp,
        history_segments=history_segments,
    )


@dataclass(frozen=True)
class TaskMixture:
    """How training examples of one epoch are drawn.

    Attributes:
        weights: task family (or "pretrain") -> sampling weight (>= 0).
        examples_per_epoch: examples per epoch; None: one per (user with train events,
            usable family), i.e. that number of users times the number of families with
            weight > 0 and data.
        templates: seen template ids the families draw from; None: every seen template.
            A family with weight > 0 needs at least one listed template (checked against
            the prompt set by :meth:`TaskBuilder.training_examples`).
        target_sampling: how an example's target event is drawn: "events" uniformly
            over the train events the template can use (a user weighs as many events as
            they have), "users" a user uniformly, then one of their usable events (users
            weigh equally, as one evaluation example per user weighs them),
            "users_recent" a user uniformly, then the later of two of their usable
            events drawn uniformly (the i-th of n, 0-based, with probability
            (2i + 1) / n^2: recent behaviour, which a leave-one-out evaluation tests,
            weighs more, and every event keeps a chance).
    """

    weights: dict[str, float] = field(
        default_factory=lambda: dict.fromkeys((*TASK_FAMILIES, PRETRAIN_TASK), 1.0)
    )
    examples_per_epoch: int | None = None
    templates: tuple[str, ...] | None = None
    target_sampling: str = "events"

    def __post_init__(self) -> None:
        if self.target_sampling not in TARGET_SAMPLING:
            raise ValueError(
                f"TaskMixture: target_sampling {self.target_sampling!r} not in {TARGET_SAMPLING}"
            )
        known = (*TASK_FAMILIES, PRETRAIN_TASK)
        for name, weight in self.weights.items():
            if name not in known:
                raise ValueError(f"TaskMixture: unknown family {name!r}; known: {known}")
            if not weight >= 0:
                raise ValueError(f"TaskMixture: weight of {name!r} must be >= 0, got {weight}")
        if sum(self.weights.values()) <= 0:
            raise ValueError("TaskMixture: all weights are zero")
        if self.examples_per_epoch is not None and self.examples_per_epoch < 1:
            raise ValueError(
                f"TaskMixture: examples_per_epoch must be >= 1, got {self.examples_per_epoch}"
            )
        if self.templates is not None and not self.templates:
            raise ValueError("TaskMixture: templates must be None (all seen) or non-empty")


def _allocate(total: int, weights: Mapping[str, float]) -> dict[str, int]:
    """Split ``total`` by weights, largest remainder first (counts sum to ``total``)."""
    weight_sum = sum(weights.values())
    shares = {name: total * weight / weight_sum for name, weight in weights.items()}
    counts = {name: math.floor(share) for name, share in shares.items()}
    by_remainder = sorted(shares, key=lambda name: (counts[name] - shares[name], name))
    for name in by_remainder[: total - sum(counts.values())]:
        counts[name] += 1
    return counts


class TaskBuilder:
    """Builds task examples and pretraining documents from leave-one-out splits.

    Args:
        splits: the leave-one-out splits (with stored direct candidates).
        catalog: entity catalog of ``splits.tables``; must hold every item of the splits.
        prompts: the prompt set.
        sampling: behaviour sampling windows and shares.
        history_budget: N, the most history items one prompt shows (see
            ``sampling.history_budget``).
        train_num_negatives: negatives of each training candidate list (None: as many
            as the stored valid/test lists); a sequence draws each training example's
            count from it uniformly. The stored lists are never changed.

    Example:
        >>> builder = TaskBuilder(splits, EntityCatalog.from_tables(splits.tables), load_prompts())
        ... # doctest: +SKIP
        >>> test_examples = builder.examples("test", ["sequential"], prompts="all")  # doctest: +SKIP
    """

    def __init__(
        self,
        splits: RecSplits,
        catalog: EntityCatalog,
        prompts: PromptSet,
        sampling: SamplingConfig | None = None,
        history_budget: int = 20,
        train_num_negatives: int | Sequence[int] | None = None,
    ) -> None:
        if history_budget < 1:
            raise ValueError(f"history_budget must be >= 1, got {history_budget}")
        missing = [key for key in splits.item_keys.values() if key not in catalog.items]
        if missing:
            raise ValueError(
                f"catalog {catalog.name!r} (hash {catalog.hash[:12]}) lacks {len(missing)} items of the splits, "
                f"e.g. {missing[:3]}: build it from splits.tables"
            )
        self.splits = splits
        self.catalog = catalog
        self.prompts = prompts
        self.sampling = sampling or SamplingConfig()
        self.history_budget = history_budget
        tables = splits.tables
        self.feature_templates = dict(tables.user_features)
        self.users = splits.users
        self._sequences = splits.sequences
        self._timestamps = {
            user: [event.timestamp for event in events] for user, events in self._sequences.items()
        }
        self._interacted = {user: splits.interacted(user) for user in self.users}
        self._item_pool = sorted(splits.item_keys.values())
        user_columns = tables.users.to_dict() if tables.users.num_rows else {}
        self._features: dict[str, dict[str, str]] = {}
        for row, user in enumerate(user_columns.get("user", [])):
            self._features[user] = {
                column: user_columns[column][row] or "" for column in self.feature_templates
            }
        # Training lists as long as the stored ones (which load_candidates may replace).
        stored = next(
            (keys for lists in splits.candidates.values() for keys in lists.values()), None
        )
        eval_negatives = len(stored) - 1 if stored else splits.num_negatives
        # Each training list's negative count is drawn from these (one: no draw).
        if train_num_negatives is None:
            self._train_negatives: tuple[int, ...] = (eval_negatives,)
        elif isinstance(train_num_negatives, int):
            self._train_negatives = (train_num_negatives,)
        else:
            self._train_negatives = tuple(train_num_negatives)
        if train_num_negatives is not None and (
            not self._train_negatives or min(self._train_negatives) < 1
        ):
            raise ValueError(
                f"train_num_negatives must be >= 1 or a non-empty list of such, got {train_num_negatives}"
            )
        # A catalog too small for the configured lists gave the stored lists fewer
        # negatives (every list the same length); training lists get no more than those.
        if eval_negatives >= 1 and max(self._train_negatives) > eval_negatives:
            logger.warning(
                "data.train_num_negatives %s: the evaluation lists have only %d negatives "
                "(the catalog allows no more); training lists use at most %d",
                train_num_negatives,
                eval_negatives,
                eval_negatives,
            )
            self._train_negatives = tuple(min(c, eval_negatives) for c in self._train_negatives)
        events = [event for sequence in self._sequences.values() for event in sequence]
        self.missing_data: dict[str, str] = {}
        if not tables.has_reviews or not any(event.review.strip() for event in events):
            self.missing_data["explanation"] = self.missing_data["review"] = (
                f"{tables.name} has no review text"
            )
        if not any(event.has_rating for event in events):
            self.missing_data["rating"] = f"{tables.name} has no ratings"
        self._targets_cache: dict[tuple[str, str, bool, bool], list[tuple[str, int]]] = {}
        self._user_starts_cache: dict[tuple[str, str, bool, bool], list[int]] = {}

    # ----------------------------------------------------------------- helpers

    def _history(self, user: str, position: int) -> list[str]:
        """Sampled history keys for the target at ``position`` of the user's sequence."""
        sequence = self._sequences[user]
        chosen = sample_history(
            self._timestamps[user][:position],
            sequence[position].timestamp,
            self.history_budget,
            self.sampling,
        )
        return [sequence[index].item for index in chosen]

    def _unmet(self, template: PromptTemplate, event: Event, history: Sequence[str]) -> str | None:
        """Why ``event`` cannot be the target of ``template`` (None: it can)."""
        family, kind = template.family, template.answer_type
        if "candidates" in template.placeholders and not self.splits.num_negatives:
            return "no candidate lists (data.mixture.direct is 0)"
        if family == "sequential" and not history:
            return "no earlier event"
        if family == "rating" and not event.has_rating:
            return "no rating"
        if family in ("explanation", "review") and not event.review.strip():
            return "no review text"
        if (
            family == "explanation"
            and "hint" in template.placeholders
            and hint_word(explanation_sentence(event.review)) is None
        ):
            return "no hint word"
        if family == "review" and kind == "text" and not event.summary.strip():
            return "no summary"
        if family == "review" and kind == "rating" and not event.has_rating:
            return "no rating"
        return None

    def _negative(
        self, user: str, rng: np.random.Generator, stored: Sequence[str] | None
    ) -> str | None:
        """One item the user never interacted with (None if there is none)."""
        if stored is not None:
            return stored[1 + int(rng.integers(len(stored) - 1))] if len(stored) > 1 else None
        if len(self._interacted[user]) >= len(self._item_pool):
            return None
        return sample_negatives(rng, self._item_pool, self._interacted[user], 1)[0]

    def _render(
        self,
        template: PromptTemplate,
        user: str,
        event: Event,
        history: Sequence[str],
        rng: np.random.Generator | None,
        stored: Sequence[str] | None,
    ) -> Example:
        """Render ``template`` with ``event`` as its target.

        ``stored`` is the user's stored candidate list (target first) for valid/test,
        None for training (negatives are sampled). ``rng`` is needed by templates
        with candidates or a yes/no item.
        """
        family, kind = template.family, template.answer_type
        item = target = hint = review = None
        candidates: Sequence[str] = ()
        if family == "rating":
            item = event.item
            if kind == "rating":
                target = format_rating(event.rating)
            else:
                target = template.answer_words[0 if event.rating >= POSITIVE_RATING else 1]
        elif family in ("sequential", "direct"):
            if kind == "item":
                target = event.item
                if "candidates" in template.placeholders:
                    if stored is None:
                        counts = self._train_negatives
                        count = (
                            counts[int(rng.integers(len(counts)))] if len(counts) > 1 else counts[0]
                        )
                        negatives = sample_negatives(
                            rng, self._item_pool, self._interacted[user], count
                        )
                        stored = (event.item, *negatives)
                    candidates = [stored[index] for index in rng.permutation(len(stored))]
            else:
                negative = self._negative(user, rng, stored) if rng.random() < 0.5 else None
                item = negative or event.item
                target = template.answer_words[1 if negative else 0]
        elif family == "explanation":
            item = event.item
            target = explanation_sentence(event.review)
            hint = hint_word(target) if "hint" in template.placeholders else None
        else:  # review
            item = event.item
            review = event.review
            target = event.summary if kind == "text" else format_rating(event.rating)
        return render_example(
            template,
            self.catalog,
            user=user,
            user_features=self._features.get(user, {}),
            feature_templates=self.feature_templates,
            history=history,
            item=item,
            candidates=candidates,
            target=target,
            hint=hint,
            review=review,
            timestamp=event.timestamp if event.timestamp >= 0 else None,
        )

    def _usable_families(self, families: Sequence[str] | None) -> list[str]:
        """Requested families minus those whose data is missing (one log line for all of them)."""
        families = list(TASK_FAMILIES if families is None else families)
        unknown = [family for family in families if family not in TASK_FAMILIES]
        if unknown:
            raise ValueError(f"unknown task families {unknown}; known: {TASK_FAMILIES}")
        skipped = [family for family in families if family in self.missing_data]
        if skipped:
            reasons = sorted({self.missing_data[family] for family in skipped})
            logger.info("skipping task families %s: %s", skipped, "; ".join(reasons))
        return [family for family in families if family not in self.missing_data]

    @staticmethod
    def _log_skips(skips: Counter, what: str) -> None:
        if skips:
            details = ", ".join(
                f"{family}/{reason}: {count}" for (family, reason), count in sorted(skips.items())
            )
            logger.info(
                "%s: skipped %d examples whose target lacks data (%s)",
                what,
                sum(skips.values()),
                details,
            )

    # -------------------------------------------------------------- public API

    def examples(
        self,
        split: str,
        families: Sequence[str] | None = None,
        prompts: str = "seen",
        seed: int = 0,
    ) -> list[Example]:
        """Task examples of one split.

        Args:
            split: "train", "valid" or "test".
            families: task families (default: all five); families without data are
                skipped with one log line.
            prompts: "seen", "unseen" or "all" templates.
            seed: seeds the candidate order and yes/no negatives (valid/test: per user
                and template, so an example does not depend on which others are built)
                and, for train, the template of each (event, family).

        Returns:
            valid/test: one example per user per selected template (users sorted,
            then families, then templates in file order). train: one example per
            train event and family (users sorted, events in time order).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        templates = {
            family: self.prompts.select(family, prompts)
            for family in self._usable_families(families)
        }
        templates = {family: chosen for family, chosen in templates.items() if chosen}
        skips: Counter = Counter()
        examples: list[Example] = []
        if split == "train":
            rng = np.random.default_rng([seed, SPLITS.index(split)])
            for user in self.users:
                sequence = self._sequences[user]
                for position in self.splits.train_positions(user):
                    history = self._history(user, position)
                    for family, chosen in templates.items():
                        template = chosen[int(rng.integers(len(chosen)))]
                        reason = self._unmet(template, sequence[position], history)
                        if reason:
                            skips[family, reason] += 1
                        else:
                            examples.append(
                                self._render(template, user, sequence[position], history, rng, None)
                            )
            self._log_skips(skips, f"{split} examples")
            return examples
        split_index = EVAL_SPLITS.index(split)
        for user_index, user in enumerate(self.users):
            if self.splits.short_users.get(user, split) != split:
                continue  # a short user in another split: no target here
            position = self.splits.target_index(split, user)
            event = self._sequences[user][position]
            history = self._history(user, position)
            stored = self.splits.candidates[split].get(user)  # None: no lists were built
            for family, chosen in templates.items():
                for template in chosen:
                    reason = self._unmet(template, event, history)
                    if reason:
                        skips[family, reason] += 1
                        continue
                    rng = None
                    if template.family in ("sequential", "direct"):
                        rng = np.random.default_rng(
                            [seed, split_index, user_index, zlib.crc32(template.id.encode())]
                        )
                    examples.append(self._render(template, user, event, history, rng, stored))
        self._log_skips(skips, f"{split} examples")
        return examples

    def _document(self, user: str, events: Sequence[Event], target_time: int | None) -> Example:
        """A pretraining document: profile sentence + sampled history in sentences of a few items."""
        chosen = sample_history(
            [event.timestamp for event in events], target_time, self.history_budget, self.sampling
        )
        keys = [events[index].item for index in chosen]
        segments = _SegmentList()
        segments.mixed(
            profile_segments(self.catalog, self._features.get(user, {}), self.feature_templates)
        )
        for start in range(0, len(keys), ITEMS_PER_SENTENCE):
            lead = (
                "The user interacted with" if start == 0 else "After that, the user interacted with"
            )
            segments.text(f" {lead} ")
            segments.add(_item_list(self.catalog, keys[start : start + ITEMS_PER_SENTENCE]))
            segments.text(".")
        return Example(
            segments=segments.finish(), task=PRETRAIN_TASK, user=user, history=tuple(keys)
        )

    def pretraining_document(
        self, user: str, split: str, rng: np.random.Generator | None = None
    ) -> Example:
        """One user's pretraining document (see :meth:`pretraining_documents`)."""
        sequence = self._sequences[user]
        if split == "train":
            if rng is None:
                raise ValueError(
                    "a train pretraining document needs a random generator for its cut"
                )
            n_train = len(self.splits.train_positions(user))
            if n_train == 0:
                raise ValueError(f"user {user!r} has no train events for a train document")
            # Cut after 1..(number of train events) events.
            cut = int(rng.integers(1, n_train, endpoint=True))
            return self._document(user, sequence[:cut], None)
        position = self.splits.target_index(split, user)
        return self._document(user, sequence[:position], sequence[position].timestamp)

    def pretraining_documents(self, split: str, seed: int = 0) -> list[Example]:
        """One RecSysLLM "pretraining document" per user: task "pretrain", no answer.

        The text is the user's profile sentence followed by the sampled history in
        sentences of ITEMS_PER_SENTENCE items ("The user interacted with A, B and C.
        After that, ..."), so the collator's [sMASK] has sentences to choose from.

        train: the document covers the user's train events up to a cut drawn
        uniformly from 1..(number of train events) with ``seed`` (per user), so over
        seeds/epochs every prefix of a long history appears, as every train event
        may be a target. valid/test: the events strictly before the split's target
        (``seed`` has no effect).

        Users without events in the split (short users of another split) get no
        document; neither does a short valid/test user without any earlier event
        (counted and logged in one line).
        """
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        documents = []
        empty = 0
        in_split = set(self.splits.split_users(split))
        for user_index, user in enumerate(self.users):
            if user not in in_split:
                continue
            rng = np.random.default_rng([seed, user_index]) if split == "train" else None
            document = self.pretraining_document(user, split, rng)
            if document.history or user not in self.splits.short_users:
                documents.append(document)
            else:
                empty += 1
        if empty:
            logger.info(
                "%s pretraining documents: skipped %d users without an earlier event", split, empty
            )
        return documents

    def training_examples(self, mixture: TaskMixture, seed: int, epoch: int) -> list[Example]:
        """One epoch of training examples drawn from ``mixture``: a function of (seed, epoch).

        Only seen templates are used (those of ``mixture.templates`` when given). Each
        family's count is its weight's share of
        the epoch (largest remainder). An example draws a seen template uniformly,
        then a target uniformly among the train events that template can use, and
        renders it with history from before the target; "pretrain" draws a user and
        builds a train pretraining document. The result is shuffled.

        Raises:
            ValueError: ``mixture.templates`` names an unknown or unseen template, or
                leaves a family with weight > 0 (and data) without a template.
        """
        rng = np.random.default_rng([seed, epoch])
        chosen = self._chosen_templates(mixture)
        skipped: dict[str, str] = {}
        templates: dict[str, list[PromptTemplate]] = {}
        for family, weight in mixture.weights.items():
            if weight <= 0 or family == PRETRAIN_TASK:
                continue
            if family in self.missing_data:
                skipped[family] = self.missing_data[family]
                continue
            seen = self.prompts.templates(family, seen=True)
            if chosen is not None:
                seen = [t for t in seen if t.id in chosen]
                if not seen:
                    raise ValueError(
                        f"training mixture: family {family!r} has weight {weight} but none of "
                        f"its templates is in data.train_templates {sorted(chosen)}"
                    )
            # Only templates that some train event can fill (e.g. a hint word exists).
            usable = [t for t in seen if self._train_targets(t)]
            if usable:
                templates[family] = usable
            else:
                skipped[family] = "no seen template that a train event can fill"
        if skipped:
            reasons = "; ".join(sorted(set(skipped.values())))
            logger.info("skipping task families %s: %s", list(skipped), reasons)
        weights = {family: mixture.weights[family] for family in templates}
        train_users = self.splits.split_users("train")
        if mixture.weights.get(PRETRAIN_TASK, 0) > 0:
            if train_users:
                weights[PRETRAIN_TASK] = mixture.weights[PRETRAIN_TASK]
            else:
                logger.info("skipping pretraining documents: no user has train events")
        if not weights:
            raise ValueError(
                "training mixture: no family with weight > 0 has data and seen templates"
            )
        # Default: one per (user with train events, family); short valid/test users have none.
        total = mixture.examples_per_epoch or len(train_users) * len(weights)
        examples: list[Example] = []
        for name, count in _allocate(total, weights).items():
            if name == PRETRAIN_TASK:
                for user_index in rng.integers(len(train_users), size=count):
                    examples.append(
                        self.pretraining_document(train_users[user_index], "train", rng)
                    )
                continue
            for template_index in rng.integers(len(templates[name]), size=count):
                template = templates[name][template_index]
                user, position = self._draw_target(template, mixture.target_sampling, rng)
                event = self._sequences[user][position]
                examples.append(
                    self._render(template, user, event, self._history(user, position), rng, None)
                )
        return [examples[index] for index in rng.permutation(len(examples))]

    def _chosen_templates(self, mixture: TaskMixture) -> frozenset[str] | None:
        """The ids of ``mixture.templates`` (None: all seen), checked against the prompt set."""
        if mixture.templates is None:
            return None
        known = {
            t.id: t for family in self.prompts.families for t in self.prompts.templates(family)
        }
        for template_id in mixture.templates:
            if template_id not in known:
                raise ValueError(
                    f"data.train_templates: unknown template id {template_id!r}; the prompt set "
                    f"has {sorted(known)}"
                )
            if not known[template_id].seen:
                raise ValueError(
                    f"data.train_templates: {template_id!r} is an unseen template (held out "
                    "from training for the unseen-template evaluation)"
                )
        return frozenset(mixture.templates)

    def _draw_target(
        self, template: PromptTemplate, sampling: str, rng: np.random.Generator
    ) -> tuple[str, int]:
        """One (user, position) target of ``template`` (``TaskMixture.target_sampling``)."""
        targets = self._train_targets(template)
        if sampling == "events":
            return targets[int(rng.integers(len(targets)))]
        # Targets are grouped by user (in user order): the start of each user's run.
        key = self._target_key(template)
        starts = self._user_starts_cache.get(key)
        if starts is None:
            starts = [0]
            starts += [i for i in range(1, len(targets)) if targets[i][0] != targets[i - 1][0]]
            starts.append(len(targets))
            self._user_starts_cache[key] = starts
        run = int(rng.integers(len(starts) - 1))
        count = starts[run + 1] - starts[run]
        index = int(rng.integers(count))
        if sampling == "users_recent":
            # A user's targets are in chronological order: keep the later of two draws.
            index = max(index, int(rng.integers(count)))
        return targets[starts[run] + index]

    @staticmethod
    def _target_key(template: PromptTemplate) -> tuple[str, str, bool, bool]:
        """What decides which train events a template can use as its target."""
        placeholders = template.placeholders
        return (
            template.family,
            template.answer_type,
            "hint" in placeholders,
            "candidates" in placeholders,
        )

    def _train_targets(self, template: PromptTemplate) -> list[tuple[str, int]]:
        """(user, position) of every train event ``template`` can use as its target (cached)."""
        key = self._target_key(template)
        cache = self._targets_cache
        if key not in cache:
            targets = []
            for user in self.users:
                sequence = self._sequences[user]
                timestamps = self._timestamps[user]
                for position in self.splits.train_positions(user):
                    # A sequential target needs one earlier event strictly before it in time.
                    has_prior = position > 0 and (
                        timestamps[position] < 0 or timestamps[0] < timestamps[position]
                    )
                    if (
                        self._unmet(template, sequence[position], ["x"] if has_prior else [])
                        is None
                    ):
                        targets.append((user, position))
            cache[key] = targets
        return cache[key]
