"""LoRA on GLM via PEFT: the paper's four targets per block, adapter save/load round trip."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer

from recsysllm.modeling import GLMForConditionalGeneration

TARGETS = ["query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"]


def lora_model(config) -> torch.nn.Module:
    torch.manual_seed(0)
    base = GLMForConditionalGeneration(config).eval()
    return get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=TARGETS))


def inputs(vocab: int):
    generator = torch.Generator().manual_seed(4)
    input_ids = torch.randint(0, vocab, (2, 7), generator=generator)
    positions = torch.stack([torch.arange(7).expand(2, 7), torch.zeros(2, 7, dtype=torch.long)], 1)
    mask = torch.ones(7, 7, dtype=torch.bool).tril().expand(2, 1, 7, 7)
    return {"input_ids": input_ids, "position_ids": positions, "attention_mask": mask}


def test_lora_wraps_exactly_four_linears_per_block(tiny_glm_config):
    model = lora_model(tiny_glm_config)
    wrapped = sorted(
        name.removeprefix("base_model.model.")
        for name, module in model.named_modules()
        if isinstance(module, LoraLayer)
    )
    expected = sorted(
        f"glm.transformer.layers.{i}.{suffix}"
        for i in range(tiny_glm_config.num_layers)
        for suffix in (
            "attention.query_key_value",
            "attention.dense",
            "mlp.dense_h_to_4h",
            "mlp.dense_4h_to_h",
        )
    )
    assert wrapped == expected
    # Only the adapters train: 2 matrices per wrapped linear.
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert len(trainable) == 2 * len(expected)
    assert all("lora_" in name for name in trainable)


def test_lora_gradients_reach_only_adapters(tiny_glm_config):
    model = lora_model(tiny_glm_config).train()
    batch = inputs(tiny_glm_config.vocab_size)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name


def test_adapter_save_and_load_round_trips_logits(tiny_glm_config, tmp_path):
    model = lora_model(tiny_glm_config)
    batch = inputs(tiny_glm_config.vocab_size)
    with torch.no_grad():
        base_logits = model.get_base_model()(**batch).logits.clone()
        with model.disable_adapter():
            assert torch.equal(model(**batch).logits, base_logits)
        # lora_B starts at zero (adapter = identity); make it non-trivial.
        generator = torch.Generator().manual_seed(5)
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(0.1 * torch.randn(param.shape, generator=generator))
        adapted = model(**batch).logits.clone()
    assert not torch.allclose(adapted, base_logits)

    model.save_pretrained(tmp_path / "adapter")
    torch.manual_seed(0)
    fresh_base = GLMForConditionalGeneration(tiny_glm_config).eval()
    reloaded = PeftModel.from_pretrained(fresh_base, tmp_path / "adapter").eval()
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, adapted)
