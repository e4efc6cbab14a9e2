"""Candidate scoring as plain causal text: the zero-shot row of an untrained decoder.

The harness scores 1-of-N candidates in RecSysLLM's blank-infilling layout
(:mod:`recsysllm.prompt_layout`): ``[CLS] left [MASK] right [eos]`` seen
bidirectionally, then ``[sop] candidate [eop]`` with every candidate token at the
mask's rotary position. A pretrained causal decoder that was never fine-tuned has
never seen that layout (for SmolLM2 the roles are unused ids such as
``<repo_name>``), so its scores there say little about its language prior.

:class:`PlainTextScorer` asks the untrained model the question it was pretrained on:
the example's text up to its answer (``... Recommendation:``), tokenized segment by
segment exactly as the harness does, read causally at positions ``0 .. P-1`` with no
special token, then each candidate title as its continuation (positions ``P ..``),
scored by the summed log-probability of the title's tokens (nothing after the title:
no ``[eop]``, no closing text). The prompt's cache is shared by the candidates: they
sit side by side in one row, each seeing the prompt and, causally, itself only.

:class:`PlainTextRanker` is an :class:`~recsysllm.evaluation.evaluator.ItemRanker`
over candidate examples, so ``evaluate_ranker`` gives it the harness's examples,
pessimistic ties, metrics and standard errors; two rankers over one scorer give the
summed and the per-token ("lennorm") rows from one pass.

Example::

    scorer = PlainTextScorer(model, tokenizer)
    rows = {name: evaluate_ranker(name, PlainTextRanker(scorer, norm), examples, protocol)
            for name, norm in (("plain text", False), ("plain text+lennorm", True))}
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from recsysllm.modeling.modeling_glm import CACHE_FIELD
from recsysllm.schema import Example


class PlainTextScorer:
    """Summed log-probability and token count of each candidate of each example, cached.

    Args:
        model: a model under the RecSysLLM forward contract (``position_ids`` [B, 2, L]
            with intra 0, a 4-D bool mask); evaluated with a causal mask only.
        tokenizer: the model's tokenizer (``tokenize_example``, ``encode_entity``).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Any) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        # id(example) -> (example kept alive, per candidate (sum of log p, tokens))
        self._scores: dict[int, tuple[Example, list[tuple[float, int]]]] = {}

    def prompt_ids(self, example: Example) -> list[int]:
        """The example's tokens before its answer (never the answer's own tokens)."""
        if not example.candidates:
            raise ValueError(f"{example.describe()}: plain-text scoring ranks 1-of-N candidates")
        tokenized = self.tokenizer.tokenize_example(example)
        if tokenized.answer_span is None or tokenized.answer_span[0] == 0:
            raise ValueError(f"{example.describe()}: no text before the answer to condition on")
        return list(tokenized.input_ids[: tokenized.answer_span[0]])

    def scores(self, example: Example) -> list[tuple[float, int]]:
        """(sum of log p(title tokens | prompt), number of title tokens) per candidate."""
        known = self._scores.get(id(example))
        if known is None or known[0] is not example:
            candidates = [self.tokenizer.encode_entity(key) for key in example.candidates]
            with torch.inference_mode():
                sums = self._score(self.prompt_ids(example), candidates)
            known = (example, [(s, len(c)) for s, c in zip(sums, candidates, strict=True)])
            self._scores[id(example)] = known
        return known[1]

    def _score(self, prompt: list[int], candidates: Sequence[tuple[int, ...]]) -> list[float]:
        length = len(prompt)
        limit = getattr(self.model.config, "max_position_embeddings", None)
        longest = max(len(c) for c in candidates)
        if limit is not None and length + longest > limit:
            raise ValueError(
                f"plain-text prompt of {length} tokens + a candidate of {longest} exceeds the "
                f"model's {limit} positions"
            )
        ids = torch.tensor([prompt], device=self.device)
        positions = torch.arange(length, device=self.device)
        position_ids = torch.stack([positions, torch.zeros_like(positions)])[None]  # [1, 2, P]
        causal = torch.ones(length, length, dtype=torch.bool, device=self.device).tril()
        output = self.model(
            input_ids=ids,
            position_ids=position_ids,
            attention_mask=causal[None, None],
            cache=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        # Every candidate's first token is predicted by the prompt's last position.
        first = torch.log_softmax(output.logits[0, -1].float(), -1)
        sums = [float(first[c[0]]) for c in candidates]
        # The rest: one row of [c_1 .. c_{n-1}] blocks side by side, each block at
        # positions P .. P+n-2, seeing the prompt and, causally, its own block only.
        blocks = [(i, c) for i, c in enumerate(candidates) if len(c) > 1]
        if not blocks:
            return sums
        inputs = np.concatenate([c[:-1] for _, c in blocks])
        targets = np.concatenate([c[1:] for _, c in blocks])
        block_of = np.repeat(np.arange(len(blocks)), [len(c) - 1 for _, c in blocks])
        starts = np.r_[0, np.cumsum([len(c) - 1 for _, c in blocks])[:-1]]
        within = np.arange(len(inputs)) - starts[block_of]
        width = len(inputs)
        block = torch.from_numpy(block_of).to(self.device)
        same = (block[:, None] == block[None, :]) & torch.ones(
            width, width, dtype=torch.bool, device=self.device
        ).tril()
        mask = torch.cat([torch.ones(width, length, dtype=torch.bool, device=self.device), same], 1)
        rotary = torch.from_numpy(length + within).to(self.device)
        output = self.model(
            input_ids=torch.from_numpy(inputs).to(self.device)[None],
            position_ids=torch.stack([rotary, torch.zeros_like(rotary)])[None],  # [1, 2, T]
            attention_mask=mask[None, None],  # [1, 1, T, P + T]
            cache=getattr(output, CACHE_FIELD),
            use_cache=True,
        )
        logits = output.logits[0].float()  # [T, V]
        target = torch.from_numpy(targets).to(self.device)
        token_log_probs = logits.gather(1, target[:, None])[:, 0] - logits.logsumexp(-1)
        rest = torch.zeros(len(blocks), device=self.device).index_add_(0, block, token_log_probs)
        for (index, _), value in zip(blocks, rest.tolist(), strict=True):
            sums[index] += value
        return sums


class PlainTextRanker:
    """:class:`PlainTextScorer` as an ItemRanker over 1-of-N candidate examples.

    Args:
        scorer: the shared scorer (its cache serves every ranker over it).
        length_normalize: rank by log-probability per title token instead of the sum.
    """

    def __init__(self, scorer: PlainTextScorer, length_normalize: bool = False) -> None:
        self.scorer = scorer
        self.length_normalize = length_normalize

    def rank_all(self, examples, exclude, k):
        raise ValueError("plain-text scoring ranks 1-of-N candidates only, not all items")

    def score_candidates(self, examples: Sequence[Example]) -> list[list[float]]:
        out = []
        for example in examples:
            pairs = self.scorer.scores(example)
            out.append([s / n if self.length_normalize else s for s, n in pairs])
        return out
