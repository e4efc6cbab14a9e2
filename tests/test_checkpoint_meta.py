"""recsysllm_meta.json: fingerprints, round trip, clear errors, compatibility checks."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from peft import LoraConfig, get_peft_model

from recsysllm.checkpoint_meta import (
    META_FILENAME,
    CheckpointMeta,
    CheckpointMismatchError,
    check_compatible,
    model_fingerprint,
    read_meta,
    write_meta,
)


def _model(config, seed: int):
    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(seed)
    return GLMForConditionalGeneration(config)


def _config(config, **changes):
    from recsysllm.modeling import GLMConfig

    fields = (
        "vocab_size",
        "hidden_size",
        "num_layers",
        "num_attention_heads",
        "max_sequence_length",
    )
    return GLMConfig(**{**{name: getattr(config, name) for name in fields}, **changes})


def _meta(**changes) -> CheckpointMeta:
    meta = CheckpointMeta(
        base_model="/ckpt/glm-10b",
        base_model_fingerprint="a" * 64,
        tokenizer_fingerprint="b" * 64,
        catalog_hash="c" * 64,
        prompts_hash="d" * 64,
        lora=True,
        step=100,
    )
    return dataclasses.replace(meta, **changes)


def test_fingerprint_is_deterministic_and_sees_weights_and_architecture(tiny_glm_config):
    a, same = _model(tiny_glm_config, 0), _model(tiny_glm_config, 0)
    assert model_fingerprint(a) == model_fingerprint(same)
    assert len(model_fingerprint(a)) == 64
    assert model_fingerprint(_model(tiny_glm_config, 1)) != model_fingerprint(a)
    # One sampled value changed -> different fingerprint.
    with torch.no_grad():
        same.glm.word_embeddings.weight.view(-1)[0] += 1.0
    assert model_fingerprint(same) != model_fingerprint(a)
    other_config = _config(tiny_glm_config, num_layers=3)
    assert model_fingerprint(_model(other_config, 0)) != model_fingerprint(a)


def test_fingerprint_ignores_dropout_dtype_and_lora(tiny_glm_config):
    base = _model(tiny_glm_config, 0)
    expected = model_fingerprint(base)
    with_dropout = _config(tiny_glm_config, output_dropout_prob=0.1)
    assert model_fingerprint(_model(with_dropout, 0)) == expected
    # Values are rounded to bf16 before hashing: a bf16 copy of the weights agrees.
    assert model_fingerprint(_model(tiny_glm_config, 0).to(torch.bfloat16)) == expected
    lora = get_peft_model(base, LoraConfig(r=2, target_modules=["query_key_value", "dense"]))
    assert model_fingerprint(lora) == expected


def test_write_read_round_trip(tmp_path):
    meta = _meta()
    path = write_meta(tmp_path / "checkpoint-100", meta)
    assert path.name == META_FILENAME
    assert read_meta(tmp_path / "checkpoint-100") == meta
    assert [p.name for p in path.parent.iterdir()] == [META_FILENAME]  # no temp file left


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(
        FileNotFoundError, match=f"{tmp_path}.*{META_FILENAME}.*not a recsysllm checkpoint"
    ):
        read_meta(tmp_path)
    (tmp_path / META_FILENAME).write_text("{not json")
    with pytest.raises(ValueError, match=f"{META_FILENAME}: corrupt JSON"):
        read_meta(tmp_path)
    raw = dataclasses.asdict(_meta())
    del raw["tokenizer_fingerprint"]
    (tmp_path / META_FILENAME).write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="missing fields \\['tokenizer_fingerprint'\\]"):
        read_meta(tmp_path)
    (tmp_path / META_FILENAME).write_text(
        json.dumps({**dataclasses.asdict(_meta()), "format_version": 99})
    )
    with pytest.raises(ValueError, match="format_version is 99"):
        read_meta(tmp_path)


def test_check_compatible_names_what_differs():
    meta = _meta()
    check_compatible(
        meta,
        base_model_fingerprint="a" * 64,
        tokenizer_fingerprint="b" * 64,
        catalog_hash="c" * 64,
        where="ckpt",
    )
    check_compatible(meta, where="ckpt")  # nothing to compare
    with pytest.raises(CheckpointMismatchError) as info:
        check_compatible(
            meta,
            base_model_fingerprint="e" * 64,
            catalog_hash="f" * 64,
            where="runs/x/checkpoint-100",
        )
    message = str(info.value)
    assert message.startswith("runs/x/checkpoint-100")
    assert "base model differs" in message and "a" * 16 in message and "e" * 16 in message
    assert "entity catalog differs" in message and "tokenizer" not in message.split("(")[0]
    assert "/ckpt/glm-10b" in message
    with pytest.raises(CheckpointMismatchError, match="tokenizer differs"):
        check_compatible(meta, tokenizer_fingerprint="0" * 64, where="x")


def test_fingerprint_samples_tensors_past_float32_precision():
    """An embedding with more than 2**24 values (glm-10b has 206M): a float32 linspace
    rounded the last index up to numel and indexed past the end."""
    from recsysllm.modeling import GLMConfig, GLMForConditionalGeneration

    config = GLMConfig(
        vocab_size=70_000, hidden_size=256, num_layers=1, num_attention_heads=4,
        max_sequence_length=8,
    )  # fmt: skip
    model = GLMForConditionalGeneration(config)
    assert model.glm.word_embeddings.weight.numel() - 1 > 2**24
    first = model_fingerprint(model)
    with torch.no_grad():
        model.glm.word_embeddings.weight[-1, -1] += 1.0  # the last value is sampled
    assert model_fingerprint(model) != first
