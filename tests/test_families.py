"""One plug-in point for backbone families, one checkpoint format, and role tokens a
tokenizer must add (trained beside LoRA, saved in the adapter, restored exactly)."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from recsysllm.checkpoint_meta import read_meta
from recsysllm.checkpoints import FEATURES_FILENAME, load_checkpoint_for_inference
from recsysllm.modeling.decoder import FAMILIES as DECODERS
from recsysllm.modeling.decoder.tokenization import HFTokenizer
from recsysllm.modeling.families import FAMILIES, family_of_model
from recsysllm.pipeline import prepare_from_tables
from recsysllm.training import build_trainer
from tests.conftest import make_tiny_glm_config
from tests.test_decoder import HF_CONFIG, SPECIALS, tiny_config, train_bpe
from tests.test_training import tiny_config as training_config
from tests.test_training import tiny_tables

REPO = Path(__file__).resolve().parent.parent
# Modules that must reach every backbone through recsysllm.modeling.families only.
FAMILY_NEUTRAL = (
    "pipeline",
    "training",
    "config",
    "checkpoint_meta",
    "tokenization",
    "checkpoints",
)
GLM_TARGETS = {"query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"}
LLAMA_TARGETS = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
FEATURES = {"age": "is {value} years old"}  # tiny_tables' user features


@pytest.fixture(scope="module")
def tokenizer_dir(tiny_tokenizer, tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    tiny_tokenizer.save_pretrained(directory)
    return directory


def _names(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, identifier or imported module) of every name the code uses or defines."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            found += [(node.lineno, node.module or "")]
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.Name):
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.FunctionDef | ast.ClassDef):
            found.append((node.lineno, node.name))
        elif isinstance(node, ast.arg):
            found.append((node.lineno, node.arg))
        elif isinstance(node, ast.Constant) and node.value in FAMILIES:
            found.append((node.lineno, repr(node.value)))  # a family compared by name
    return found


@pytest.mark.parametrize("module", FAMILY_NEUTRAL)
def test_family_neutral_modules_name_no_backbone_family(module):
    path = REPO / "recsysllm" / f"{module}.py"
    offending = []
    for line, name in _names(ast.parse(path.read_text(encoding="utf-8"))):
        lowered = name.lower()
        in_modeling = lowered.startswith("recsysllm.modeling") and lowered not in (
            "recsysllm.modeling.families",
            "recsysllm.modeling",
        )
        if "glm" in lowered or "decoder" in lowered or in_modeling or name.startswith("'"):
            offending.append(f"{path.name}:{line}: {name}")
    assert not offending, offending


def test_api_takes_feature_templates_from_the_checkpoint_not_the_data_sources():
    tree = ast.parse((REPO / "recsysllm" / "api.py").read_text(encoding="utf-8"))
    modules = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert not {m for m in modules if m and m.startswith("recsysllm.data.sources")}


def _glm_base(directory: Path) -> Path:
    """A saved random tiny GLM (its vocabulary fits conftest's tiny_tokenizer)."""
    from recsysllm.modeling import GLMForConditionalGeneration

    torch.manual_seed(0)
    GLMForConditionalGeneration(make_tiny_glm_config()).save_pretrained(directory)
    return directory


def _decoder_base(directory: Path, bpe, family: str = "llama", vocab_size: int | None = None):
    """A saved random transformers decoder with the BPE tokenizer next to it."""
    config = tiny_config(family)
    if vocab_size is not None:
        config.vocab_size = vocab_size
    torch.manual_seed(0)
    DECODERS[family].base_class(config).save_pretrained(directory)
    bpe.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(HF_CONFIG))
    return directory


def _train(
    tmp_path: Path, base: Path, tokenizer_path: Path | None, steps: int = 3, extra: tuple = ()
):
    overrides = [
        *extra,
        f"model.base_model={base}",
        "model.from_scratch=null",
        f"tokenizer.path={tokenizer_path if tokenizer_path else 'null'}",
        "lora.enabled=true",
        "lora.r=4",
        "lora.dropout=0.0",
        "lora.target_modules=null",
        f"max_steps={steps}",
        f"train.save_steps={steps}",
    ]
    config = training_config(tmp_path / "run", tmp_path / "unused", overrides)
    data = prepare_from_tables(tiny_tables(), config.data, seed=0)
    trainer, _ = build_trainer(config, data)
    trainer.train()
    return trainer, tmp_path / "run" / f"checkpoint-{steps}"


def _batch(trainer, count: int = 2) -> dict:
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(count)])
    del batch["batch_examples"]
    return batch


@pytest.mark.parametrize("family", ["glm", "decoder"])
def test_both_families_train_save_and_reload_through_one_code_path(family, tmp_path, tokenizer_dir):
    if family == "glm":
        base, tokenizer_path = _glm_base(tmp_path / "base"), tokenizer_dir
        targets, layers = GLM_TARGETS, 2
    else:
        base = _decoder_base(tmp_path / "base", train_bpe(SPECIALS))
        tokenizer_path, targets, layers = None, LLAMA_TARGETS, 2
    # The test BPE writes a 1-of-3 test list in up to 130 tokens: room for every stored list
    # (training refuses, before it starts, one the evaluation could not fit).
    extra = ("data.max_length=192",) if family == "decoder" else ()
    trainer, checkpoint = _train(tmp_path, base, tokenizer_path, extra=extra)
    assert family_of_model(trainer.model) == family
    # lora.target_modules: null -> exactly the family's defaults, in every layer
    assert set(trainer.model.peft_config["default"].target_modules) == targets
    wrapped = [n for n, m in trainer.model.named_modules() if hasattr(m, "lora_A")]
    assert len(wrapped) == layers * len(targets)
    batch = _batch(trainer)
    assert batch["input_ids"].shape[1] % 64 == 0  # both families pad training rows to 64
    # the checkpoint carries the data's user-feature templates
    record = json.loads((checkpoint / FEATURES_FILENAME).read_text())
    assert record == {"feature_templates": FEATURES}
    model, *_ = load_checkpoint_for_inference(checkpoint)
    trainer.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(**batch).logits, trainer.model(**batch).logits, rtol=1e-4, atol=1e-4
        )


@pytest.fixture(scope="module")
def glm_checkpoint(tmp_path_factory, tokenizer_dir):
    root = tmp_path_factory.mktemp("glm_run")
    _, checkpoint = _train(root, _glm_base(root / "base"), tokenizer_dir, steps=1)
    return checkpoint


def test_recommender_reads_feature_templates_from_the_checkpoint(glm_checkpoint):
    from recsysllm.api import Recommender

    rec = Recommender.from_checkpoint(glm_checkpoint)
    assert rec.feature_templates == FEATURES
    rec.predict_rating({"age": "25-34"}, rec.catalog.item_keys[0])  # features accepted


def test_a_checkpoint_without_feature_templates_loads_and_refuses_features(
    glm_checkpoint, tmp_path
):
    from recsysllm.api import Recommender

    old = tmp_path / "old"
    shutil.copytree(glm_checkpoint, old)
    # as checkpoints were written before user_features.json and added_token_ids existed
    (old / FEATURES_FILENAME).unlink()
    meta = json.loads((old / "recsysllm_meta.json").read_text())
    del meta["added_token_ids"]
    (old / "recsysllm_meta.json").write_text(json.dumps(meta))
    rec = Recommender.from_checkpoint(old)
    assert rec.feature_templates is None
    item = rec.catalog.item_keys[0]
    rec.predict_rating(None, item)  # queries without features still work
    with pytest.raises(ValueError, match=f"no {FEATURES_FILENAME}.*pass feature_templates="):
        rec.predict_rating({"age": "25-34"}, item)


def test_malformed_feature_templates_are_named(glm_checkpoint, tmp_path):
    from recsysllm.checkpoints import read_feature_templates

    (tmp_path / FEATURES_FILENAME).write_text(json.dumps({"feature_templates": {"age": "old"}}))
    with pytest.raises(ValueError, match=f"{FEATURES_FILENAME}: field 'feature_templates'"):
        read_feature_templates(tmp_path)


# ---------------------------------------------------------------- role tokens the tokenizer adds


@pytest.mark.parametrize("family", ["llama", "qwen3"])  # tied / untied output head
def test_added_role_rows_train_save_and_reload_to_identical_logits(family, tmp_path):
    bpe = train_bpe(["<|endoftext|>"])  # no reserved tokens: every role must be added
    backend_size = bpe.get_vocab_size()
    base = _decoder_base(tmp_path / "base", bpe, family, vocab_size=backend_size)
    tokenizer = HFTokenizer.from_pretrained(base)
    added = list(range(backend_size, backend_size + 6))  # cls mask smask gmask sop eop
    assert tokenizer.added_role_ids == added
    pretrained = DECODERS[family].base_class.from_pretrained(base).get_input_embeddings().weight

    trainer, checkpoint = _train(tmp_path, base, None)
    model = trainer.model
    rows = model.get_input_embeddings().weight.shape[0]
    assert rows == 448  # 426 ids, resized to a multiple of 64
    with torch.no_grad():
        weights = model.get_input_embeddings()(
            torch.arange(rows)
        )  # [rows, hidden], adapter applied
    mean = pretrained.mean(dim=0)
    # the pretrained rows are frozen; added rows in every training input ([CLS], [sop])
    # moved away from their mean init
    torch.testing.assert_close(weights[:backend_size], pretrained, rtol=0, atol=0)
    for role in (tokenizer.cls_token_id, tokenizer.sop_token_id):
        assert (weights[role] - mean).abs().max() > 1e-4
    torch.testing.assert_close(
        weights[backend_size + 6 :], mean.expand(rows - backend_size - 6, -1)
    )

    assert read_meta(checkpoint).added_token_ids == added
    with safe_open(checkpoint / "adapter_model.safetensors", "pt") as adapter:
        token_keys = [k for k in adapter.keys() if "trainable_tokens" in k]  # noqa: SIM118
        assert token_keys
        sizes = {tuple(adapter.get_tensor(k).shape) for k in token_keys}
    assert sizes == {(6, 32)}  # the 6 trained rows (PEFT also stores a resized embedding)

    reloaded, *_ = load_checkpoint_for_inference(checkpoint)
    batch = _batch(trainer)
    assert set(added) & set(batch["input_ids"].flatten().tolist())
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(**batch).logits, model(**batch).logits, rtol=1e-5, atol=1e-5
        )


def test_a_checkpoint_refuses_a_tokenizer_whose_added_rows_differ(tmp_path):
    import dataclasses

    from recsysllm.checkpoint_meta import CheckpointMismatchError, write_meta

    bpe = train_bpe(["<|endoftext|>"])
    base = _decoder_base(tmp_path / "base", bpe, "llama", vocab_size=bpe.get_vocab_size())
    _, checkpoint = _train(tmp_path, base, None, steps=1)
    meta = read_meta(checkpoint)
    write_meta(checkpoint, dataclasses.replace(meta, added_token_ids=meta.added_token_ids[:-1]))
    with pytest.raises(CheckpointMismatchError, match="adds token rows"):
        load_checkpoint_for_inference(checkpoint)


def test_config_names_the_registered_families_and_keeps_null_targets():
    from recsysllm.config import LoraArgs, ModelArgs

    with pytest.raises(ValueError, match=r"model\.family: 'gpt2' not in glm \| decoder \| null"):
        ModelArgs(base_model="x", family="gpt2")
    assert LoraArgs().target_modules is None  # null: the family's defaults
    with pytest.raises(ValueError, match=r"lora\.target_modules: must not be empty"):
        LoraArgs(target_modules=[])
