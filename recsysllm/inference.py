"""Per-family answering of task examples, shared by the evaluator and ``api.Recommender``.

One :class:`Inference` holds a model, its tokenizer and catalog, the training
sequence length and answer budget (so prompts are the Part A training built, see
:mod:`recsysllm.prompt_layout`), and the entity tries (built once per
(tokenizer, catalog) by ``EntityTrie.from_catalog``, which caches them). Each
family's decoding is one method:

| answer          | method               | decoding                                             |
|-----------------|----------------------|------------------------------------------------------|
| item, all items | :meth:`rank_items`   | trie-constrained beams, steps <= longest item + 1    |
| item, 1-of-N    | :meth:`score_items`  | exact log-likelihood of each candidate               |
| yes / no        | :meth:`yes_no_scores`| log-likelihood of the two answer words               |
| rating          | :meth:`ratings`      | greedy, RATING_MAX_NEW_TOKENS, then ``parse_rating`` |
| free text       | :meth:`texts`        | greedy (entity trie for intra-positions)             |

Example::

    inference = Inference(model, tokenizer, catalog, max_length=1024,
                          answer_budget=AnswerBudget.for_catalog(catalog, tokenizer))
    prompts = inference.prompts(examples)
    ranked = inference.rank_items(prompts, k=10, num_beams=20)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from typing import Any

import torch

from recsysllm import generation
from recsysllm.config import RENORMALIZE_VARIANTS
from recsysllm.data.catalog import EntityCatalog
from recsysllm.data.tasks import render_example
from recsysllm.prompt_layout import (
    SHORT_ANSWER_TOKENS,
    AnswerBudget,
    PromptInputs,
    SpecialTokenIds,
    build_prompt,
)
from recsysllm.prompts import PromptTemplate
from recsysllm.schema import Example, TokenizedExample
from recsysllm.trie import EntityTrie

# A rating is a number and a few characters: the short-answer budget prompts reserve.
RATING_MAX_NEW_TOKENS = SHORT_ANSWER_TOKENS
DEFAULT_YES_NO_WORDS = ("yes", "no")


class Inference:
    """A model ready to answer task examples of every family.

    Args:
        model: a GLM (LoRA merged or PEFT-wrapped); put in eval mode here.
        tokenizer: the checkpoint's GLMTokenizer.
        catalog: the checkpoint's entity catalog.
        max_length: the training sequence length (prompts are truncated as in training).
        answer_budget: the training answer budget (``pipeline.answer_budget``).
        renormalize: where item scores renormalise each token's probability over the
            tokens the constraint allows after the prefix (``eval.renormalize``;
            ``generation`` docstring): "all_items" (the item trie, minus excluded
            items, in :meth:`rank_items`) and/or "candidates" (the prompt's list, in
            :meth:`score_items`).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        catalog: EntityCatalog,
        *,
        max_length: int,
        answer_budget: AnswerBudget,
        renormalize: Collection[str] = (),
    ) -> None:
        unknown = set(renormalize) - set(RENORMALIZE_VARIANTS)
        if unknown:
            raise ValueError(
                f"renormalize: unknown {sorted(unknown)}; known {RENORMALIZE_VARIANTS}"
            )
        self.model = model.eval()
        self.renormalize = frozenset(renormalize)
        self.tokenizer = tokenizer
        self.catalog = catalog
        self.max_length = max_length
        self.answer_budget = answer_budget
        self.special = SpecialTokenIds.from_tokenizer(tokenizer)
        self.item_trie = EntityTrie.from_catalog(catalog, tokenizer)
        # Free text mentions attribute values and items: the full entity trie gives its
        # tokens the intra-positions training used.
        self.entity_trie = EntityTrie.from_catalog(catalog, tokenizer, items_only=False)

    # ----------------------------------------------------------------- prompts

    def prompt(self, example: Example | TokenizedExample) -> PromptInputs:
        """Part A of one task example (its answer tokens are never read)."""
        tokenized = (
            example
            if isinstance(example, TokenizedExample)
            else self.tokenizer.tokenize_example(example)
        )
        return build_prompt(tokenized, self.special, self.answer_budget, self.max_length)

    def prompts(self, examples: Sequence[Example | TokenizedExample]) -> list[PromptInputs]:
        return [self.prompt(example) for example in examples]

    # ----------------------------------------------------------------- families

    def rank_items(
        self,
        prompts: Sequence[PromptInputs],
        k: int,
        num_beams: int,
        exclude: Sequence[set[str] | frozenset[str]] | None = None,
        length_normalize: bool = False,
        prior: generation.ItemPrior | None = None,
    ) -> list[list[tuple[str, float]]]:
        """Top-k distinct catalog items per prompt (constrained beams), best first.

        ``length_normalize`` ranks (and scores) by log-probability / tokens (+ [eop]):
        the ablation; off by default, as D3 found it hurts item generation. ``prior``
        (e.g. SASRec's log-softmax) guides the search and the ranking: (1 - w) *
        log-probability + w * log prior (``generation.ItemPrior``).
        """
        return generation.recommend_items(
            self.model,
            prompts,
            self.item_trie,
            k,
            num_beams=max(k, num_beams),
            exclude=exclude,
            length_normalize=length_normalize,
            tokenizer=self.tokenizer,
            renormalize="all_items" in self.renormalize,
            prior=prior,
        )

    def score_items(
        self,
        prompts: Sequence[PromptInputs],
        candidates: Sequence[Sequence[str]],
        length_normalize: bool = False,
    ) -> list[list[float]]:
        """Log-likelihood of each candidate item of each prompt, in the given order
        (per token, [eop] included, with ``length_normalize``)."""
        ids = []
        for index, keys in enumerate(candidates):
            try:
                ids.append([self.item_trie.ids_of(key) for key in keys])
            except KeyError as error:
                raise ValueError(f"prompt {index}: candidate {error.args[0]}") from None
        return generation.score_candidates(
            self.model,
            prompts,
            ids,
            length_normalize=length_normalize,
            tokenizer=self.tokenizer,
            renormalize="candidates" in self.renormalize,
        )

    def yes_no_scores(
        self,
        prompts: Sequence[PromptInputs],
        examples: Sequence[Example],
        words: Sequence[tuple[str, str]],
    ) -> list[tuple[float, float]]:
        """(log p(positive word), log p(negative word)) per example.

        Both words are tokenized as training tokenizes the answer segment (the example
        with its answer set to each word), so neither is favoured by whitespace.
        """
        pairs = []
        for example, (positive, negative) in zip(examples, words, strict=True):
            pairs.append(
                [
                    self._answer_ids(_with_answer_word(example, positive)),
                    self._answer_ids(_with_answer_word(example, negative)),
                ]
            )
        scores = generation.score_candidates(self.model, prompts, pairs, tokenizer=self.tokenizer)
        return [(positive, negative) for positive, negative in scores]

    def ratings(self, prompts: Sequence[PromptInputs]) -> list[tuple[str, float | None]]:
        """(generated text, parsed number or None) per prompt."""
        texts = self.texts(prompts, RATING_MAX_NEW_TOKENS)
        return [(text, generation.parse_rating(text)) for text in texts]

    def texts(
        self, prompts: Sequence[PromptInputs], max_new_tokens: int, seed: int = 0
    ) -> list[str]:
        """Greedy free text per prompt."""
        return generation.generate_text(
            self.model,
            prompts,
            self.tokenizer,
            max_new_tokens,
            entity_trie=self.entity_trie,
            seed=seed,
        )

    def _answer_ids(self, example: Example) -> tuple[int, ...]:
        tokenized = self.tokenizer.tokenize_example(example)
        start, end = tokenized.answer_span
        return tuple(tokenized.input_ids[start:end])


def user_free_example(
    example: Example, template: PromptTemplate, catalog: EntityCatalog
) -> Example:
    """The example's template rendered without its user: no profile, an empty history
    (EMPTY_HISTORY_TEXT), the same candidates (1-of-N prompts), no answer.

    log p(item | this prompt) is the template's prior of the item, for prior-corrected
    (PMI / contextual calibration) scores: log p(item | prompt) - alpha * prior.
    All-item templates give one such prompt per template; candidate templates one per
    (template, candidate list).

    Raises:
        ValueError: the template needs a value a ranking example does not carry (an
            {item}, {hint} or {review}); the message names the template.
    """
    return render_example(
        template,
        catalog,
        user=example.user,
        user_features={},
        feature_templates={},
        history=(),
        candidates=example.candidates,
        target=None,
    )


def _with_answer_word(example: Example, word: str) -> Example:
    """The example with its (one) answer segment's word replaced by ``word``."""
    answers = [i for i, segment in enumerate(example.segments) if segment.answer]
    if len(answers) != 1:
        raise ValueError(f"{example.describe()}: a yes/no example needs one answer segment")
    segment = example.segments[answers[0]]
    current = segment.text.strip()
    swapped = dataclasses.replace(segment, text=segment.text.replace(current, word))
    segments = (*example.segments[: answers[0]], swapped, *example.segments[answers[0] + 1 :])
    return dataclasses.replace(example, segments=segments)
