"""GLM model: parity with GPT-2, mask semantics, KV cache, checkpointing, init, loss."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration
from recsysllm.modeling.modeling_glm import CACHE_FIELD, _attention_bias


def part_ab_mask(sep: list[int], part_b: list[int], seq: int) -> torch.Tensor:
    """[batch, 1, seq, seq] bool GLM mask: Part A (first sep[b] tokens) bidirectional,
    Part B (next part_b[b] tokens) sees all of Part A and is causal within itself;
    the remaining tokens are padding (fully masked rows and columns)."""
    masks = []
    for a, b in zip(sep, part_b, strict=True):
        mask = torch.zeros(seq, seq, dtype=torch.bool)
        mask[: a + b, :a] = True
        mask[a : a + b, a : a + b] = torch.ones(b, b, dtype=torch.bool).tril()
        masks.append(mask)
    return torch.stack(masks)[:, None]


def glm_positions(sep: list[int], part_b: list[int], seq: int) -> torch.Tensor:
    """[batch, 2, seq]: Part A at 0..sep-1 / block 0; Part B at the mask position sep-1 / 1..n."""
    positions = torch.zeros(len(sep), 2, seq, dtype=torch.long)
    for row, (a, b) in enumerate(zip(sep, part_b, strict=True)):
        positions[row, 0, :a] = torch.arange(a)
        positions[row, 0, a : a + b] = a - 1
        positions[row, 1, a : a + b] = torch.arange(1, b + 1)
    return positions


def causal_inputs(batch: int, seq: int, vocab: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, vocab, (batch, seq), generator=generator)
    positions = torch.stack(
        [torch.arange(seq).expand(batch, seq), torch.zeros(batch, seq, dtype=torch.long)], dim=1
    )
    mask = torch.ones(seq, seq, dtype=torch.bool).tril().expand(batch, 1, seq, seq)
    return input_ids, positions, mask


def make_model(config: GLMConfig, seed: int = 0) -> GLMForConditionalGeneration:
    torch.manual_seed(seed)
    return GLMForConditionalGeneration(config).eval()


def test_logits_match_gpt2_on_same_weights():
    gpt2_config = GPT2Config(
        vocab_size=96,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=4,
        activation_function="gelu_new",
        layer_norm_epsilon=1e-5,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(gpt2_config).eval()
    # Non-trivial LayerNorm and bias values, so a swapped or dropped one would show.
    with torch.no_grad():
        for name, param in gpt2.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                param.add_(0.1 * torch.randn_like(param))

    config = GLMConfig(
        vocab_size=96,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=63,  # 64 position rows, as GPT-2's wpe
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
        gelu_approximate="tanh",  # GPT-2's gelu_new
    )
    glm = GLMForConditionalGeneration(config).eval()
    source = gpt2.transformer
    with torch.no_grad():
        glm.glm.word_embeddings.weight.copy_(source.wte.weight)
        glm.glm.transformer.position_embeddings.weight.copy_(source.wpe.weight)
        glm.glm.transformer.block_position_embeddings.weight.zero_()
        for ours, theirs in zip(glm.glm.transformer.layers, source.h, strict=True):
            ours.input_layernorm.load_state_dict(theirs.ln_1.state_dict())
            ours.post_attention_layernorm.load_state_dict(theirs.ln_2.state_dict())
            # GPT-2's Conv1D stores [in, out]; Linear stores [out, in]. c_attn is [Q|K|V] too.
            for linear, conv in [
                (ours.attention.query_key_value, theirs.attn.c_attn),
                (ours.attention.dense, theirs.attn.c_proj),
                (ours.mlp.dense_h_to_4h, theirs.mlp.c_fc),
                (ours.mlp.dense_4h_to_h, theirs.mlp.c_proj),
            ]:
                linear.weight.copy_(conv.weight.T)
                linear.bias.copy_(conv.bias)
        glm.glm.transformer.final_layernorm.load_state_dict(source.ln_f.state_dict())

    input_ids, positions, mask = causal_inputs(batch=2, seq=20, vocab=96)
    with torch.no_grad():
        expected = gpt2(input_ids).logits
        actual = glm(input_ids, positions, mask).logits
    assert actual.shape == expected.shape == (2, 20, 96)
    torch.testing.assert_close(actual, expected, atol=1e-5, rtol=0)


def test_part_a_part_b_mask_semantics(tiny_glm_config):
    model = make_model(tiny_glm_config)
    sep, part_b, seq = 5, 4, 9
    mask, positions = part_ab_mask([sep], [part_b], seq), glm_positions([sep], [part_b], seq)
    input_ids = torch.randint(
        0, tiny_glm_config.vocab_size, (1, seq), generator=torch.Generator().manual_seed(1)
    )

    def hidden(ids: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return model(ids, positions, mask).logits[0]  # [seq, vocab]

    base = hidden(input_ids)

    def changed_at(index: int) -> torch.Tensor:
        """Per output position: did it change when token `index` changed?"""
        ids = input_ids.clone()
        ids[0, index] = (ids[0, index] + 1) % tiny_glm_config.vocab_size
        return (hidden(ids) - base).abs().amax(dim=-1) > 1e-4

    for index in range(seq):
        changed = changed_at(index)
        if index < sep:  # a Part A token: every Part A and Part B output sees it
            assert changed.all(), (index, changed)
        else:  # a Part B token: Part A and earlier Part B outputs never see it
            expected = torch.arange(seq) >= index
            assert torch.equal(changed, expected), (index, changed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_padding_rows_finite_and_do_not_change_real_tokens(tiny_glm_config, dtype):
    model = make_model(tiny_glm_config).to(dtype)
    seq = 10
    # Row 0: 5 + 3 real tokens, 2 padding; row 1: the same real tokens, no padding room used.
    mask = part_ab_mask([5, 5], [3, 3], seq)
    positions = glm_positions([5, 5], [3, 3], seq)
    input_ids = torch.randint(
        0, tiny_glm_config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(2)
    )
    input_ids[1, :8] = input_ids[0, :8]
    input_ids[1, 8:] = 7  # different padding content
    labels = input_ids.clone()
    labels[:, 8:] = -100
    with torch.no_grad():
        out = model(input_ids, positions, mask, labels=labels)
    assert torch.isfinite(out.logits).all()
    assert torch.isfinite(out.loss)
    # Padding content must not leak into real tokens.
    torch.testing.assert_close(out.logits[0, :8], out.logits[1, :8], atol=0, rtol=0)


def test_mask_bias_survives_fp16_autocast_and_still_masks():
    mask = part_ab_mask([3], [2], 6)
    bias = _attention_bias(mask, torch.float32)
    assert torch.isfinite(bias.half()).all()  # what autocast hands to fp16 SDPA
    # Still a mask: a masked key gets no weight next to an allowed one, in fp16 too.
    scores = torch.tensor([30.0, -30.0]).half() + bias[0, 0, 0, 2:4].half()
    assert scores.softmax(-1)[1].item() == 0.0
    assert bias[mask].abs().max() == 0


def test_kv_cache_incremental_decoding_matches_full_forward(tiny_glm_config):
    model = make_model(tiny_glm_config)
    seq, prompt = 11, 6
    # Row 0: Part A of 6, Part B of 5. Row 1: Part A of 4 + 2 padding, Part B of 5.
    mask = torch.zeros(2, 1, seq, seq, dtype=torch.bool)
    mask[0] = part_ab_mask([6], [5], seq)[0]
    row1 = part_ab_mask([4], [0], seq)[0, 0]
    row1[6:, :4] = True
    row1[6:, 6:] = torch.ones(5, 5, dtype=torch.bool).tril()
    mask[1, 0] = row1
    positions = glm_positions([6, 4], [5, 0], seq)
    positions[1, 0, 6:] = 3
    positions[1, 1, 6:] = torch.arange(1, 6)
    input_ids = torch.randint(
        0, tiny_glm_config.vocab_size, (2, seq), generator=torch.Generator().manual_seed(3)
    )
    real = mask.any(dim=-1)[:, 0]  # [batch, seq]: rows that see something

    with torch.no_grad():
        full = model(input_ids, positions, mask).logits
        out = model(
            input_ids[:, :prompt],
            positions[:, :, :prompt],
            mask[:, :, :prompt, :prompt],
            use_cache=True,
        )
        cache = getattr(out, CACHE_FIELD)
        steps = [out.logits]
        for t in range(prompt, seq):
            out = model(
                input_ids[:, t : t + 1],
                positions[:, :, t : t + 1],
                mask[:, :, t : t + 1, : t + 1],  # [batch, 1, 1, cached + 1]
                cache=cache,
                use_cache=True,
            )
            assert getattr(out, CACHE_FIELD) is cache and cache.get_seq_length() == t + 1
            steps.append(out.logits)
    incremental = torch.cat(steps, dim=1)
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=0)


def test_cache_argument_uses_the_current_transformers_name(tiny_glm_config):
    """transformers 5.24 renamed past_key_values -> cache; the old name stays accepted."""
    import transformers
    from packaging.version import Version

    model = make_model(tiny_glm_config)
    input_ids = torch.randint(0, tiny_glm_config.vocab_size, (1, 4))
    positions = torch.stack([torch.arange(4), torch.zeros(4, dtype=torch.long)])[None]
    mask = torch.ones(1, 1, 4, 4, dtype=torch.bool)
    step = (input_ids[:, :1], positions[:, :, :1], torch.ones(1, 1, 1, 5, dtype=torch.bool))
    with torch.no_grad():
        first = model(input_ids, positions, mask, use_cache=True)
        cache = getattr(first, CACHE_FIELD)
        new = model(*step, cache=cache, use_cache=True)
        assert getattr(new, CACHE_FIELD) is cache
        old_cache = getattr(model(input_ids, positions, mask, use_cache=True), CACHE_FIELD)
        old = model(*step, past_key_values=old_cache, use_cache=True)
    torch.testing.assert_close(new.logits, old.logits)
    if Version(transformers.__version__) >= Version("5.24"):
        assert CACHE_FIELD == "cache"
        assert new.cache is cache  # the field itself, not the deprecated property


@pytest.mark.parametrize(
    "enable",
    [
        lambda m: m.gradient_checkpointing_enable(),
        lambda m: m.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": True}
        ),
        lambda m: m.activation_checkpointing_enable(),
    ],
    ids=["gradient_checkpointing_enable", "reentrant", "activation_checkpointing_enable"],
)
def test_gradient_checkpointing_recomputes_and_keeps_gradients(tiny_glm_config, enable):
    input_ids, positions, mask = causal_inputs(batch=2, seq=8, vocab=tiny_glm_config.vocab_size)

    def run(checkpointing: bool) -> tuple[dict[str, torch.Tensor], list[int]]:
        model = make_model(tiny_glm_config).train()
        if checkpointing:
            with pytest.warns(FutureWarning) if "gradient" in repr(enable) else _no_warning():
                enable(model)
        calls = [0] * len(model.glm.transformer.layers)
        for i, layer in enumerate(model.glm.transformer.layers):
            # A hook on the block's first submodule runs again when the block is recomputed
            # (not a late one: non-reentrant recomputation stops once it has what it needs).
            layer.input_layernorm.register_forward_pre_hook(
                lambda *_, i=i: calls.__setitem__(i, calls[i] + 1)
            )
        model(input_ids, positions, mask, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}, calls

    plain_grads, plain_calls = run(checkpointing=False)
    checkpointed_grads, checkpointed_calls = run(checkpointing=True)
    assert plain_calls == [1, 1]
    assert checkpointed_calls == [2, 2]  # forward + recomputation in backward
    assert plain_grads.keys() == checkpointed_grads.keys()
    for name in plain_grads:
        torch.testing.assert_close(
            checkpointed_grads[name], plain_grads[name], atol=1e-6, rtol=1e-5
        )


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_init_statistics():
    config = GLMConfig(
        vocab_size=1024,
        hidden_size=256,
        num_layers=4,
        num_attention_heads=4,
        max_sequence_length=512,
    )
    model = make_model(config)
    output_std = 0.02 / math.sqrt(2 * config.num_layers)
    layer = model.glm.transformer.layers[1]
    normal = {
        "word_embeddings": model.glm.word_embeddings.weight,
        "position_embeddings": model.glm.transformer.position_embeddings.weight,
        "block_position_embeddings": model.glm.transformer.block_position_embeddings.weight,
        "query_key_value": layer.attention.query_key_value.weight,
        "dense_h_to_4h": layer.mlp.dense_h_to_4h.weight,
    }
    for name, weight in normal.items():
        assert weight.std().item() == pytest.approx(0.02, rel=0.03), name
        assert abs(weight.mean().item()) < 1e-3, name
    for name, weight in {
        "attention.dense": layer.attention.dense.weight,
        "dense_4h_to_h": layer.mlp.dense_4h_to_h.weight,
    }.items():
        assert weight.std().item() == pytest.approx(output_std, rel=0.03), name
    for module in (layer.attention.query_key_value, layer.attention.dense, layer.mlp.dense_h_to_4h):
        assert torch.count_nonzero(module.bias) == 0
    assert torch.equal(layer.input_layernorm.weight, torch.ones(256))
    assert torch.count_nonzero(model.glm.transformer.final_layernorm.bias) == 0


def test_output_layer_is_tied_to_word_embeddings(tiny_glm_config):
    model = make_model(tiny_glm_config)
    input_ids, positions, mask = causal_inputs(batch=1, seq=5, vocab=tiny_glm_config.vocab_size)
    with torch.no_grad():
        hidden = model.glm(input_ids, positions, mask).last_hidden_state
        logits = model(input_ids, positions, mask).logits
    torch.testing.assert_close(logits, hidden @ model.glm.word_embeddings.weight.T)
    assert model.lm_head.weight is model.glm.word_embeddings.weight
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in model.glm.parameters()
    )


def test_loss_is_mean_over_labelled_tokens_aligned_not_shifted(tiny_glm_config):
    model = make_model(tiny_glm_config)
    input_ids, positions, mask = causal_inputs(batch=2, seq=6, vocab=tiny_glm_config.vocab_size)
    labels = torch.full_like(input_ids, -100)
    labels[0, 2], labels[0, 3], labels[1, 5] = 11, 12, 13
    with torch.no_grad():
        out = model(input_ids, positions, mask, labels=labels)
        log_probs = out.logits.log_softmax(dim=-1)
    expected = -(log_probs[0, 2, 11] + log_probs[0, 3, 12] + log_probs[1, 5, 13]) / 3
    torch.testing.assert_close(out.loss, expected)

    none_labelled = model(input_ids, positions, mask, labels=torch.full_like(input_ids, -100)).loss
    assert none_labelled.item() == 0.0


def test_forward_rejects_ambiguous_inputs(tiny_glm_config):
    model = make_model(tiny_glm_config)
    input_ids, positions, mask = causal_inputs(batch=2, seq=5, vocab=tiny_glm_config.vocab_size)
    with pytest.raises(ValueError, match="attention_mask is required"):
        model(input_ids, positions, None)
    with pytest.raises(ValueError, match="bool tensor"):
        model(input_ids, positions, mask.float())
    with pytest.raises(ValueError, match=r"\[batch, 1, seq, cached \+ seq\]"):
        model(input_ids, positions, mask[:, :, :, :4])
    with pytest.raises(ValueError, match="position_ids must be"):
        model(input_ids, positions[:, 0], mask)
    with pytest.raises(TypeError, match="token_type_ids"):
        model(input_ids, positions, mask, token_type_ids=torch.zeros_like(input_ids))
    # What Trainer / PEFT pass and we do not need is accepted.
    out = model(
        input_ids,
        positions,
        mask,
        labels=input_ids,
        num_items_in_batch=torch.tensor(10),
        return_dict=True,
        inputs_embeds=None,
    )
    assert out.loss is not None


def test_attention_dropout_is_active_in_training_only():
    config = GLMConfig(
        vocab_size=64,
        hidden_size=32,
        num_layers=1,
        num_attention_heads=4,
        max_sequence_length=16,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.5,
        output_dropout_prob=0.0,
    )
    model = make_model(config)
    input_ids, positions, mask = causal_inputs(batch=1, seq=6, vocab=64)
    with torch.no_grad():
        eval_a, eval_b = (model(input_ids, positions, mask).logits for _ in range(2))
        model.train()
        train_a, train_b = (model(input_ids, positions, mask).logits for _ in range(2))
    assert torch.equal(eval_a, eval_b)
    assert not torch.equal(train_a, train_b)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="not divisible"):
        GLMConfig(hidden_size=30, num_attention_heads=4)
    with pytest.raises(ValueError, match="gelu_approximate"):
        GLMConfig(gelu_approximate="sigmoid")
    config = GLMConfig(vocab_size=64, hidden_size=32, num_layers=3, num_attention_heads=4)
    assert (config.num_hidden_layers, config.max_position_embeddings, config.head_dim) == (
        3,
        1024,
        8,
    )


def test_gelu_approximation_matches_its_formula(tiny_glm_config):
    x = torch.linspace(-4, 4, 32)
    exact = 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))
    tanh = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    for approximate, expected in [("none", exact), ("tanh", tanh)]:
        tiny_glm_config.gelu_approximate = approximate
        mlp = make_model(tiny_glm_config).glm.transformer.layers[0].mlp
        with torch.no_grad():
            # Intermediate unit i = gelu(x[i]) for i < 32, routed straight to output i.
            mlp.dense_h_to_4h.weight.zero_()
            mlp.dense_h_to_4h.bias.zero_()
            mlp.dense_h_to_4h.bias[:32] = x
            mlp.dense_4h_to_h.weight.copy_(torch.eye(32, 128))
            mlp.dense_4h_to_h.bias.zero_()
            out = mlp(torch.zeros(1, 32))[0]
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)


def test_logits_to_keep_returns_the_last_columns_of_the_full_logits(tiny_glm_config):
    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(0)
    model = GLMForConditionalGeneration(tiny_glm_config).eval()
    input_ids = torch.randint(0, tiny_glm_config.vocab_size, (2, 7))
    position_ids = torch.stack(
        [torch.arange(7).expand(2, 7), torch.zeros(2, 7, dtype=torch.long)], 1
    )
    mask = torch.ones(2, 1, 7, 7, dtype=torch.bool)
    full = model(input_ids=input_ids, position_ids=position_ids, attention_mask=mask).logits
    last = model(
        input_ids=input_ids, position_ids=position_ids, attention_mask=mask, logits_to_keep=2
    ).logits
    assert last.shape == (2, 2, tiny_glm_config.vocab_size)
    torch.testing.assert_close(last, full[:, -2:])
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(
            input_ids=input_ids,
            position_ids=position_ids,
            attention_mask=mask,
            labels=input_ids,
            logits_to_keep=1,
        )
