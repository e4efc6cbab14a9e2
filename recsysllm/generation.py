"""KV-cached blank-infilling decoding with dynamic intra-positions (DESIGN.md section 5).

Everything here fills the one mask of a prompt built by
``recsysllm.prompt_layout.build_prompt`` (its Part A), the way GLM fills a blank:

- the prompts of a batch are right-padded to one length P; padded keys are seen
  by nobody;
- ``[sop]`` is appended at column P with inter = the mask's position and intra 1,
  and the Part A and ``[sop]`` go through the model in one pass (``use_cache``);
- each generated token then goes through the model alone, reusing the cache: its
  position ids are (mask position, intra from :class:`IntraPositionTracker`), its
  mask row is the sequence's non-padded Part A keys plus its own earlier
  generated keys (``[rows, 1, 1, K]`` bool, True = may attend);
- decoding stops on ``[eop]`` or after ``max_new_tokens``; special tokens other
  than ``[eop]``, the tokenizer's ``banned_generation_ids`` and embedding rows past
  its vocabulary are never generated.

The intra-position of each generated token comes from the tracker fed with the
:class:`TokenKind` that the entity trie assigns (:meth:`EntityTrie.step`), exactly
as the collator numbers the same tokens in training. Without a trie every token is
plain text, which keeps GLM's 1, 2, 3, ...

Scores are log-probabilities under the model's full softmax (float32), also
under constraints: a constraint decides which continuations are explored, not how
they are scored. So the score ``recommend_items`` gives an item equals
``score_candidates`` for the same item, and both equal the item's likelihood under
uncached teacher forcing. With ``renormalize=True`` each token's probability is
instead renormalised over the tokens the constraint allows after that prefix (the
children of the trie node, and [eop] where an allowed item ends): the item trie
minus excluded items for ``recommend_items``, the prompt's own candidate list for
``score_candidates``. Scores are then a distribution over the allowed answers (they
sum to 1): probability the model puts on tokens no answer continues with is not
charged to the answers, so a title is not penalised for its length once its prefix
names it. ``score_candidates`` over every eligible item equals ``recommend_items``'
score for the same item in that mode too.

Item decoding runs on the device: ``recommend_items`` walks the item trie as static
CSR tensors (:meth:`EntityTrie.tensors`, STATIC-style), so the constraint mask, beam
bookkeeping and positions are tensor ops with one host sync per step, and a prompt's
beams share its cached Part A (no per-beam cache copies); ``decoder="reference"``
keeps the per-beam Python search it is tested against (same items and order, scores
equal to float32 rounding).

Public entry points: :func:`recommend_items` (trie-constrained beams, top-k
distinct items), :func:`score_candidates` (exact log-likelihood of given answers),
:func:`generate_ids` / :func:`generate_text` (greedy, sampling, beam search) and
:func:`parse_rating`.
"""

from __future__ import annotations

import copy
import heapq
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from recsysllm.modeling.modeling_glm import CACHE_FIELD
from recsysllm.positions import IntraPositionTracker, TokenKind
from recsysllm.prompt_layout import SpecialTokenIds
from recsysllm.trie import EntityTrie, TrieTensors, allowed_next_tokens, pad_token_sets

STRATEGIES = ("greedy", "sample", "beam")
# recommend_items / score_candidates: "static" (tensorized trie, the default) or
# "reference" (per-beam Python over the pygtrie trie; kept to test "static" against).
DECODERS = ("static", "reference")


@dataclass(frozen=True, eq=False)  # a tensor field: identity, not elementwise ==
class ItemPrior:
    """A text-free model's item distribution per prompt, to guide the item search (D3).

    With a prior, :func:`recommend_items` ranks items by the fusion score

        (1 - weight) * log p_LM(item | prompt) + weight * log p_prior(item)

    and searches under it: a beam at trie node ``u`` scores ``(1 - weight) * log
    p_LM(prefix) + weight * log M(u)``, where ``M(u)`` is the prior mass of the
    eligible items at or below ``u``. Down a path the prior terms telescope, so a
    finished item scores exactly its fusion score, while the beams prefer prefixes
    the prior likes (D3's text-free assistant, summed over each trie prefix). Prefixes
    without mass (every item below excluded or at prior probability 0) are pruned.

    Attributes:
        keys: item key of each column of ``log_probs`` (must cover the trie's items;
            keys that are no item are ignored).
        log_probs: [prompts, len(keys)] log-probabilities (e.g. SASRec's log-softmax
            over the catalog); -inf: never recommend.
        weight: in [0, 1]; 0 is the language model alone, 1 the prior alone.
    """

    keys: Sequence[str]
    log_probs: torch.Tensor
    weight: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ValueError(f"prior weight must be in [0, 1], got {self.weight}")
        if self.log_probs.dim() != 2 or self.log_probs.shape[1] != len(self.keys):
            raise ValueError(
                f"prior log_probs must be [prompts, {len(self.keys)} keys], "
                f"got {list(self.log_probs.shape)}"
            )
        if torch.isnan(self.log_probs).any() or (self.log_probs == math.inf).any():
            raise ValueError("prior log_probs hold NaN or +inf")


@dataclass
class _Row:
    """Decoding state of one sequence (one prompt, or one beam of a prompt)."""

    tracker: IntraPositionTracker
    tokens: tuple[int, ...] = ()  # generated tokens, [sop] and [eop] excluded
    entity_prefix: tuple[int, ...] = ()  # ids of the entity being generated, () if none
    intra: int = 1  # intra-position of the row's last input token ([sop]: 1)

    def advance(self, token: int, trie: EntityTrie | None) -> _Row:
        """The state after generating ``token`` (a new object: beams share parents)."""
        kind, prefix = trie.step(self.entity_prefix, token) if trie else (TokenKind.PLAIN, ())
        tracker = copy.copy(self.tracker)
        intra = tracker.step(kind)
        return _Row(tracker, (*self.tokens, token), prefix, intra)


@dataclass
class _Hypotheses:
    """The best ``size`` finished sequences of one prompt (a min-heap on score)."""

    size: int
    heap: list[tuple[float, int, tuple[int, ...]]] = field(default_factory=list)
    added: int = 0

    def add(self, rank_score: float, tokens: tuple[int, ...]) -> None:
        # The insertion count breaks score ties (first found wins): tuples are never compared.
        self.added += 1
        item = (rank_score, -self.added, tokens)
        if len(self.heap) < self.size:
            heapq.heappush(self.heap, item)
        elif rank_score > self.heap[0][0]:
            heapq.heapreplace(self.heap, item)

    def full(self) -> bool:
        return len(self.heap) >= self.size

    def worst(self) -> float:
        return self.heap[0][0]

    def best_first(self) -> list[tuple[tuple[int, ...], float]]:
        return [(tokens, rank_score) for rank_score, _, tokens in sorted(self.heap, reverse=True)]


class _ItemConstraint:
    """Which tokens may follow a prefix when the answer must be one eligible item.

    A prefix is allowed only while its subtree holds an item that is not excluded,
    so every live beam can still end in an eligible item (the guarantee behind the
    default ``num_beams = k``); ``[eop]`` only at a whole eligible item.
    """

    def __init__(self, trie: EntityTrie, excluded: set[str]) -> None:
        self.trie = trie
        self.excluded = excluded
        excluded_below: dict[tuple[int, ...], int] = {}
        for key in excluded:
            if key not in trie:
                continue  # an excluded key that is no item cannot be generated anyway
            ids = trie.ids_of(key)
            for length in range(1, len(ids) + 1):
                excluded_below[ids[:length]] = excluded_below.get(ids[:length], 0) + 1
        # prefix -> next tokens whose whole subtree is excluded
        self.blocked: dict[tuple[int, ...], list[int]] = {}
        for prefix, count in excluded_below.items():
            if count == trie.subtree_size(prefix):
                self.blocked.setdefault(prefix[:-1], []).append(prefix[-1])

    def allowed_next(self, prefix: tuple[int, ...]) -> np.ndarray:
        allowed = self.trie.allowed_next(prefix)
        blocked = self.blocked.get(prefix)
        return allowed[~np.isin(allowed, blocked)] if blocked else allowed

    def may_end(self, prefix: tuple[int, ...]) -> bool:
        return any(key not in self.excluded for key in self.trie.keys_at(prefix))


class _Decoder:
    """The model, its KV cache and the key mask of the rows being decoded."""

    def __init__(self, model: Any, prompts: Sequence[Any], sop_token_id: int) -> None:
        if not prompts:
            raise ValueError("no prompts to decode")
        self.model = model
        self.device = next(model.parameters()).device
        self.mask_inter = torch.tensor([int(p.mask_inter) for p in prompts], device=self.device)
        self.sop_token_id = sop_token_id
        self.input_ids, self.position_ids, self.key_valid = _pad_prompts(prompts, self.device)
        self.cache: DynamicCache | None = None

    def prompt_pass(self, with_sop: bool) -> torch.Tensor | None:
        """Runs Part A (and [sop]) through the model; returns [N, V] next-token logits."""
        input_ids, position_ids, key_valid = self.input_ids, self.position_ids, self.key_valid
        num_prompts, length = input_ids.shape
        if with_sop:
            sop = torch.full((num_prompts, 1), self.sop_token_id, device=self.device)
            sop_positions = torch.stack([self.mask_inter, torch.ones_like(self.mask_inter)], 1)
            input_ids = torch.cat([input_ids, sop], 1)
            position_ids = torch.cat([position_ids, sop_positions[:, :, None]], 2)
            key_valid = torch.cat([key_valid, torch.ones_like(key_valid[:, :1])], 1)
        # [N, 1, q, K]: Part A rows see all non-padded Part A keys (bidirectional), padded
        # rows too (their outputs are unused; a fully masked row would risk NaN in
        # another implementation); only the [sop] row sees [sop].
        mask = key_valid[:, None, None, :].repeat(1, 1, input_ids.shape[1], 1)
        if with_sop:
            mask[:, :, :length, length] = False
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=mask,
            cache=DynamicCache(),
            use_cache=True,
            logits_to_keep=1,
        )
        self.cache, self.key_valid = getattr(output, CACHE_FIELD), key_valid
        return output.logits[:, -1].float() if with_sop else None

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keeps (and reorders, repeats) cache rows: beam reorder, finished rows dropped."""
        self.cache.reorder_cache(rows)
        self.key_valid = self.key_valid.index_select(0, rows)
        self.mask_inter = self.mask_inter.index_select(0, rows)

    def step(self, tokens: Sequence[int], intra: Sequence[int]) -> torch.Tensor:
        """Feeds one token per row; returns [rows, V] float32 next-token logits."""
        input_ids = torch.tensor(tokens, device=self.device)[:, None]  # [rows, 1]
        intra_ids = torch.tensor(intra, device=self.device)
        position_ids = torch.stack([self.mask_inter, intra_ids], 1)[:, :, None]  # [rows, 2, 1]
        self.key_valid = torch.cat([self.key_valid, torch.ones_like(self.key_valid[:, :1])], 1)
        output = self.model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=self.key_valid[:, None, None, :],  # [rows, 1, 1, K]
            cache=self.cache,
            use_cache=True,
        )
        self.cache = getattr(output, CACHE_FIELD)
        return output.logits[:, -1].float()


def _pad_prompts(
    prompts: Sequence[Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pads Part As: input ids [N, P], position ids [N, 2, P], key_valid [N, P]."""
    lengths = []
    for index, prompt in enumerate(prompts):
        length = len(prompt.input_ids)
        if length == 0 or len(prompt.inter) != length or len(prompt.intra) != length:
            raise ValueError(
                f"prompt {index}: input_ids ({length}), inter ({len(prompt.inter)}) and "
                f"intra ({len(prompt.intra)}) must have the same non-zero length"
            )
        lengths.append(length)
    size = max(lengths)
    input_ids = torch.zeros(len(prompts), size, dtype=torch.long)
    position_ids = torch.zeros(len(prompts), 2, size, dtype=torch.long)
    key_valid = torch.zeros(len(prompts), size, dtype=torch.bool)
    for index, (prompt, length) in enumerate(zip(prompts, lengths, strict=True)):
        input_ids[index, :length] = torch.as_tensor(prompt.input_ids)
        position_ids[index, 0, :length] = torch.as_tensor(prompt.inter)
        position_ids[index, 1, :length] = torch.as_tensor(prompt.intra)
        key_valid[index, :length] = True
    return input_ids.to(device), position_ids.to(device), key_valid.to(device)


def _banned_ids(tokenizer: Any, vocab_rows: int) -> list[int]:
    """Ids free generation never emits: every special token but [eop], the tokenizer's
    ``banned_generation_ids``, and embedding rows past the vocabulary (padding rows)."""
    special = SpecialTokenIds.from_tokenizer(tokenizer)
    banned = {special.cls, special.eos, special.pad, special.mask, special.smask, special.gmask}
    banned |= {
        special.sop,
        *tokenizer.banned_generation_ids,
        *range(tokenizer.vocab_size, vocab_rows),
    }
    banned -= {None, special.eop}
    return sorted(banned)


def _ban(logits: torch.Tensor, banned_ids: Sequence[int]) -> torch.Tensor:
    if banned_ids:
        logits[:, list(banned_ids)] = -math.inf
    return logits


def _sample(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator
) -> torch.Tensor:
    """One token per row from [rows, V] logits (banned ids already at -inf)."""
    logits = logits / temperature
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, -math.inf)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already cover top_p (the first always stays).
        drop = probs.cumsum(-1) - probs >= top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, -math.inf))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def _greedy_or_sample(
    decoder: _Decoder,
    eop_token_id: int,
    banned_ids: Sequence[int],
    max_new_tokens: int,
    entity_trie: EntityTrie | None,
    sample: bool,
    temperature: float,
    top_k: int,
    top_p: float,
    seed: int,
) -> list[list[int]]:
    logits = decoder.prompt_pass(with_sop=True)
    num_prompts = logits.shape[0]
    generator = torch.Generator(device=decoder.device).manual_seed(seed) if sample else None
    rows: list[_Row] = []
    for _ in range(num_prompts):
        tracker = IntraPositionTracker()
        rows.append(_Row(tracker, intra=tracker.start()))
    active = list(range(num_prompts))  # prompt index of each cache row
    for step in range(max_new_tokens):
        logits = _ban(logits, banned_ids)
        if sample:
            next_tokens = _sample(logits, temperature, top_k, top_p, generator).tolist()
        else:
            next_tokens = logits.argmax(-1).tolist()
        keep = []
        for position, (prompt, token) in enumerate(zip(active, next_tokens, strict=True)):
            if token == eop_token_id:
                continue
            rows[prompt] = rows[prompt].advance(token, entity_trie)
            keep.append(position)
        if not keep or step == max_new_tokens - 1:
            break
        if len(keep) < len(active):
            decoder.select_rows(torch.tensor(keep, device=decoder.device))
            active = [active[position] for position in keep]
        logits = decoder.step([rows[p].tokens[-1] for p in active], [rows[p].intra for p in active])
    return [list(row.tokens) for row in rows]


def _beam_search(
    decoder: _Decoder,
    eop_token_id: int,
    num_beams: int,
    num_return: int,
    max_new_tokens: int,
    length_normalize: bool,
    constraints: Sequence[_ItemConstraint] | None,
    banned_ids: Sequence[int],
    entity_trie: EntityTrie | None,
    renormalize: bool = False,
) -> list[list[tuple[tuple[int, ...], float]]]:
    """Batched beam search; per prompt the best ``num_return`` finished sequences.

    Every beam that may emit [eop] is finished at each step (not only those whose
    [eop] ranks in the top beams), and the live beams are the best ``num_beams``
    non-[eop] extensions. Without length normalisation a prompt stops as soon as it
    has ``num_return`` finished sequences and no live beam scores above the worst
    of them (scores only fall as tokens are added, so that ranking is exact for
    what the beams explored); with it, HF's heuristic (best live score / (length+1)).
    Unconstrained sequences still open at ``max_new_tokens`` count as finished;
    constrained ones are no item and are dropped.
    """
    first_logits = decoder.prompt_pass(with_sop=True)
    num_prompts, vocab_size = first_logits.shape
    device = decoder.device
    # Every prompt starts with num_beams copies of [sop]; only the first is live.
    decoder.select_rows(torch.arange(num_prompts, device=device).repeat_interleave(num_beams))
    logits = first_logits.repeat_interleave(num_beams, 0)
    beam_scores = torch.full((num_prompts, num_beams), -math.inf, device=device)
    beam_scores[:, 0] = 0.0
    rows: list[_Row] = []
    for _ in range(num_prompts * num_beams):
        tracker = IntraPositionTracker()
        rows.append(_Row(tracker, intra=tracker.start()))
    active = list(range(num_prompts))  # prompt index of each group of num_beams rows
    finished = [_Hypotheses(num_return) for _ in range(num_prompts)]

    def rank(log_prob: float, length: int) -> float:
        return log_prob / length if length_normalize else log_prob

    for step in range(max_new_tokens):
        log_probs = torch.log_softmax(logits, -1)  # [A * beams, V]
        live = torch.isfinite(beam_scores).view(-1).tolist()
        if constraints is None:
            allowed = torch.ones(vocab_size, dtype=torch.bool, device=device)
            allowed[list(banned_ids)] = False
            allowed = allowed.expand_as(log_probs)
        else:
            allowed_rows, allowed_ids = [], []
            may_end = torch.zeros(len(rows), dtype=torch.bool)
            for index, row in enumerate(rows):
                if not live[index]:
                    continue
                constraint = constraints[active[index // num_beams]]
                ids = constraint.allowed_next(row.tokens)
                allowed_rows.append(np.full(len(ids), index))
                allowed_ids.append(ids)
                may_end[index] = constraint.may_end(row.tokens)
            allowed = torch.zeros_like(log_probs, dtype=torch.bool)
            if allowed_rows:
                allowed[
                    torch.from_numpy(np.concatenate(allowed_rows)).to(device),
                    torch.from_numpy(np.concatenate(allowed_ids)).to(device),
                ] = True
            allowed[:, eop_token_id] = may_end.to(device)
            if renormalize:
                log_probs = _renormalized(log_probs, allowed)
        # [A * beams, V]; dead beams have score -inf, so all their extensions too
        scores = torch.where(allowed, log_probs + beam_scores.view(-1, 1), -math.inf)
        eop_scores = scores[:, eop_token_id].tolist()
        for index, score in enumerate(eop_scores):
            if score > -math.inf:
                tokens = rows[index].tokens
                finished[active[index // num_beams]].add(rank(score, len(tokens) + 1), tokens)
        scores[:, eop_token_id] = -math.inf
        top_scores, top_ids = scores.view(len(active), -1).topk(num_beams, dim=1)  # [A, beams]
        top_scores_list = top_scores.tolist()
        last_step = step == max_new_tokens - 1
        keep_groups = []
        for group, prompt in enumerate(active):
            best_live = top_scores_list[group][0]
            hypotheses = finished[prompt]
            if best_live == -math.inf:
                continue
            if last_step:
                if constraints is None:
                    for beam, score in enumerate(top_scores_list[group]):
                        if score > -math.inf:
                            source = group * num_beams + int(top_ids[group, beam]) // vocab_size
                            token = int(top_ids[group, beam]) % vocab_size
                            sequence = (*rows[source].tokens, token)
                            hypotheses.add(rank(score, len(sequence)), sequence)
                continue
            if hypotheses.full():
                bound = rank(best_live, step + 2) if length_normalize else best_live
                if bound <= hypotheses.worst():
                    continue
            keep_groups.append(group)
        if not keep_groups:
            break
        keep = torch.tensor(keep_groups, device=device)
        top_ids = top_ids.index_select(0, keep)
        beam_scores = top_scores.index_select(0, keep)
        source_rows = (keep[:, None] * num_beams + top_ids // vocab_size).view(-1)
        next_tokens = (top_ids % vocab_size).view(-1).tolist()
        source_list = source_rows.tolist()
        rows = [
            rows[source].advance(token, entity_trie)
            for source, token in zip(source_list, next_tokens, strict=True)
        ]
        active = [active[group] for group in keep_groups]
        decoder.select_rows(source_rows)
        logits = decoder.step([row.tokens[-1] for row in rows], [row.intra for row in rows])
    return [hypotheses.best_first() for hypotheses in finished]


def _finite_or_zero(normalizer: torch.Tensor) -> torch.Tensor:
    """A row with nothing allowed (a dead beam) keeps its scores (all -inf anyway)."""
    return torch.where(torch.isfinite(normalizer), normalizer, torch.zeros_like(normalizer))


def _renormalized(log_probs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """``log_probs`` [rows, V] renormalised over each row's ``allowed`` tokens."""
    normalizer = log_probs.masked_fill(~allowed, -math.inf).logsumexp(-1, keepdim=True)
    return log_probs - _finite_or_zero(normalizer)


def _static_item_search(
    decoder: _Decoder,
    eop_token_id: int,
    num_beams: int,
    num_return: int,
    max_new_tokens: int,
    length_normalize: bool,
    trie: TrieTensors,
    exclude: Sequence[set[str]] | None,
    renormalize: bool = False,
    prior: ItemPrior | None = None,
) -> list[list[tuple[int, float]]]:
    """:func:`_beam_search` with item constraints, as tensor ops on the model's device.

    The same search (the same scores up to float32 rounding, the same ``topk`` over
    beams x vocabulary, the same finishing and stopping rules), so the same items in
    the same order; per step the only host work is the loop and one "does any prompt
    go on" read. A beam is a trie node: its allowed tokens are the node's CSR
    children minus those whose subtree holds only excluded items (a per-prompt
    ``blocked`` node mask), [eop] is allowed where an item not excluded ends, and the
    next node and its intra-position are gathered from the trie tensors. Finished
    items are a per-prompt ``[num_return]`` table kept sorted by (score desc,
    insertion order), the order ``_Hypotheses`` keeps; rank scores are float64 as there.

    The KV cache is never reordered or copied per beam: a prompt's beams share its
    cached Part A and [sop], each step appends one key per beam, and a beam's mask
    row sees its ancestors' keys (``ancestry``: the beam slot of its ancestor at each
    step). A prompt that stops keeps its rows with every beam dead, so no row is
    ever dropped from the cache either.

    With a ``prior`` (weight w > 0) the LM's log-probabilities are scaled by 1 - w,
    ``beam_scores`` hold that scaled LM part and beams are ranked by it plus
    ``guide`` (w * log of the node's prior mass, see :class:`ItemPrior`); [eop] adds
    w * log p_prior(item). Both prior terms only fall along a path (a child's mass is
    part of its parent's, an item's of its node's), so the stopping rule stays exact.

    Returns:
        Per prompt, up to ``num_return`` (item index into ``trie.item_keys``, rank score).
    """
    first_logits = decoder.prompt_pass(with_sop=True)
    num_prompts, vocab_size = first_logits.shape
    device = decoder.device
    logits = first_logits.repeat_interleave(num_beams, 0)  # [rows = prompts * beams, V]
    beam_scores = torch.full((num_prompts, num_beams), -math.inf, device=device)
    beam_scores[:, 0] = 0.0
    nodes = torch.zeros(num_prompts * num_beams, dtype=torch.long, device=device)  # the root
    nodes.view(num_prompts, num_beams)[:, 1:] = trie.dead
    blocked, item_excluded = _exclusion_masks(trie, exclude, num_prompts, device)
    guide = item_guide = None  # [prompts, nodes] float32, [prompts, items] float64
    if prior is not None and prior.weight > 0:
        guide, item_guide = _prior_guide(trie, prior, item_excluded)
    prompt_of_row = torch.arange(num_prompts, device=device).repeat_interleave(num_beams)
    finished_scores = torch.full((num_prompts, num_return), -math.inf, dtype=torch.float64)
    finished_scores = finished_scores.to(device)
    finished_items = torch.full_like(finished_scores, -1, dtype=torch.long)
    # [prompts, beams, feeds]: the beam slot of each beam's ancestor at every feed so far.
    ancestry = torch.zeros(num_prompts, num_beams, 0, dtype=torch.long, device=device)
    beam_slots = torch.arange(num_beams, device=device)
    inter = decoder.mask_inter[:, None].expand(-1, num_beams)  # [prompts, beams]
    prompt_keys = decoder.key_valid[:, None, :].expand(-1, num_beams, -1)  # Part A + [sop]
    done = torch.zeros(num_prompts, dtype=torch.bool, device=device)

    for step in range(max_new_tokens):
        log_probs = torch.log_softmax(logits, -1)  # [rows, V]
        # Children of each beam's node, padded to the most children at this depth.
        width = max(trie.max_children[step] if step < len(trie.max_children) else 0, 1)
        first = trie.child_ptr[nodes]
        offsets = torch.arange(width, device=device)
        has_child = offsets < (trie.child_ptr[nodes + 1] - first)[:, None]  # [rows, width]
        slots = torch.where(has_child, first[:, None] + offsets, 0)
        child_tokens = trie.child_token[slots]
        child_nodes = trie.child_node[slots]
        allowed_child = has_child & ~blocked[prompt_of_row[:, None], child_nodes]
        if guide is not None:
            child_guide = guide[prompt_of_row[:, None], child_nodes]  # [rows, width]
            allowed_child &= child_guide > -math.inf  # no prior mass below: pruned
        items = trie.node_item[nodes]
        may_end = (items >= 0) & ~item_excluded[prompt_of_row, items.clamp(min=0)]
        if renormalize:  # over the allowed children and [eop] where an item may end
            allowed_log_probs = torch.cat(
                [
                    log_probs.gather(1, child_tokens).masked_fill(~allowed_child, -math.inf),
                    log_probs[:, eop_token_id : eop_token_id + 1].masked_fill(
                        ~may_end[:, None], -math.inf
                    ),
                ],
                1,
            )
            log_probs = log_probs - _finite_or_zero(allowed_log_probs.logsumexp(1))[:, None]
        if guide is not None:  # (1 - w) * LM; where(): 0 * -inf would be NaN at weight 1
            log_probs = torch.where(
                log_probs > -math.inf, log_probs * (1 - prior.weight), -math.inf
            )
        # [rows, V]: -inf but at allowed children, where beam score + log p (the same
        # float additions as the reference's dense where(), done at the children only).
        # Padding slots write -inf to the [eop] column, which takes no part in the topk.
        beam_column = beam_scores.view(-1, 1)  # dead beams are -inf, so all their extensions
        child_scores = log_probs.gather(1, child_tokens) + beam_column
        rank_scores = child_scores if guide is None else child_scores + child_guide
        scores = torch.full_like(log_probs, -math.inf).scatter_(
            1,
            torch.where(allowed_child, child_tokens, eop_token_id),
            rank_scores.masked_fill(~allowed_child, -math.inf),
        )
        eop_scores = log_probs[:, eop_token_id : eop_token_id + 1] + beam_column
        eop_scores = eop_scores.masked_fill(~may_end[:, None], -math.inf)
        eop_scores = eop_scores.double().view(-1, num_beams)  # [prompts, beams]
        if item_guide is not None:
            eop_scores = eop_scores + item_guide.gather(1, items.clamp(min=0).view(-1, num_beams))
        if length_normalize:
            eop_scores = eop_scores / (step + 1)
        merged_scores = torch.cat([finished_scores, eop_scores], 1)
        merged_items = torch.cat([finished_items, items.view(-1, num_beams)], 1)
        # Stable: among equal scores, earlier hypotheses (and lower beams) stay first.
        merged_scores, order = merged_scores.sort(dim=1, descending=True, stable=True)
        finished_scores = merged_scores[:, :num_return].contiguous()
        finished_items = merged_items.gather(1, order[:, :num_return])
        scores[:, eop_token_id] = -math.inf
        top_scores, top_ids = scores.view(-1, num_beams * vocab_size).topk(num_beams, dim=1)
        if step == max_new_tokens - 1:
            break
        best_live = top_scores[:, 0].double()
        bound = best_live / (step + 2) if length_normalize else best_live
        worst = finished_scores[:, -1]  # -inf until num_return items are finished
        go_on = ~done & (best_live > -math.inf) & ~(torch.isfinite(worst) & (bound <= worst))
        if not go_on.any():  # the one host sync of a step
            break
        # A prompt that stops keeps its rows (no cache copy), with every beam dead.
        done |= ~go_on
        source_beams = top_ids // vocab_size  # [prompts, beams]
        next_tokens = top_ids % vocab_size
        source_rows = (prompt_of_row.view(-1, num_beams) * num_beams + source_beams).view(-1)
        # The child reached by each chosen token (dead if the token is no allowed child).
        matches = (child_tokens[source_rows] == next_tokens.view(-1, 1)) & allowed_child[
            source_rows
        ]
        slot = matches.int().argmax(1, keepdim=True)
        chosen = child_nodes[source_rows].gather(1, slot)[:, 0]
        nodes = torch.where(matches.any(1), chosen, trie.dead)
        if guide is not None:  # the beams carry the LM part; the guide is the node's
            top_scores = torch.where(
                top_scores > -math.inf,
                child_scores[source_rows].gather(1, slot).view(-1, num_beams),
                -math.inf,
            )
        beam_scores = top_scores.masked_fill(~go_on[:, None], -math.inf)
        # Beams share their prompt's cached Part A and [sop]; the tokens generated so
        # far are appended as one key per beam and feed, and a beam sees its ancestors'.
        ancestry = torch.cat(
            [
                ancestry.gather(1, source_beams[:, :, None].expand(-1, -1, step)),
                beam_slots.expand(num_prompts, -1)[:, :, None],
            ],
            2,
        )
        generated = torch.zeros(
            num_prompts, num_beams, step + 1, num_beams, dtype=torch.bool, device=device
        ).scatter_(3, ancestry[..., None], True)
        mask = torch.cat([prompt_keys, generated.view(num_prompts, num_beams, -1)], 2)
        output = decoder.model(
            input_ids=next_tokens,  # [prompts, beams]
            position_ids=torch.stack([inter, trie.node_intra[nodes].view(-1, num_beams)], 1),
            attention_mask=mask[:, None],  # [prompts, 1, beams, Part A + [sop] + generated]
            cache=decoder.cache,
            use_cache=True,
        )
        decoder.cache = getattr(output, CACHE_FIELD)
        logits = output.logits.float().view(-1, vocab_size)
    scores_list, items_list = finished_scores.tolist(), finished_items.tolist()
    return [
        [(item, score) for item, score in zip(items, scores, strict=True) if score > -math.inf]
        for items, scores in zip(items_list, scores_list, strict=True)
    ]


def _prior_guide(
    trie: TrieTensors, prior: ItemPrior, item_excluded: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The prior's terms of the guided search (:class:`ItemPrior`), per prompt:
    ``weight * log M(node)`` [prompts, nodes] float32 (-inf where no eligible item
    below the node has prior mass; the dead node included) and ``weight * log
    p_prior(item)`` [prompts, items] float64 (-inf for excluded items).

    ``M(node)`` sums the prior probabilities of the eligible items at or below the
    node: every item adds its probability to each node on its path (``item_path``)
    and to the root, one ``index_add_`` for all prompts.
    """
    column_of = {key: column for column, key in enumerate(prior.keys)}
    missing = [key for key in trie.item_keys if key not in column_of]
    if missing:
        raise ValueError(
            f"the prior has no column for {len(missing)} of the {len(trie.item_keys)} "
            f"catalog items, e.g. {missing[0]!r}"
        )
    device = item_excluded.device
    num_items = len(trie.item_keys)
    columns = torch.tensor([column_of[key] for key in trie.item_keys], device=device)
    log_p = prior.log_probs.to(device=device, dtype=torch.float64).index_select(1, columns)
    log_p = log_p.masked_fill(item_excluded[:, :num_items], -math.inf)  # [prompts, items]
    # Masses relative to each prompt's most likely item, so only an item over ~700 nats
    # below it underflows to 0 (and is pruned); a prompt with no eligible item keeps an
    # offset of 0 and every mass 0.
    top = log_p.max(1, keepdim=True).values
    top = torch.where(top > -math.inf, top, torch.zeros_like(top))
    probs = (log_p - top).exp()
    on_path = trie.item_path >= 0  # [items, max_length]
    path_items = torch.arange(num_items, device=device)[:, None].expand_as(on_path)[on_path]
    mass = torch.zeros(len(log_p), len(trie.node_item), dtype=torch.float64, device=device)
    mass.index_add_(1, trie.item_path[on_path], probs[:, path_items])
    mass[:, 0] = probs.sum(1)  # the root holds every item
    guide = torch.where(mass > 0, prior.weight * (mass.log() + top), -math.inf)
    return guide.float(), prior.weight * log_p


def _exclusion_masks(
    trie: TrieTensors,
    exclude: Sequence[set[str]] | None,
    num_prompts: int,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt: ``blocked`` [prompts, nodes] (every item below the node is excluded)
    and ``item_excluded`` [prompts, items] bool. Keys that are no item are ignored."""
    pairs = [
        (prompt, trie.item_index[key])
        for prompt, keys in enumerate(exclude or ())
        for key in keys
        if key in trie.item_index
    ]
    num_nodes, num_items = len(trie.node_item), len(trie.item_keys)
    item_excluded = torch.zeros(num_prompts, max(num_items, 1), dtype=torch.bool, device=device)
    blocked = torch.zeros(num_prompts, num_nodes, dtype=torch.bool, device=device)
    if not pairs:
        return blocked, item_excluded
    prompts, items = torch.tensor(pairs, device=device).unbind(1)
    item_excluded[prompts, items] = True
    paths = trie.item_path[items]  # [pairs, max_length], -1 past each item's end
    on_path = paths >= 0
    counts = torch.zeros(num_prompts, num_nodes, dtype=torch.int32, device=device)
    counts.index_put_(
        (prompts[:, None].expand_as(paths)[on_path], paths[on_path]),
        torch.ones((), dtype=torch.int32, device=device).expand(int(on_path.sum())),
        accumulate=True,
    )
    blocked = (counts > 0) & (counts == trie.subtree_size)
    return blocked, item_excluded


@torch.inference_mode()
def recommend_items(
    model: Any,
    prompts: Sequence[Any],
    item_trie: EntityTrie,
    k: int,
    num_beams: int | None = None,
    exclude: Sequence[set[str]] | None = None,
    length_normalize: bool = False,
    max_new_tokens: int | None = None,
    *,
    tokenizer: Any,
    decoder: str = "static",
    renormalize: bool = False,
    prior: ItemPrior | None = None,
) -> list[list[tuple[str, float]]]:
    """Top-k distinct catalog items per prompt by trie-constrained beam search.

    Only tokens that keep the answer inside ``item_trie`` are explored, and [eop]
    only at a whole item, so every returned key is a catalog item. The answer is one
    entity: its first token is ENTITY_START (first unit of the span, so intra
    continues from [sop]: 2), the rest ENTITY_CONTINUE (3, 4, ...).

    ``num_beams`` defaults to ``k``, which already guarantees ``k`` distinct items
    whenever the catalog holds ``k`` eligible ones: every live beam can still reach
    an eligible item (prefixes whose items are all excluded are pruned), beams are
    distinct prefixes of one length and hence lead to disjoint item sets, and every
    beam that can end is kept as a finished hypothesis whatever its rank. More beams
    search wider (better recall of the true top-k), at proportional cost.

    Args:
        model: a GLMForConditionalGeneration (any device and dtype).
        prompts: ``PromptInputs`` from ``prompt_layout.build_prompt``, one per user.
        item_trie: trie of the item titles (``EntityTrie.from_catalog(..., items_only=True)``).
        k: number of items per prompt.
        num_beams: beams per prompt, at least ``k``.
        exclude: per prompt, item keys never to return (e.g. the user's history).
        length_normalize: rank by log-probability / number of tokens (incl. [eop])
            instead of the sum; the returned score is then the normalised one.
        max_new_tokens: at most the longest item + 1 ([eop]), the default; a larger
            value is clipped to it; fewer may leave items unfinished (then fewer than k
            are returned).
        tokenizer: the ``GLMTokenizer`` (its sop and eop ids).
        decoder: "static" (the trie as tensors on the model's device, no Python per
            beam: ``item_trie.tensors``; beams share the prompt's cache) or
            "reference" (per-beam Python over the pygtrie trie, one cache row per
            beam); the same items and order, scores equal to float32 rounding.
        renormalize: score each token by its probability renormalised over the tokens
            the trie allows after the prefix (children not wholly excluded, and [eop]
            where an eligible item ends), so the scores are a distribution over the
            eligible items; off: the full-softmax probability (module docstring).
        prior: a text-free model's item log-probabilities per prompt and their
            weight w, to search and rank by (1 - w) * log-probability + w * log
            prior (:class:`ItemPrior`; static decoder, no length normalisation).
            Items the prior gives probability 0 are never returned.

    Returns:
        Per prompt, up to ``k`` ``(item key, score)`` best first; the score is the
        item's log-probability as the answer (sum over its tokens and [eop]), with a
        ``prior`` the fusion score above.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_beams = k if num_beams is None else num_beams
    if num_beams < k:
        raise ValueError(f"num_beams ({num_beams}) must be >= k ({k}) to return k distinct items")
    if exclude is not None and len(exclude) != len(prompts):
        raise ValueError(f"exclude has {len(exclude)} sets for {len(prompts)} prompts")
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} not in {DECODERS}")
    if prior is not None:
        if decoder != "static":
            raise ValueError("a prior guides only the static decoder (decoder='static')")
        if length_normalize:
            raise ValueError("a prior cannot guide a length-normalised search")
        if len(prior.log_probs) != len(prompts):
            raise ValueError(
                f"the prior has {len(prior.log_probs)} rows for {len(prompts)} prompts"
            )
    bound = item_trie.max_length + 1
    # An item ends within its token count + [eop]: no free-text budget can stretch the
    # search past the longest item (every beam has completed or died by then).
    steps = min(max_new_tokens or bound, bound)
    if decoder == "static":
        state = _Decoder(model, prompts, tokenizer.sop_token_id)
        trie = item_trie.tensors(state.device)
        found = _static_item_search(
            state,
            tokenizer.eop_token_id,
            num_beams=num_beams,
            num_return=k,
            max_new_tokens=steps,
            length_normalize=length_normalize,
            trie=trie,
            exclude=exclude,
            renormalize=renormalize,
            prior=prior,
        )
        return [[(trie.item_keys[item], score) for item, score in ranked] for ranked in found]
    constraints = [
        _ItemConstraint(item_trie, set(exclude[i]) if exclude is not None else set())
        for i in range(len(prompts))
    ]
    results = _beam_search(
        _Decoder(model, prompts, tokenizer.sop_token_id),
        tokenizer.eop_token_id,
        num_beams=num_beams,
        num_return=k,
        max_new_tokens=steps,
        length_normalize=length_normalize,
        constraints=constraints,
        banned_ids=(),
        entity_trie=item_trie,
        renormalize=renormalize,
    )
    # Item tries reject duplicate ids, so each finished sequence names exactly one item.
    return [[(item_trie.keys_at(tokens)[0], score) for tokens, score in hyps] for hyps in results]


@torch.inference_mode()
def score_candidates(
    model: Any,
    prompts: Sequence[Any],
    candidates: Sequence[Sequence[tuple[int, ...]]],
    length_normalize: bool = False,
    *,
    tokenizer: Any,
    rows_per_pass: int = 64,
    decoder: str = "static",
    renormalize: bool = False,
) -> list[list[float]]:
    """Exact log-likelihood of each candidate answer of each prompt.

    A candidate is one unit: one entity (an item) or one run of plain text (a "yes"
    answer); both get the same intra-positions (1 on [sop], then 2, 3, ...).

    Part A goes through the model once per prompt. With ``decoder="static"`` a
    prompt's candidates then sit in one row after its cached Part A as their prefix
    tree: ``[sop]`` once at the root and one token per distinct prefix, each seeing the
    prompt and its own ancestors (tree attention), so the prompt's cache is shared, not
    copied per candidate, no candidate is padded, and a shared prefix (the root's
    ``[sop]`` at least) is computed once; ``"reference"`` repeats the cache over the
    candidates, one padded row each. Either way ``rows_per_pass`` candidates run per
    forward pass. Positions follow generation: inter = mask position, intra from the
    tracker (by depth in the tree).

    Args:
        model: a GLMForConditionalGeneration.
        prompts: ``PromptInputs`` from ``prompt_layout.build_prompt``.
        candidates: per prompt, the token ids of each candidate (``tokenizer.encode_entity``).
        length_normalize: divide each sum by the number of scored tokens (candidate + [eop]).
        tokenizer: the ``GLMTokenizer`` (its sop and eop ids).
        rows_per_pass: candidates per forward pass (bounds the logits of a pass).
        decoder: "static" (each prompt's candidates as one prefix tree) or "reference"
            (one row per candidate); the same scores to float32 rounding.
        renormalize: each token's probability renormalised over the tokens the
            prompt's candidate list allows after that prefix (the next tokens of the
            candidates sharing it, and [eop] where a candidate ends): the scores are a
            distribution over the listed answers.

    Returns:
        Per prompt, per candidate: sum of log p(token) over the candidate's tokens and [eop].
    """
    if len(candidates) != len(prompts):
        raise ValueError(f"{len(candidates)} candidate lists for {len(prompts)} prompts")
    if decoder not in DECODERS:
        raise ValueError(f"decoder {decoder!r} not in {DECODERS}")
    pairs = []  # (prompt index, candidate index, token ids)
    for prompt_index, prompt_candidates in enumerate(candidates):
        for candidate_index, ids in enumerate(prompt_candidates):
            if len(ids) == 0:
                raise ValueError(
                    f"prompt {prompt_index}, candidate {candidate_index}: no token ids"
                )
            pairs.append((prompt_index, candidate_index, tuple(int(i) for i in ids)))
    scores: list[list[float]] = [[0.0] * len(c) for c in candidates]
    if not pairs:
        return scores
    # Per pair, per scored position (its tokens, then [eop]): the tokens its list allows.
    allowed = None
    if renormalize:
        per_prompt = [allowed_next_tokens(c, tokenizer.eop_token_id) for c in candidates]
        allowed = [per_prompt[p][c] for p, c, _ in pairs]
    state = _Decoder(model, prompts, tokenizer.sop_token_id)
    state.prompt_pass(with_sop=False)
    if decoder == "static":
        for chunk in _whole_lists(pairs, rows_per_pass):
            sums = _score_packed(model, state, [pairs[i][2] for i in chunk],
                                 [pairs[i][0] for i in chunk], tokenizer, length_normalize,
                                 None if allowed is None else [allowed[i] for i in chunk])  # fmt: skip
            for i, value in zip(chunk, sums, strict=True):
                scores[pairs[i][0]][pairs[i][1]] = value
        return scores
    decoder = state
    device = decoder.device
    prompt_cache = [(layer.keys, layer.values) for layer in decoder.cache.layers]
    for start in range(0, len(pairs), rows_per_pass):
        chunk = pairs[start : start + rows_per_pass]
        prompt_rows = torch.tensor([p for p, _, _ in chunk], device=device)
        length = max(len(ids) for _, _, ids in chunk) + 1  # T = [sop] + longest candidate
        input_ids = torch.zeros(len(chunk), length, dtype=torch.long)
        intra = torch.zeros(len(chunk), length, dtype=torch.long)
        targets = torch.zeros(len(chunk), length, dtype=torch.long)
        valid = torch.zeros(len(chunk), length, dtype=torch.bool)
        for row, (_, _, ids) in enumerate(chunk):
            tracker = IntraPositionTracker()
            kinds = [TokenKind.ENTITY_START] + [TokenKind.ENTITY_CONTINUE] * (len(ids) - 1)
            input_ids[row, : len(ids) + 1] = torch.tensor((tokenizer.sop_token_id, *ids))
            intra[row, : len(ids) + 1] = torch.tensor(
                [tracker.start()] + [tracker.step(k) for k in kinds]
            )
            targets[row, : len(ids) + 1] = torch.tensor((*ids, tokenizer.eop_token_id))
            valid[row, : len(ids) + 1] = True
        input_ids, intra, targets, valid = (
            t.to(device) for t in (input_ids, intra, targets, valid)
        )
        inter = decoder.mask_inter.index_select(0, prompt_rows)[:, None].expand(-1, length)
        # [rows, 1, T, P + T]: the prompt's non-padded keys, then causal within the candidate
        # (padded candidate keys are never seen; padded rows' outputs are ignored).
        causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
        candidate_keys = causal[None] & valid[:, None, :]
        prompt_keys = decoder.key_valid.index_select(0, prompt_rows)[:, None, :].expand(
            -1, length, -1
        )
        mask = torch.cat([prompt_keys, candidate_keys], 2)[:, None]
        cache = DynamicCache(
            [
                (k.index_select(0, prompt_rows), v.index_select(0, prompt_rows))
                for k, v in prompt_cache
            ]
        )
        output = model(
            input_ids=input_ids,
            position_ids=torch.stack([inter, intra], 1),
            attention_mask=mask,
            cache=cache,
            use_cache=True,
        )
        logits = output.logits.float()  # [rows, T, V]
        # log p = logit - logsumexp: no second [rows, T, V] tensor as with log_softmax.
        if allowed is None:
            normalizer = logits.logsumexp(-1)
        else:
            normalizer = _allowed_logsumexp(
                logits.view(-1, logits.shape[-1]),
                [
                    allowed[start + row][position] if position < len(ids) + 1 else ()
                    for row, (_, _, ids) in enumerate(chunk)
                    for position in range(length)
                ],
            ).view(len(chunk), length)
        token_log_probs = logits.gather(2, targets[:, :, None])[:, :, 0] - normalizer
        token_log_probs = token_log_probs.masked_fill(~valid, 0.0)
        sums = token_log_probs.sum(1)
        if length_normalize:
            sums = sums / valid.sum(1)
        for (prompt_index, candidate_index, _), value in zip(chunk, sums.tolist(), strict=True):
            scores[prompt_index][candidate_index] = value
    return scores


def _whole_lists(pairs: Sequence[tuple[int, int, Any]], per_pass: int) -> list[range]:
    """Indices of ``pairs`` (grouped by prompt, in order) per forward pass.

    A pass holds whole candidate lists while they fit in ``per_pass`` candidates; a
    longer list gets passes of its own, in parts of ``per_pass``. No pass mixes part of
    a list with another list, so its rows (one per list) are about equally wide and
    little is padded.
    """
    chunks: list[range] = []
    current: range | None = None
    start = 0
    while start < len(pairs):
        end = start + 1
        while end < len(pairs) and pairs[end][0] == pairs[start][0]:
            end += 1  # [start, end): one prompt's list
        if current is not None and len(current) + end - start <= per_pass:
            current = range(current.start, end)
        else:
            if current is not None:
                chunks.append(current)
            current = None
            if end - start > per_pass:
                chunks.extend(range(s, min(s + per_pass, end)) for s in range(start, end, per_pass))
            else:
                current = range(start, end)
        start = end
    if current is not None:
        chunks.append(current)
    return chunks


def _allowed_logsumexp(logits: torch.Tensor, allowed: Sequence[tuple[int, ...]]) -> torch.Tensor:
    """Per row of ``logits`` [N, V], logsumexp over that row's ``allowed`` token ids
    (an empty tuple gives 0: a padding position whose score is ignored)."""
    ids = pad_token_sets(allowed).to(logits.device)
    gathered = logits.gather(1, ids.clamp(min=0))
    return _finite_or_zero(gathered.masked_fill(ids < 0, -math.inf).logsumexp(1))


def _score_packed(
    model: Any,
    state: _Decoder,
    candidates: Sequence[tuple[int, ...]],
    prompt_of: Sequence[int],
    tokenizer: Any,
    length_normalize: bool,
    allowed: Sequence[Sequence[tuple[int, ...]]] | None = None,
) -> list[float]:
    """Log-likelihoods of candidates (grouped by prompt, in order) in one forward pass.

    One row per prompt: its cached Part A, then the prefix tree of its candidates
    (``[sop]`` at the root, one node per distinct prefix, so candidates that share a
    prefix share its tokens and the root's ``[sop]`` is fed once). A node sees the
    prompt's non-padded keys and its ancestors (itself included), and its intra-position
    is that of its depth, so each candidate is scored as if alone after the prompt; a
    node's next-token distribution serves every candidate through it.
    """
    device = state.device
    lengths = np.array([len(ids) + 1 for ids in candidates])  # scored positions: ids + [eop]
    prompt_index = np.asarray(prompt_of)
    row_starts = np.flatnonzero(np.r_[True, prompt_index[1:] != prompt_index[:-1]])
    row_of = np.cumsum(np.r_[0, prompt_index[1:] != prompt_index[:-1]])  # per candidate
    # Per row: node -> (parent, token, depth); node 0 is the root [sop]. Per scored
    # position (candidate by candidate, position by position): the node it is read at.
    parents: list[list[int]] = []
    tokens: list[list[int]] = []
    depths: list[list[int]] = []
    position_node = np.empty(int(lengths.sum()), dtype=np.int64)  # column in its row
    nodes: dict[tuple[int, ...], int] = {}
    at = 0
    for index, ids in enumerate(candidates):
        if index == 0 or row_of[index] != row_of[index - 1]:
            nodes = {(): 0}
            parents.append([-1])
            tokens.append([tokenizer.sop_token_id])
            depths.append([0])
        node = 0
        position_node[at] = 0
        for depth in range(1, len(ids) + 1):
            prefix = ids[:depth]
            child = nodes.get(prefix)
            if child is None:
                child = nodes[prefix] = len(parents[-1])
                parents[-1].append(node)
                tokens[-1].append(ids[depth - 1])
                depths[-1].append(depth)
            node = child
            position_node[at + depth] = node
        at += len(ids) + 1
    num_rows = len(row_starts)
    width = max(len(row) for row in parents)
    tracker = IntraPositionTracker()
    kinds = [TokenKind.ENTITY_START] + [TokenKind.ENTITY_CONTINUE] * (int(lengths.max()) - 1)
    intra_rule = [tracker.start()] + [tracker.step(kind) for kind in kinds[:-1]]
    input_ids = np.zeros((num_rows, width), dtype=np.int64)
    intra = np.zeros((num_rows, width), dtype=np.int64)
    # [rows, T, T]: node i sees node j when j is i or one of its ancestors.
    sees = np.zeros((num_rows, width, width), dtype=bool)
    for row in range(num_rows):
        size = len(parents[row])
        input_ids[row, :size] = tokens[row]
        intra[row, :size] = [intra_rule[d] for d in depths[row]]
        for node in range(size):  # parents come before their children
            parent = parents[row][node]
            if parent >= 0:
                sees[row, node] = sees[row, parent]
            sees[row, node, node] = True
    prompt_rows = torch.from_numpy(prompt_index[row_starts]).to(device)
    inter = state.mask_inter.index_select(0, prompt_rows)[:, None].expand(-1, width)
    prompt_keys = state.key_valid.index_select(0, prompt_rows)[:, None, :].expand(-1, width, -1)
    mask = torch.cat([prompt_keys, torch.from_numpy(sees).to(device)], 2)[:, None]
    cache = DynamicCache(
        [
            (layer.keys.index_select(0, prompt_rows), layer.values.index_select(0, prompt_rows))
            for layer in state.cache.layers
        ]
    )
    output = model(
        input_ids=torch.from_numpy(input_ids).to(device),
        position_ids=torch.stack([inter, torch.from_numpy(intra).to(device)], 1),
        attention_mask=mask,
        cache=cache,
        use_cache=True,
    )
    logits = output.logits.float()  # [rows, T, V]
    candidate_of = np.repeat(np.arange(len(candidates)), lengths)
    flat = torch.from_numpy(row_of[candidate_of] * width + position_node).to(device)
    targets = np.concatenate([(*ids, tokenizer.eop_token_id) for ids in candidates])
    token_logits = logits.view(-1, logits.shape[-1])  # [rows * T, V]
    target_logits = token_logits[flat, torch.from_numpy(targets).to(device)]
    if allowed is None:  # one logsumexp per node, shared by the candidates through it
        normalizer = token_logits.logsumexp(-1)[flat]
    else:  # token order: candidate by candidate, position by position (as ``targets``)
        normalizer = _allowed_logsumexp(token_logits[flat], [a for per in allowed for a in per])
    sums = torch.zeros(len(candidates), dtype=torch.float32, device=device).index_add_(
        0, torch.from_numpy(candidate_of).to(device), target_logits - normalizer
    )
    if length_normalize:
        sums = sums / torch.from_numpy(lengths).to(device)
    return sums.tolist()


@torch.inference_mode()
def generate_ids(
    model: Any,
    prompts: Sequence[Any],
    tokenizer: Any,
    max_new_tokens: int,
    strategy: str = "greedy",
    *,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    num_beams: int = 4,
    length_normalize: bool = True,
    entity_trie: EntityTrie | None = None,
) -> list[list[int]]:
    """Free generation of each prompt's answer; the token ids, [eop] excluded.

    Args:
        model: a GLMForConditionalGeneration.
        prompts: ``PromptInputs`` from ``prompt_layout.build_prompt``.
        tokenizer: the ``GLMTokenizer`` (special ids, ``banned_generation_ids``, ``vocab_size``).
        max_new_tokens: at most this many tokens (an [eop] included) per answer.
        strategy: "greedy", "sample" (temperature, top_k (0: off), top_p (1: off),
            seeded by ``seed``) or "beam" (``num_beams``; ranked by mean token
            log-probability when ``length_normalize``, as HF's default length penalty).
        entity_trie: entities (``from_catalog(..., items_only=False)``) that decide the
            intra-positions of generated tokens; None: all plain text (GLM's 1, 2, 3, ...).
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy {strategy!r} not in {STRATEGIES}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if strategy == "sample" and (temperature <= 0 or not 0 < top_p <= 1 or top_k < 0):
        raise ValueError(
            f"bad sampling settings: temperature={temperature}, top_k={top_k}, top_p={top_p}"
        )
    banned_ids = _banned_ids(tokenizer, model.config.vocab_size)
    decoder = _Decoder(model, prompts, tokenizer.sop_token_id)
    if strategy == "beam":
        results = _beam_search(
            decoder,
            tokenizer.eop_token_id,
            num_beams=num_beams,
            num_return=1,
            max_new_tokens=max_new_tokens,
            length_normalize=length_normalize,
            constraints=None,
            banned_ids=banned_ids,
            entity_trie=entity_trie,
        )
        return [list(hyps[0][0]) if hyps else [] for hyps in results]
    return _greedy_or_sample(
        decoder,
        tokenizer.eop_token_id,
        banned_ids,
        max_new_tokens,
        entity_trie,
        sample=strategy == "sample",
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )


def generate_text(
    model: Any,
    prompts: Sequence[Any],
    tokenizer: Any,
    max_new_tokens: int,
    strategy: str = "greedy",
    **options: Any,
) -> list[str]:
    """:func:`generate_ids`, decoded with ``tokenizer.decode`` (explanations, reviews, ratings)."""
    ids = generate_ids(model, prompts, tokenizer, max_new_tokens, strategy, **options)
    return [tokenizer.decode(answer) for answer in ids]


# A signed decimal number: "-3" is minus three, never a 3 with noise before it.
_NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?")


def parse_rating(text: str) -> float | None:
    """The first number in a generated answer, as it is (sign and all); None if none.

    Only the first number counts ("4 out of 5" -> 4.0), so a prompt-like answer
    cannot be mined for a lucky value; digits only (no "four"). A sign belongs to the
    number (" -3" -> -3.0). The value is NOT clipped or filtered to the rating scale:
    the evaluator counts a number outside it ("0", "10/10", "-3") as out of scale and
    scores it, like an answer without a number (None), as the worst case.

    Example:
        >>> parse_rating(" 4 stars"), parse_rating("3.5"), parse_rating("great"), parse_rating(" -3")
        (4.0, 3.5, None, -3.0)
    """
    match = _NUMBER.search(text)
    return None if match is None else float(match.group())
