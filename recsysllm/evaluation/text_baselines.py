"""Non-LM reference rows for ratings and free text, built from the known (training) events.

``baselines.evaluate_baselines`` gives ranking rows (popularity, random) and the global
and user mean ratings; these rows complete the table of a data set with reviews, on the
same examples and protocol as the model:

- ``item_mean`` (rating variant): the item's mean known rating; the global mean for
  an item without one. On data with one review per user (clothing reviews) the user
  mean is the global mean, and the item is the only signal a non-LM baseline has.
- ``item_text`` (text variant: explanation, review title): the most common known
  target of the example's family for the example's item (ties: the text whose word
  count is closest to the family's median target length, then the alphabetically
  first); for an item without one, the family's most common known target, chosen the
  same way.
- ``lead`` (text variant of the review family): the first N words of the review the
  prompt shows, N the median word count of the family's known targets: summarisation's
  LEAD baseline (the review family asks for the review's title).

Known events are those the rows of ``baselines.training_statistics`` count:
train events, and the valid targets when evaluating test. Targets are the task
builder's: an explanation is ``tasks.explanation_sentence(review)``, a review title
is the event's summary (whitespace-normalised), from events that have them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from recsysllm.data.splits import Event, RecSplits
from recsysllm.data.tasks import explanation_sentence
from recsysllm.evaluation.baselines import known_events
from recsysllm.evaluation.evaluator import (
    EvalProtocol,
    EvaluationResults,
    ExampleOutcome,
    example_variant,
)
from recsysllm.schema import Example

TEXT_FAMILIES = ("explanation", "review")


def text_target(family: str, event: Event) -> str | None:
    """The family's free-text target for ``event`` (None when the event has none)."""
    if not event.review.strip():
        return None
    if family == "explanation":
        return explanation_sentence(event.review)
    if family == "review":
        return " ".join(event.summary.split()) or None
    raise ValueError(f"family {family!r} has no free-text target (expected one of {TEXT_FAMILIES})")


def most_common_text(texts: Sequence[str], median_words: float) -> str:
    """The most frequent text; ties: word count closest to ``median_words``, then alphabetical.

    Example:
        >>> most_common_text(["Love it", "Great dress", "Love it", "Too big"], 2)
        'Love it'
        >>> most_common_text(["So soft and pretty", "Nice", "Runs small"], 2)
        'Runs small'
    """
    counts = Counter(texts)
    return min(counts, key=lambda t: (-counts[t], abs(len(t.split()) - median_words), t))


def lead_words(review: str, words: int) -> str:
    """The first ``words`` words of the review (whitespace-normalised)."""
    return " ".join(review.split()[:words])


def reference_rows(
    examples: Sequence[Example], splits: RecSplits, split: str, protocol: EvalProtocol
) -> dict[str, EvaluationResults]:
    """``item_mean``, ``item_text`` and ``lead`` on the rating and text examples of
    ``examples`` (see the module doc); systems without an applicable example are left out.

    Args:
        examples: the evaluated examples (of ``split``).
        splits: the data's splits (the examples' targets and the known events).
        split: "valid" or "test".
        protocol: the model's protocol.
    """
    known = [event for events in known_events(splits, split).values() for event in events]
    ratings: dict[str, list[float]] = {}
    for event in known:
        if event.has_rating:
            ratings.setdefault(event.item, []).append(float(event.rating))
    pooled = [r for values in ratings.values() for r in values]
    global_mean = sum(pooled) / len(pooled) if pooled else None
    texts = {family: {} for family in TEXT_FAMILIES}  # family -> item -> targets
    for event in known:
        for family in TEXT_FAMILIES:
            target = text_target(family, event)
            if target is not None:
                texts[family].setdefault(event.item, []).append(target)
    medians, fallbacks = {}, {}
    for family, by_item in texts.items():
        every = [t for targets in by_item.values() for t in targets]
        if every:
            medians[family] = statistics.median(len(t.split()) for t in every)
            fallbacks[family] = most_common_text(every, medians[family])
    chosen = {
        family: {
            item: most_common_text(targets, medians[family]) for item, targets in by_item.items()
        }
        for family, by_item in texts.items()
    }

    rows = {name: EvaluationResults(system=name, protocol=protocol) for name in
            ("item_mean", "item_text", "lead")}  # fmt: skip
    for example in examples:
        variant = example_variant(example)
        if variant not in ("rating", "text"):
            continue
        event = splits.sequences[example.user][splits.target_index(split, example.user)]
        base = {
            "family": example.task,
            "template_id": example.template_id,
            "seen": example.seen,
            "variant": variant,
            "user": example.user,
            "target": example.target or "",
        }
        if variant == "rating" and global_mean is not None:
            values = ratings.get(event.item)
            mean = sum(values) / len(values) if values else global_mean
            rows["item_mean"].outcomes.append(ExampleOutcome(**base, rating=mean))
        elif variant == "text" and example.task in fallbacks:
            text = chosen[example.task].get(event.item, fallbacks[example.task])
            rows["item_text"].outcomes.append(ExampleOutcome(**base, text=text))
            if example.task == "review":
                lead = lead_words(event.review, round(medians["review"]))
                rows["lead"].outcomes.append(ExampleOutcome(**base, text=lead))
    return {name: results for name, results in rows.items() if results.outcomes}
