"""Evaluate a model on task examples: one outcome per example, metrics per group.

The protocol is DESIGN.md section 8. Each example is scored by the decoding its
answer needs (its *variant*):

| variant      | examples                                    | decoding                          | metrics                 |
|--------------|---------------------------------------------|-----------------------------------|-------------------------|
| `all_items`  | item answer, no candidates (sequential)     | trie-constrained beam search      | HR@k, NDCG@k (k > 1)    |
| `candidates` | item answer, 1-of-N candidates (direct ...) | exact log-likelihood of each      | HR@k, NDCG@k (k > 1)    |
| `yesno`      | one of the template's two answer words      | log-likelihood of the two words   | accuracy                |
| `rating`     | numeric rating                              | greedy text, then parse_rating    | RMSE, MAE, unparseable  |
| `text`       | explanation / review sentence               | greedy text                       | BLEU-4, ROUGE-1/2/L     |

Rules that decide numbers:

- sequential over all items: no item is excluded by default (as P5, OpenP5 and
  TIGER report); ``exclude_history`` adds a second beam search that never returns
  the user's history items ("excl. history" metrics). A target outside the top-k
  beams is a miss at every k.
- candidate ranking and yes/no are pessimistic on ties: a candidate scoring exactly
  as high as the target ranks before it, and a tie between the two answer words is
  wrong, so a model that cannot tell candidates apart earns nothing.
- ratings: every example counts; an unparseable output (``parse_rating`` gives
  None) is counted and scores as the worst rating on the scale
  (``metrics.UNPARSEABLE_RATING_RULE``).

Metrics are reported per (family, variant, template) and aggregated over the
seen templates, the unseen templates and all templates of a (family, variant):
aggregates pool the examples (micro-average) rather than averaging templates,
so corpus BLEU and RMSE stay what their definitions say.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import torch
from tqdm.auto import tqdm

from recsysllm.collator import BlankInfillingCollator, MaskingConfig, PromptInputs
from recsysllm.data.catalog import EntityCatalog
from recsysllm.evaluation import metrics
from recsysllm.generation import generate_text, parse_rating, recommend_items, score_candidates
from recsysllm.prompts import PromptSet
from recsysllm.schema import Example, TokenizedExample
from recsysllm.tokenization import GLMTokenizer
from recsysllm.trie import EntityTrie

VARIANTS = ("all_items", "candidates", "yesno", "rating", "text")
SPLITS = ("seen", "unseen", "all")
RATING_MAX_NEW_TOKENS = 8


def example_variant(example: Example) -> str:
    """Which decoding and metrics an example needs (see the module table)."""
    if example.answer_type == "item":
        return "candidates" if example.candidates else "all_items"
    if example.answer_type in ("yesno", "rating", "text"):
        return example.answer_type
    raise ValueError(
        f"{example.describe()}: answer_type {example.answer_type!r} cannot be evaluated "
        f"(expected one of item, yesno, rating, text)"
    )


@dataclass(frozen=True)
class ExampleOutcome:
    """What a system produced for one example, enough to recompute every metric.

    Attributes:
        family: task family of the example.
        template_id: prompt template id.
        seen: whether the template was used in training.
        variant: one of VARIANTS.
        user: user id.
        target: gold answer as text.
        rank: 1-based rank of the target (ranking variants), None when not ranked.
        rank_excluding_history: same, with the user's history items excluded from
            the ranking (``all_items`` with ``exclude_history``); None otherwise.
        rating: parsed rating prediction; None when unparseable (``rating``).
        correct: whether the yes/no answer was right (``yesno``).
        text: generated text (``rating``: the raw output; ``text``: the hypothesis).
    """

    family: str
    template_id: str
    seen: bool
    variant: str
    user: str
    target: str
    rank: int | None = None
    rank_excluding_history: int | None = None
    rating: float | None = None
    correct: bool | None = None
    text: str | None = None


@dataclass
class EvaluationResults:
    """Outcomes of one system (the model or a baseline) on a list of examples.

    Attributes:
        system: name of the system ("model", "popularity", ...).
        outcomes: one per evaluated example, in example order.
        ks: ranking cut-offs.
        exclude_history: whether ``rank_excluding_history`` was computed.
        rating_scale: (min, max) rating, used by the unparseable-rating rule.
    """

    system: str
    outcomes: list[ExampleOutcome] = field(default_factory=list)
    ks: tuple[int, ...] = (1, 5, 10)
    exclude_history: bool = False
    rating_scale: tuple[float, float] = (1.0, 5.0)

    def group_metrics(self, outcomes: Sequence[ExampleOutcome]) -> dict[str, float]:
        """Metrics of one group of outcomes, all of the same variant."""
        variants = {o.variant for o in outcomes}
        if len(variants) != 1:
            raise ValueError(f"a metric group must hold one variant, got {sorted(variants)}")
        variant = variants.pop()
        if variant in ("all_items", "candidates"):
            result = _ranking_metrics([o.rank for o in outcomes], self.ks, suffix="")
            if variant == "all_items" and self.exclude_history:
                ranks = [o.rank_excluding_history for o in outcomes]
                result |= _ranking_metrics(ranks, self.ks, suffix=" excl. history")
            return result
        if variant == "yesno":
            return {"accuracy": metrics.accuracy([bool(o.correct) for o in outcomes])}
        if variant == "rating":
            targets = [float(o.target) for o in outcomes]
            scores = metrics.rating_metrics(
                [o.rating for o in outcomes], targets, self.rating_scale
            )
            return {"RMSE": scores["rmse"], "MAE": scores["mae"]}
        hypotheses = [o.text or "" for o in outcomes]
        references = [o.target for o in outcomes]
        rouge = metrics.rouge(hypotheses, references)
        return {
            "BLEU-4": metrics.bleu4(hypotheses, references),
            "ROUGE-1": rouge["rouge1"],
            "ROUGE-2": rouge["rouge2"],
            "ROUGE-L": rouge["rougeL"],
        }

    def per_template(self) -> list[dict]:
        """One row per (family, variant, template): counts and metrics."""
        groups: dict[tuple[str, str, str], list[ExampleOutcome]] = {}
        for outcome in self.outcomes:
            key = (outcome.family, outcome.variant, outcome.template_id)
            groups.setdefault(key, []).append(outcome)
        rows = []
        for (family, variant, template_id), group in sorted(groups.items()):
            rows.append(
                {
                    "family": family,
                    "variant": variant,
                    "template_id": template_id,
                    "split": "seen" if group[0].seen else "unseen",
                    **self._counts_and_metrics(group),
                }
            )
        return rows

    def aggregated(self) -> list[dict]:
        """One row per (family, variant, split) for split in seen / unseen / all.

        A split without examples (e.g. no unseen template evaluated) has no row.
        """
        groups: dict[tuple[str, str], list[ExampleOutcome]] = {}
        for outcome in self.outcomes:
            groups.setdefault((outcome.family, outcome.variant), []).append(outcome)
        rows = []
        for (family, variant), group in sorted(groups.items()):
            for split in SPLITS:
                members = [o for o in group if split == "all" or o.seen == (split == "seen")]
                if not members:
                    continue
                rows.append(
                    {
                        "family": family,
                        "variant": variant,
                        "split": split,
                        "templates": sorted({o.template_id for o in members}),
                        **self._counts_and_metrics(members),
                    }
                )
        return rows

    def to_dict(self, include_outcomes: bool = False) -> dict:
        """JSON-ready summary; ``include_outcomes`` adds every per-example outcome."""
        summary = {
            "system": self.system,
            "count": len(self.outcomes),
            "per_template": self.per_template(),
            "aggregated": self.aggregated(),
        }
        if include_outcomes:
            summary["outcomes"] = [asdict(o) for o in self.outcomes]
        return summary

    def _counts_and_metrics(self, outcomes: Sequence[ExampleOutcome]) -> dict:
        unparseable = sum(1 for o in outcomes if o.variant == "rating" and o.rating is None)
        return {
            "count": len(outcomes),
            "unparseable": unparseable,
            "metrics": self.group_metrics(outcomes),
        }


def _ranking_metrics(
    ranks: Sequence[int | None], ks: Iterable[int], suffix: str
) -> dict[str, float]:
    result = {}
    for k in ks:
        result[f"HR@{k}{suffix}"] = metrics.hit_rate_at_k(ranks, k)
    # NDCG@1 equals HR@1 with one relevant item, so it is not reported twice.
    for k in ks:
        if k > 1:
            result[f"NDCG@{k}{suffix}"] = metrics.ndcg_at_k(ranks, k)
    return result


# ------------------------------------------------------------------------- evaluate


def evaluate(
    model: torch.nn.Module,
    tokenizer: GLMTokenizer,
    catalog: EntityCatalog,
    examples: Sequence[Example],
    *,
    families: Sequence[str] | None = None,
    batch_size: int = 16,
    num_beams: int = 20,
    ks: tuple[int, ...] = (1, 5, 10),
    max_length: int = 1024,
    max_new_tokens: int = 64,
    exclude_history: bool = False,
    rating_scale: tuple[float, float] = (1.0, 5.0),
    seed: int = 0,
    prompts: PromptSet | None = None,
    progress: bool = True,
) -> EvaluationResults:
    """Score a model on task examples, batched, with one outcome per example.

    Args:
        model: a GLM (optionally PEFT-wrapped), put in eval mode here.
        tokenizer: the checkpoint's tokenizer.
        catalog: the entity catalog the items come from (builds the item trie).
        examples: evaluation examples (pretraining documents are rejected).
        families: task families to keep (None: all families present).
        batch_size: prompts per forward/generation batch.
        num_beams: beams of the constrained item search; must be >= max(ks).
        ks: ranking cut-offs; HR@k for every k, NDCG@k for k > 1.
        max_length: prompt length budget (as in training; prompts are left-truncated).
        max_new_tokens: generation budget for text answers (ratings get at most
            RATING_MAX_NEW_TOKENS).
        exclude_history: also rank all items with the user's history excluded.
        rating_scale: (min, max) rating, for the unparseable-rating rule.
        seed: passed to text generation; decoding here is deterministic (beam search,
            exact scoring, greedy text), so it only matters to sampling strategies.
        prompts: the checkpoint's prompt set, for the answer words of yes/no templates
            (None: every yes/no template answers "yes" / "no").
        progress: show a tqdm bar over examples.

    Returns:
        The model's :class:`EvaluationResults` (``system="model"``).

    Raises:
        ValueError: a pretraining document, an example without target, a rating
            target that is not a number, or ``num_beams < max(ks)``; the message
            names the example.
    """
    if num_beams < max(ks):
        raise ValueError(f"num_beams ({num_beams}) must be >= max(ks) ({max(ks)})")
    selected = [e for e in examples if families is None or e.task in families]
    if not selected:
        raise ValueError(f"no examples to evaluate (families={families})")
    for example in selected:
        if example.target is None or example.answer_type is None:
            raise ValueError(f"{example.describe()}: not a task example (no target/answer type)")
        if example.answer_type == "rating":
            _parse_target_rating(example)

    model.eval()
    # Task examples involve no masking randomness; a [MASK]-only config keeps the
    # collator valid for tokenizers without [sMASK]/[gMASK] (wordpiece).
    prompt_builder = BlankInfillingCollator(
        tokenizer,
        max_length=max_length,
        masking=MaskingConfig(mask_prob=1.0, smask_prob=0.0, gmask_prob=0.0),
        packing=False,
    )
    item_trie = EntityTrie.from_catalog(catalog, tokenizer)
    # Free text (explanations, reviews) mentions attribute values and items: the full
    # entity trie gives its tokens the intra-positions training used.
    entity_trie = EntityTrie.from_catalog(catalog, tokenizer, items_only=False)
    results = EvaluationResults(
        system="model", ks=tuple(ks), exclude_history=exclude_history, rating_scale=rating_scale
    )
    by_variant: dict[str, list[int]] = {}
    for index, example in enumerate(selected):
        by_variant.setdefault(example_variant(example), []).append(index)

    outcomes: dict[int, ExampleOutcome] = {}
    bar = tqdm(total=len(selected), desc="evaluate", unit="example", disable=not progress)
    for variant in VARIANTS:
        indices = by_variant.get(variant, [])
        for start in range(0, len(indices), batch_size):
            batch_indices = indices[start : start + batch_size]
            batch = [selected[i] for i in batch_indices]
            tokenized = [tokenizer.tokenize_example(e) for e in batch]
            inputs = [prompt_builder.build_prompt(t) for t in tokenized]
            if variant == "all_items":
                fields = _rank_all_items(
                    model, tokenizer, inputs, batch, item_trie, num_beams, max(ks), exclude_history
                )
            elif variant == "candidates":
                fields = _rank_candidates(model, tokenizer, inputs, batch, item_trie)
            elif variant == "yesno":
                fields = _answer_yes_no(model, tokenizer, inputs, batch, tokenized, prompts)
            else:
                # A rating is a number and a few characters: a short budget saves most
                # of the decoding cost, and a longer answer is unparseable anyway.
                budget = (
                    min(max_new_tokens, RATING_MAX_NEW_TOKENS)
                    if variant == "rating"
                    else max_new_tokens
                )
                texts = generate_text(
                    model, inputs, tokenizer, budget, entity_trie=entity_trie, seed=seed
                )
                fields = [
                    {"rating": parse_rating(t), "text": t} if variant == "rating" else {"text": t}
                    for t in texts
                ]
            for index, example, values in zip(batch_indices, batch, fields, strict=True):
                outcomes[index] = _outcome(example, variant, **values)
            bar.update(len(batch))
    bar.close()
    results.outcomes = [outcomes[i] for i in range(len(selected))]
    return results


def _outcome(example: Example, variant: str, **fields: object) -> ExampleOutcome:
    return ExampleOutcome(
        family=example.task,
        template_id=example.template_id,
        seen=example.seen,
        variant=variant,
        user=example.user,
        target=example.target or "",
        **fields,
    )


def _parse_target_rating(example: Example) -> float:
    try:
        return float(example.target or "")
    except ValueError:
        raise ValueError(
            f"{example.describe()}: field 'target' {example.target!r} is not a number (rating example)"
        ) from None


def _rank_all_items(
    model: torch.nn.Module,
    tokenizer: GLMTokenizer,
    prompts: Sequence[PromptInputs],
    batch: Sequence[Example],
    item_trie: EntityTrie,
    num_beams: int,
    k: int,
    exclude_history: bool,
) -> list[dict]:
    """Constrained beam search over all items; with ``exclude_history`` a second search."""
    ranked = recommend_items(model, prompts, item_trie, k, num_beams=num_beams, tokenizer=tokenizer)
    fields = [
        {"rank": metrics.rank_of(e.target or "", [key for key, _ in items])}
        for e, items in zip(batch, ranked, strict=True)
    ]
    if exclude_history:
        # A separate search, not a filter of the first: excluded items must not use up beams.
        ranked = recommend_items(
            model,
            prompts,
            item_trie,
            k,
            num_beams=num_beams,
            exclude=[set(e.history) for e in batch],
            tokenizer=tokenizer,
        )
        for values, example, items in zip(fields, batch, ranked, strict=True):
            values["rank_excluding_history"] = metrics.rank_of(
                example.target or "", [key for key, _ in items]
            )
    return fields


def _rank_candidates(
    model: torch.nn.Module,
    tokenizer: GLMTokenizer,
    prompts: Sequence[PromptInputs],
    batch: Sequence[Example],
    item_trie: EntityTrie,
) -> list[dict]:
    """Exact log-likelihood of every candidate; the target's rank among them."""
    candidate_ids = []
    for example in batch:
        if example.target not in example.candidates:
            raise ValueError(
                f"{example.describe()}: target {example.target!r} is not among its candidates"
            )
        try:
            candidate_ids.append([item_trie.ids_of(key) for key in example.candidates])
        except KeyError as error:
            raise ValueError(f"{example.describe()}: candidate {error.args[0]}") from None
    scores = score_candidates(model, prompts, candidate_ids, tokenizer=tokenizer)
    fields = []
    for example, example_scores in zip(batch, scores, strict=True):
        target_score = example_scores[example.candidates.index(example.target)]
        # Pessimistic on ties: every other candidate scoring as high as the target ranks
        # before it, so a model that scores all candidates alike earns nothing.
        higher = sum(
            1
            for key, score in zip(example.candidates, example_scores, strict=True)
            if key != example.target and score >= target_score
        )
        fields.append({"rank": 1 + higher})
    return fields


def _answer_yes_no(
    model: torch.nn.Module,
    tokenizer: GLMTokenizer,
    prompts: Sequence[PromptInputs],
    batch: Sequence[Example],
    tokenized: Sequence[TokenizedExample],
    prompt_set: PromptSet | None,
) -> list[dict]:
    """Compare the log-likelihoods of the gold answer word and the opposite one.

    Both answers are tokenized exactly as training tokenizes the answer segment (the
    example itself, and a copy with the answer word swapped), so neither answer is
    favoured by a different whitespace convention. A tie counts as wrong.
    """
    pairs = []
    for example, tokens in zip(batch, tokenized, strict=True):
        words = ("yes", "no")
        if prompt_set is not None:
            words = prompt_set.get(example.template_id).answer_words or words
        opposite = tokenizer.tokenize_example(_swap_answer_word(example, words))
        pairs.append([_answer_ids(tokens), _answer_ids(opposite)])
    scores = score_candidates(model, prompts, pairs, tokenizer=tokenizer)
    return [{"correct": gold > other} for gold, other in scores]


def _answer_ids(tokenized: TokenizedExample) -> tuple[int, ...]:
    if tokenized.answer_span is None:
        raise ValueError(f"{tokenized.describe()}: no answer span")
    start, end = tokenized.answer_span
    return tuple(tokenized.input_ids[start:end])


def _swap_answer_word(example: Example, words: tuple[str, str]) -> Example:
    """The example with its answer segment's text replaced by the other answer word.

    Args:
        example: a yes/no example whose (one) answer segment holds one of ``words``
            (surrounding whitespace is kept).
        words: (positive, negative) answer words of its template.
    """
    answers = [i for i, segment in enumerate(example.segments) if segment.answer]
    if len(answers) != 1:
        raise ValueError(f"{example.describe()}: a yes/no example needs one answer segment")
    segment = example.segments[answers[0]]
    word = segment.text.strip()
    if word.lower() not in (w.lower() for w in words):
        raise ValueError(
            f"{example.describe()}: answer {segment.text!r} is none of the template's answer words {list(words)}"
        )
    other = words[1] if word.lower() == words[0].lower() else words[0]
    swapped = dataclasses.replace(segment, text=segment.text.replace(word, other))
    segments = (*example.segments[: answers[0]], swapped, *example.segments[answers[0] + 1 :])
    return dataclasses.replace(example, segments=segments)
