"""The decoder family (transformers' Llama / Qwen3 / GLM-4 classes) under the forward contract.

Tiny random configs and a tiny byte-level BPE tokenizer are built in-process. Every
parity test runs over the three families, with a non-zero block-position embedding so
that intra-positions really change the outputs.
"""

from __future__ import annotations

import copy
import json
import math

import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Glm4Config, GlmConfig, LlamaConfig, Qwen2Config, Qwen3Config

from recsysllm.collator import BlankInfillingCollator
from recsysllm.generation import generate_ids, recommend_items, score_candidates
from recsysllm.modeling import GLMForConditionalGeneration
from recsysllm.modeling.decoder import (
    FAMILIES,
    build_decoder,
    decoder_fingerprint,
    default_lora_targets,
    load_decoder_checkpoint,
    lora_modules_to_save,
    wrap_pretrained,
)
from recsysllm.modeling.decoder.tokenization import HFTokenizer, resize_model_embeddings
from recsysllm.modeling.protocol import RecSysCausalLM
from recsysllm.positions import span_intra_positions
from recsysllm.schema import Example, Segment
from recsysllm.tokenization import load_tokenizer
from recsysllm.trie import EntityTrie
from tests.conftest import TINY_CORPUS, TINY_TITLES, make_tiny_glm_config

VOCAB_ROWS = 448
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + [f"<reserved_{i}>" for i in range(8)]
HF_CONFIG = {
    "eos_token": "<|endoftext|>",
    "bos_token": "<|im_start|>",
    "chat_template": "{% for m in messages %}<|im_start|>{{ m.content }}<|im_end|>{% endfor %}",
}
FAMILY_CONFIGS = {
    "llama": LlamaConfig,
    "qwen3": Qwen3Config,
    "glm4": Glm4Config,
}
# Checked for exactness at intra 0 only (same code path as their siblings above).
MORE_CONFIGS = {"qwen2": Qwen2Config, "glm": GlmConfig}


def train_bpe(specials: list[str], vocab_size: int = 420) -> Tokenizer:
    """A byte-level BPE (GPT-2 style, no prefix space) trained on the conftest corpus."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator([" " + t for t in TINY_CORPUS], trainer)
    return tokenizer


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """A model-style tokenizer directory: tokenizer.json + tokenizer_config.json."""
    directory = tmp_path_factory.mktemp("bpe")
    train_bpe(SPECIALS).save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(HF_CONFIG))
    return directory


@pytest.fixture(scope="module")
def tok(bpe_dir):
    return HFTokenizer.from_pretrained(bpe_dir)


def tiny_config(family: str):
    return {**FAMILY_CONFIGS, **MORE_CONFIGS}[family](
        vocab_size=VOCAB_ROWS,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=256,
        pad_token_id=None,
        tie_word_embeddings=family == "llama",
    )


def decisive(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Larger weights and a random block embedding: decisive logits, intra matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() == 2:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    return model.eval()


@pytest.fixture(params=sorted(FAMILY_CONFIGS))
def family(request):
    return request.param


@pytest.fixture
def model(family):
    torch.manual_seed(0)
    return decisive(build_decoder(tiny_config(family), block_positions=64))


# ---------------------------------------------------------------- the contract itself


def test_both_families_satisfy_the_protocol(model):
    assert isinstance(model, RecSysCausalLM)
    assert isinstance(GLMForConditionalGeneration(make_tiny_glm_config()), RecSysCausalLM)


@pytest.mark.parametrize("family", sorted({**FAMILY_CONFIGS, **MORE_CONFIGS}))
def test_intra_zero_gives_the_unmodified_transformers_logits(family):
    torch.manual_seed(0)
    config = tiny_config(family)
    base = FAMILIES[config.model_type].base_class(config).eval()
    ours = wrap_pretrained(copy.deepcopy(base), block_positions=32).eval()
    ids = torch.randint(0, VOCAB_ROWS, (2, 11))
    positions = torch.stack([torch.arange(11).expand(2, -1), torch.zeros(2, 11).long()], 1)
    causal = torch.ones(11, 11, dtype=torch.bool).tril().expand(2, 1, -1, -1)
    with torch.no_grad():
        expected = base(ids).logits
        got = ours(ids, positions, causal).logits
        # Intra positions other than 0 change nothing either while the embedding is zero.
        positions[:, 1] = torch.randint(0, 32, (2, 11))
        also = ours(ids, positions, causal).logits
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(also, expected, rtol=0, atol=1e-6)
    # A trained (non-zero) block embedding is used: intra positions matter.
    with torch.no_grad():
        ours.block_position_embeddings.weight.normal_()
        assert not torch.allclose(ours(ids, positions, causal).logits, expected, atol=1e-3)


def test_padding_rows_stay_finite_and_do_not_leak(model):
    ids = torch.randint(0, VOCAB_ROWS, (2, 6))
    positions = torch.stack([torch.arange(6).expand(2, -1), torch.ones(2, 6).long()], 1)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool)
    mask[1, :, :, 4:] = False  # row 1: last two keys are padding
    mask[1, :, 4:, :] = False  # ... and their query rows see nothing
    labels = ids.clone()
    labels[1, 4:] = -100
    with torch.no_grad():
        out = model(ids, positions, mask, labels=labels)
        alone = model(ids[1:, :4], positions[1:, :, :4], mask[1:, :, :4, :4]).logits
    assert torch.isfinite(out.logits).all() and torch.isfinite(out.loss)
    torch.testing.assert_close(out.logits[1, :4], alone[0], rtol=1e-5, atol=1e-5)


def test_loss_is_the_unshifted_mean_over_labelled_tokens(model):
    ids = torch.randint(0, VOCAB_ROWS, (1, 5))
    positions = torch.stack([torch.arange(5), torch.zeros(5).long()])[None]
    mask = torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()
    labels = torch.tensor([[-100, 7, 9, -100, 3]])
    with torch.no_grad():
        out = model(ids, positions, mask, labels=labels)
    log_probs = out.logits[0].float().log_softmax(-1)
    expected = -(log_probs[1, 7] + log_probs[2, 9] + log_probs[4, 3]) / 3
    torch.testing.assert_close(out.loss, expected)
    none = model(ids, positions, mask, labels=torch.full_like(labels, -100)).loss
    assert none.item() == 0.0


def test_labelled_only_loss_and_num_items_match_the_logits_path(model):
    """The trainer's path (return_logits=False, num_items_in_batch) equals the logits path."""
    torch.manual_seed(0)
    ids = torch.randint(0, VOCAB_ROWS, (2, 6))
    positions = torch.stack([torch.arange(6), torch.zeros(6).long()])[None].repeat(2, 1, 1)
    mask = torch.ones(2, 1, 6, 6, dtype=torch.bool).tril()
    labels = torch.tensor([[-100, 7, 9, -100, 3, -100], [5, -100, -100, 2, -100, -100]])
    with torch.no_grad():
        log_probs = model(ids, positions, mask).logits.float().log_softmax(-1)
    summed = -sum(log_probs[b, i, labels[b, i]] for b, i in (labels != -100).nonzero().tolist())

    full = model(ids, positions, mask, labels=labels, num_items_in_batch=10)
    full.loss.backward()
    full_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    fast = model(ids, positions, mask, labels=labels, num_items_in_batch=10, return_logits=False)
    fast.loss.backward()
    fast_grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]

    assert fast.logits is None
    torch.testing.assert_close(full.loss, summed / 10)
    torch.testing.assert_close(fast.loss, full.loss)
    assert len(fast_grads) == len(full_grads)
    for got, expected in zip(fast_grads, full_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_kv_cache_equals_the_full_forward(model):
    ids = torch.randint(0, VOCAB_ROWS, (2, 9))
    positions = torch.stack([torch.arange(9).expand(2, -1), torch.randint(0, 5, (2, 9))], 1)
    mask = torch.ones(9, 9, dtype=torch.bool).tril()
    mask[:5, :5] = True  # Part A (5 tokens) bidirectional, Part B causal
    mask = mask.expand(2, 1, -1, -1)
    with torch.no_grad():
        full = model(ids, positions, mask).logits
        out = model(
            ids[:, :5], positions[:, :, :5], mask[:, :, :5, :5], use_cache=True, logits_to_keep=1
        )
        cache, steps = out.past_key_values, [out.logits[:, -1]]
        for i in range(5, 9):
            out = model(
                ids[:, i : i + 1],
                positions[:, :, i : i + 1],
                mask[:, :, i : i + 1, : i + 1],
                past_key_values=cache,
                use_cache=True,
            )
            steps.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], rtol=1e-5, atol=1e-5)


def test_intra_positions_beyond_the_table_are_named(model):
    ids = torch.zeros(1, 2, dtype=torch.long)
    positions = torch.tensor([[[0, 1], [0, 64]]])
    with pytest.raises(ValueError, match="64 block-position rows"):
        model(ids, positions, torch.ones(1, 1, 2, 2, dtype=torch.bool))


# ---------------------------------------------------------------- with the project's code


def title_example(tok: HFTokenizer, history: list[str], answer: str):
    segments = [Segment("The user watched ")]
    for title in history:
        segments += [Segment(title, entity=title), Segment(", ")]
    segments[-1] = Segment(". Next: ")
    segments.append(Segment(answer, entity=answer, answer=True))
    example = Example(
        tuple(segments), task="sequential", target=answer, answer_mask="mask", answer_type="item"
    )
    return tok.tokenize_example(example)


def reference_item_log_prob(model, prompt, sop: int, eop: int, ids: tuple[int, ...]) -> float:
    """Teacher-forced log p(ids + [eop]) from one uncached Part A + Part B forward."""
    a, b = len(prompt.input_ids), len(ids) + 1
    input_ids = torch.tensor([*prompt.input_ids, sop, *ids])[None]
    inter = [*prompt.inter, *[prompt.mask_inter] * b]
    intra = [*prompt.intra, *span_intra_positions([0] * len(ids))]
    mask = torch.zeros(a + b, a + b, dtype=torch.bool)
    mask[:, :a] = True
    mask[a:, a:] = torch.ones(b, b, dtype=torch.bool).tril()
    with torch.no_grad():
        logits = model(input_ids, torch.tensor([inter, intra])[None], mask[None, None]).logits
    log_probs = logits[0, a:].float().log_softmax(-1)
    return log_probs.gather(1, torch.tensor([*ids, eop])[:, None]).sum().item()


class Recorder(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.config, self.calls = model, model.config, []

    def forward(self, **inputs):
        self.calls.append({k: inputs[k].clone() for k in ("input_ids", "position_ids")})
        return self.model(**inputs)


def test_constrained_beams_and_candidate_scores_match_full_forward(model, tok):
    trie = EntityTrie({t: tok.encode_entity(t) for t in TINY_TITLES})
    collator = BlankInfillingCollator(tok, max_length=256)
    prompts = [
        collator.build_prompt(title_example(tok, TINY_TITLES[i : i + 3], TINY_TITLES[i + 5]))
        for i in (0, 4, 9)
    ]
    sop, eop = tok.sop_token_id, tok.eop_token_id
    ranked = recommend_items(model, prompts, trie, 4, num_beams=len(TINY_TITLES), tokenizer=tok)
    for prompt, items in zip(prompts, ranked, strict=True):
        every = {
            t: reference_item_log_prob(model, prompt, sop, eop, trie.ids_of(t)) for t in TINY_TITLES
        }
        best = sorted(every, key=every.get, reverse=True)[:4]
        assert [key for key, _ in items] == best  # a beam per item: the exact top-k
        np.testing.assert_allclose([s for _, s in items], [every[k] for k in best], atol=1e-4)
    candidates = [[tok.encode_entity(t) for t in TINY_TITLES[:5]]] * len(prompts)
    scores = score_candidates(model, prompts, candidates, tokenizer=tok, rows_per_pass=4)
    expected = [
        [reference_item_log_prob(model, p, sop, eop, c) for c in cs]
        for p, cs in zip(prompts, candidates, strict=True)
    ]
    np.testing.assert_allclose(np.concatenate(scores), np.concatenate(expected), atol=1e-4)


def test_generated_positions_equal_the_collator_part_b(model, tok):
    """Trie-driven intra positions at generation == the collator's training positions."""
    trie = EntityTrie({t: tok.encode_entity(t) for t in TINY_TITLES})
    collator = BlankInfillingCollator(tok, max_length=256)
    history = list(TINY_TITLES[2:5])
    recorder = Recorder(model)
    ranked = recommend_items(
        recorder,
        [collator.build_prompt(title_example(tok, history, TINY_TITLES[0]))],
        trie,
        1,
        tokenizer=tok,
    )
    generated = ranked[0][0][0]
    fed_ids = [int(recorder.calls[0]["input_ids"][0, -1])]
    fed_positions = [recorder.calls[0]["position_ids"][0, :, -1].tolist()]
    for call in recorder.calls[1:]:
        fed_ids.append(int(call["input_ids"][0, 0]))
        fed_positions.append(call["position_ids"][0, :, 0].tolist())
    truth = collator.encode(title_example(tok, history, generated))
    assert fed_ids == list(truth.part_b_ids)
    assert fed_positions == [
        list(p) for p in zip(truth.part_b_inter, truth.part_b_intra, strict=True)
    ]


def test_greedy_generation_matches_uncached_argmax(model, tok):
    collator = BlankInfillingCollator(tok, max_length=256)
    prompt = collator.build_prompt(title_example(tok, list(TINY_TITLES[:2]), TINY_TITLES[3]))
    got = generate_ids(model, [prompt], tok, max_new_tokens=5)[0]
    banned = {i for i in tok.special_token_ids | tok.banned_generation_ids if i != tok.eop_token_id}
    banned |= set(range(tok.vocab_size, VOCAB_ROWS))
    generated: list[int] = []
    for _ in range(5):
        a, part_b = len(prompt.input_ids), [tok.sop_token_id, *generated]
        b = len(part_b)
        ids = torch.tensor([*prompt.input_ids, *part_b])[None]
        positions = torch.tensor(
            [[*prompt.inter, *[prompt.mask_inter] * b], [*prompt.intra, *range(1, b + 1)]]
        )[None]
        mask = torch.zeros(a + b, a + b, dtype=torch.bool)
        mask[:, :a] = True
        mask[a:, a:] = torch.ones(b, b, dtype=torch.bool).tril()
        with torch.no_grad():
            logits = model(ids, positions, mask[None, None]).logits[0, -1].float()
        logits[sorted(banned)] = -math.inf
        token = int(logits.argmax())
        if token == tok.eop_token_id:
            break
        generated.append(token)
    assert got == generated


def test_training_batch_from_the_collator_backpropagates(model, tok):
    collator = BlankInfillingCollator(tok, max_length=64, pad_to_multiple_of=16)
    batch = collator(
        [title_example(tok, list(TINY_TITLES[i : i + 2]), TINY_TITLES[i + 3]) for i in range(3)]
    )
    model.train()
    out = model(**batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.block_position_embeddings.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- LoRA and checkpoints


EXPECTED_TARGETS = {
    "llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "qwen3": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
    "glm4": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_up_proj", "down_proj"},
}


def lora_model(model):
    config = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=default_lora_targets(model),
        modules_to_save=lora_modules_to_save(model),
    )
    return get_peft_model(model, config)


def test_lora_wraps_exactly_the_family_targets(model, family):
    fingerprint = decoder_fingerprint(model)
    peft_model = lora_model(model)
    wrapped = {
        name.split(".")[-1]
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A")
    }
    assert wrapped == EXPECTED_TARGETS[family]
    per_layer = [
        n for n, m in peft_model.named_modules() if hasattr(m, "lora_A") and ".layers.0." in n
    ]
    assert len(per_layer) == len(EXPECTED_TARGETS[family])
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert all("lora_" in n or "block_position_embeddings" in n for n in trainable)
    assert any("block_position_embeddings" in n for n in trainable)
    assert decoder_fingerprint(peft_model) == fingerprint


def test_adapter_round_trip_keeps_lora_and_block_embedding(model, family, tmp_path):
    base_state = copy.deepcopy(model.state_dict())
    peft_model = lora_model(model)
    with torch.no_grad():
        for parameter in peft_model.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.1)
    ids = torch.randint(0, VOCAB_ROWS, (1, 7))
    positions = torch.stack([torch.arange(7), torch.arange(7) % 3])[None]
    mask = torch.ones(1, 1, 7, 7, dtype=torch.bool).tril()
    peft_model.eval()
    with torch.no_grad():
        expected = peft_model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    peft_model.save_pretrained(tmp_path / "adapter")
    fresh = build_decoder(tiny_config(family), block_positions=64).eval()
    fresh.load_state_dict(base_state)
    reloaded = PeftModel.from_pretrained(fresh, tmp_path / "adapter").eval()
    with torch.no_grad():
        got = reloaded(input_ids=ids, position_ids=positions, attention_mask=mask).logits
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        merged = reloaded.merge_and_unload()
        torch.testing.assert_close(
            merged(ids, positions, mask).logits, expected, rtol=1e-4, atol=1e-4
        )
    # A full save/load of the merged model keeps the trained block embedding.
    merged.save_pretrained(tmp_path / "full")
    loaded = load_decoder_checkpoint(tmp_path / "full").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            loaded(ids, positions, mask).logits, expected, rtol=1e-4, atol=1e-4
        )


# ---------------------------------------------------------------- the tokenizer adapter


def test_roles_take_reserved_tokens_not_chat_markers(tok):
    vocab = Tokenizer.from_str(tok._json.decode()).get_vocab()
    reserved = [vocab[f"<reserved_{i}>"] for i in range(6)]
    assert [
        tok.special_tokens[n] for n in ("cls", "mask", "smask", "gmask", "sop", "eop")
    ] == reserved
    assert tok.eos_token_id == tok.pad_token_id == vocab["<|endoftext|>"]
    assert tok.added_roles == 0
    # chat markers and the unassigned reserved tokens are never generated
    assert tok.banned_generation_ids == {
        vocab[t] for t in ("<|im_start|>", "<|im_end|>", "<reserved_6>", "<reserved_7>")
    }


def test_text_never_becomes_special_ids_and_decodes_back(tok):
    text = "A review with <|im_end|> and [MASK] and <reserved_1> inside."
    ids = tok.encode(text)
    assert not set(ids) & (tok.special_token_ids | tok.banned_generation_ids)
    assert tok.decode(ids) == text
    assert tok.decode([tok.cls_token_id, *ids, tok.eos_token_id], skip_special_tokens=False) == (
        "[CLS]" + text + "<eos>"
    )


def test_entity_ids_are_the_same_everywhere(tok):
    ids, units = tok.tokenize_segments(
        [Segment("I watched "), Segment("Heat (1995)", entity="Heat (1995)"), Segment(". Great.")]
    )
    entity = tok.encode_entity("Heat (1995)")
    start = units.index(0)
    assert tuple(ids[start : start + len(entity)]) == entity
    assert tok.decode(ids) == "I watched Heat (1995). Great."


def test_save_load_round_trip_and_tamper_check(tok, tmp_path):
    tok.save_pretrained(tmp_path / "t")
    loaded = load_tokenizer(tmp_path / "t")
    assert isinstance(loaded, HFTokenizer)
    assert loaded.fingerprint == tok.fingerprint and loaded.special_tokens == tok.special_tokens
    assert loaded.encode_entity("Fargo (1996)") == tok.encode_entity("Fargo (1996)")
    record = json.loads((tmp_path / "t" / "recsysllm_tokenizer.json").read_text())
    record["special_tokens"]["mask"] += 1
    (tmp_path / "t" / "recsysllm_tokenizer.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="recsysllm_tokenizer.json: field 'fingerprint'"):
        HFTokenizer.from_pretrained(tmp_path / "t")


def test_glm4_surface_names_are_used_and_missing_roles_added(tmp_path):
    glm_like = train_bpe(["<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>"])
    tok = HFTokenizer.from_backend(glm_like, {"eos_token": "<|endoftext|>"})
    vocab = glm_like.get_vocab()
    for role, surface in (
        ("mask", "[MASK]"),
        ("gmask", "[gMASK]"),
        ("smask", "[sMASK]"),
        ("sop", "<sop>"),
        ("eop", "<eop>"),
    ):
        assert tok.special_tokens[role] == vocab[surface]
    assert tok.added_roles == 1  # [CLS]: no such token, nothing reserved
    assert tok.cls_token_id == tok.vocab_size - 1
    assert tok.decode(tok.encode("[recsysllm_cls] x")) == "[recsysllm_cls] x"
    config = tiny_config("llama")
    config.vocab_size = tok.vocab_size - 1
    small = build_decoder(config)
    resize_model_embeddings(small, tok, pad_multiple=64)
    assert small.get_input_embeddings().weight.shape[0] == 448


# ---------------------------------------------------------------- pipeline and training


def test_training_and_inference_pipeline_on_a_decoder_directory(tmp_path, bpe_dir):
    """model.family detected from config.json; LoRA + block embedding trained, saved in the
    adapter, and merged back by load_checkpoint_for_inference."""
    import shutil

    from safetensors import safe_open

    from recsysllm.checkpoint_meta import read_meta
    from recsysllm.pipeline import load_checkpoint_for_inference, prepare_from_tables
    from recsysllm.training import build_trainer
    from tests.test_training import tiny_config as training_config
    from tests.test_training import tiny_tables

    base_dir = tmp_path / "base"
    torch.manual_seed(0)
    config = tiny_config("llama")
    FAMILIES["llama"].base_class(config).save_pretrained(base_dir)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(bpe_dir / name, base_dir / name)
    overrides = [
        f"model.base_model={base_dir}",
        "model.from_scratch=null",
        "tokenizer.path=null",
        "lora.enabled=true",
        "lora.r=4",
        "lora.dropout=0.0",
        "lora.target_modules=[q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj]",
        "max_steps=3",
        "train.save_steps=3",
        # This BPE writes a 1-of-3 test list in up to 130 tokens; training refuses, before
        # it starts, a stored list the evaluation could not fit.
        "data.max_length=192",
    ]
    run_config = training_config(tmp_path / "run", tmp_path / "unused", overrides)
    data = prepare_from_tables(tiny_tables(), run_config.data, seed=0)
    trainer, _ = build_trainer(run_config, data)
    trainer.train()
    checkpoint = tmp_path / "run" / "checkpoint-3"
    assert read_meta(checkpoint).lora
    with safe_open(checkpoint / "adapter_model.safetensors", "pt") as adapter:
        block = [k for k in adapter.keys() if "block_position_embeddings" in k]  # noqa: SIM118
        assert block and adapter.get_tensor(block[0]).abs().sum() > 0  # trained, saved
    model, tokenizer, *_ = load_checkpoint_for_inference(checkpoint)
    assert type(model).__name__ == "RecSysLlamaForCausalLM"
    assert isinstance(tokenizer, HFTokenizer)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(2)])
    del batch["batch_examples"]
    trainer.model.eval()
    with torch.no_grad():
        expected = trainer.model(**batch).logits
        found = model(**batch).logits
    torch.testing.assert_close(found, expected, rtol=1e-4, atol=1e-4)
