"""Tests for the GLM tokenizer (recsysllm.modeling.glm.tokenization) and the shared segment rules: GLM special ids, kind detection, segment tokenization."""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import sentencepiece as spm
from conftest import TINY_CORPUS
from hypothesis import given, settings
from hypothesis import strategies as st

from recsysllm.modeling.glm.tokenization import (
    GLMTokenizer,
    load_tokenizer,
    train_sentencepiece_tokenizer,
)
from recsysllm.schema import Example, Segment

GPT2_DIR = Path(__file__).parent / "assets" / "gpt2"
REPO_ROOT = Path(__file__).parent.parent


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(GPT2_DIR)


@pytest.fixture(scope="module")
def gpt2_reference():
    """transformers' own GPT-2 tokenizer built offline from the same files."""
    from transformers import GPT2TokenizerFast

    return GPT2TokenizerFast.from_pretrained(str(GPT2_DIR))


def entity(name: str, answer: bool = False) -> Segment:
    return Segment(name, entity=name, answer=answer)


def render(segments: list[Segment]) -> str:
    """The text a segment list stands for, under the documented space convention."""
    out = []
    for index, segment in enumerate(segments):
        if segment.is_entity:
            out.append(" " + segment.text)
        else:
            text = segment.text
            if index + 1 < len(segments) and segments[index + 1].is_entity and text.endswith(" "):
                text = text[:-1]
            out.append(text)
    return "".join(out)


# ---------------------------------------------------------------- GPT-2 (glm-10b / glm-2b)


def test_gpt2_special_ids_are_glm10b(gpt2):
    assert gpt2.kind == "gpt2"
    assert (gpt2.eos_token_id, gpt2.pad_token_id) == (50256, 50256)
    assert gpt2.sop_token_id == 50257
    assert gpt2.eop_token_id == 50258
    assert gpt2.cls_token_id == 50259
    assert gpt2.mask_token_id == 50260
    assert gpt2.sep_token_id == 50261
    assert gpt2.gmask_token_id == 50263
    assert gpt2.smask_token_id == 50264
    assert gpt2.special_token_ids == frozenset(range(50256, 50265))
    assert gpt2.vocab_size == 50265
    assert gpt2.banned_generation_ids == frozenset()
    texts = ["<|endoftext|>", "<|startofpiece|>", "<|endofpiece|>", "[CLS]", "[MASK]"]
    texts += ["[SEP]", "[UNUSED]", "[gMASK]", "[sMASK]"]
    decoded = [gpt2.decode([i], skip_special_tokens=False) for i in range(50256, 50265)]
    assert decoded == texts
    assert gpt2.decode(list(range(50256, 50265))) == ""


def test_gpt2_encode_matches_transformers(gpt2, gpt2_reference):
    samples = [
        "The user watched Toy Story (1995), then GoldenEye (1995). What next?",
        "Great fit and the fabric is soft.\n\nI love this dress, would buy again!",
        "  two  spaces, tabs\tand ünïcödé 日本語 — emoji 🎬 ",
        "Rating: 4.5/5 stars; user_id=A1B2C3 zip 55105",
    ]
    for text in samples:
        expected = gpt2_reference.encode(text, add_special_tokens=False)
        assert gpt2.encode(text) == expected
        assert gpt2.decode(expected) == text
    for name in ["Toy Story (1995)", "Seven (Se7en) (1995)", "Postino, Il (1994)"]:
        expected = tuple(gpt2_reference.encode(" " + name, add_special_tokens=False))
        assert gpt2.encode_entity(name) == expected


def test_special_strings_in_text_stay_plain_text(gpt2, gpt2_reference):
    text = "a review saying [MASK] and <|endoftext|> [gMASK]"
    ids = gpt2.encode(text)
    assert not set(ids) & gpt2.special_token_ids
    # transformers treats <|endoftext|> as special; compare the part before it.
    prefix = gpt2_reference.encode("a review saying [MASK] and", add_special_tokens=False)
    assert ids[: len(prefix)] == prefix
    assert gpt2.decode(ids) == text


def test_gpt2_entity_boundaries_are_token_boundaries(gpt2, gpt2_reference):
    def ref(text):
        return gpt2_reference.encode(text, add_special_tokens=False)

    segments = [Segment("I watched "), entity("Toy Story (1995)"), Segment(", then it rained")]
    ids, units = gpt2.tokenize_segments(segments)
    first, title, rest = ref("I watched"), ref(" Toy Story (1995)"), ref(", then it rained")
    assert ids == first + title + rest
    assert units == [-1] * len(first) + [0] * len(title) + [-1] * len(rest)
    # Mid-word: BPE of the whole string would merge across the entity; segments never do.
    ids, _ = gpt2.tokenize_segments([Segment("pre"), entity("fix"), Segment("ed")])
    assert ids == ref("pre") + ref(" fix") + ref("ed")


# ---------------------------------------------------------------- segment tokenization

TEXTS = [
    "The user watched ",
    " and ",
    ", then ",
    "Great! ",
    "It was fun. Next: ",
    "",
    " ",
    "(",
    "rated 4.5 stars.",
    "Which one? ",
    "?",
]
NAMES = ["Toy Story (1995)", "Heat (1995)", "Se7en", "Star Wars (1977)", "a b", "Mr. Smith?"]

segment_lists = st.lists(
    st.one_of(
        st.sampled_from(TEXTS).map(Segment),
        st.sampled_from(NAMES).map(entity),
    ),
    max_size=8,
)


def check_segments(tokenizer: GLMTokenizer, segments: list[Segment]) -> None:
    ids, units = tokenizer.tokenize_segments(segments)
    assert len(ids) == len(units)
    names = [s.text for s in segments if s.is_entity]
    assert sorted(set(units) - {-1}) == list(range(len(names)))
    for unit, name in enumerate(names):
        positions = [i for i, u in enumerate(units) if u == unit]
        assert positions == list(range(positions[0], positions[-1] + 1)), "entity split"
        assert tuple(ids[positions[0] : positions[-1] + 1]) == tokenizer.encode_entity(name)
    assert tokenizer.decode(ids) == render(segments)
    tokenized = tokenizer.tokenize_example(Example(tuple(segments), task="pretrain"))
    assert tokenized.input_ids == ids
    assert tokenized.unit_ids == units
    sentence_ids = tokenized.sentence_ids
    assert all(b - a in (0, 1) for a, b in zip(sentence_ids, sentence_ids[1:], strict=False))
    assert sentence_ids[:1] in ([], [0])


@settings(max_examples=60, deadline=None)
@given(segments=segment_lists)
def test_segments_property_gpt2(gpt2, segments):
    check_segments(gpt2, segments)


@settings(max_examples=60, deadline=None)
@given(segments=segment_lists)
def test_segments_property_sentencepiece(tiny_tokenizer, segments):
    check_segments(tiny_tokenizer, segments)


def test_gpt2_entity_ids_match_reference_everywhere(gpt2, gpt2_reference):
    segments = [entity("Heat (1995)"), Segment(" was better than "), entity("Heat (1995)")]
    ids, units = gpt2.tokenize_segments(segments)
    heat = gpt2_reference.encode(" Heat (1995)", add_special_tokens=False)
    assert ids[: len(heat)] == heat
    assert ids[-len(heat) :] == heat
    assert units[: len(heat)] == [0] * len(heat)
    assert units[-len(heat) :] == [1] * len(heat)


def test_unit_ids_hand_built(tiny_tokenizer):
    tok = tiny_tokenizer
    a, b = tok.encode_entity("Toy Story (1995)"), tok.encode_entity("Heat (1995)")
    t1, t2, t3 = tok.encode("I watched"), tok.encode(" and"), tok.encode(", then")
    segments = [
        Segment("I watched "),
        entity("Toy Story (1995)"),
        Segment(" and "),
        entity("Heat (1995)"),
        Segment(", then "),
        entity("Toy Story (1995)"),
    ]
    ids, units = tok.tokenize_segments(segments)
    assert ids == t1 + list(a) + t2 + list(b) + t3 + list(a)
    expected_units = [-1] * len(t1) + [0] * len(a) + [-1] * len(t2) + [1] * len(b)
    expected_units += [-1] * len(t3) + [2] * len(a)
    assert units == expected_units


def test_sentence_ids_hand_built(gpt2):
    segments = [
        Segment("Hello there. I watched "),
        entity("Mr. Smith?"),  # an entity never ends a sentence, even one ending with '?'
        Segment(". Great!  Then "),
        entity("Heat"),
        Segment(" next"),
    ]
    tokenized = gpt2.tokenize_example(Example(tuple(segments), task="pretrain"))
    pieces = [
        ("Hello there.", 0),
        (" I watched", 1),
        (" Mr. Smith?", 1),
        (".", 1),
        ("  Then", 3),  # the whitespace after "!" goes with the next sentence
        (" Heat", 3),
        (" next", 3),
    ]
    great = gpt2.encode(" Great!")
    expected_ids, expected_sentences = [], []
    for text, sentence in pieces[:4]:
        expected_ids += gpt2.encode(text)
        expected_sentences += [sentence] * len(gpt2.encode(text))
    expected_ids += great
    expected_sentences += [2] * len(great)
    for text, sentence in pieces[4:]:
        expected_ids += gpt2.encode(text)
        expected_sentences += [sentence] * len(gpt2.encode(text))
    assert tokenized.input_ids == expected_ids
    assert tokenized.sentence_ids == expected_sentences
    assert tokenized.answer_span is None


def test_answer_span(tiny_tokenizer):
    tok = tiny_tokenizer
    segments = (
        Segment("The user will watch "),
        entity("Heat (1995)", answer=True),
        Segment(" and", answer=True),
        Segment(" then more."),
    )
    example = Example(
        segments, task="sequential", answer_mask="mask", answer_type="item", target="Heat (1995)"
    )
    tokenized = tok.tokenize_example(example)
    start = len(tok.encode("The user will watch"))
    end = start + len(tok.encode_entity("Heat (1995)")) + len(tok.encode(" and"))
    assert tokenized.answer_span == (start, end)
    assert tokenized.answer_mask == "mask"
    assert tokenized.example is example
    assert tok.decode(tokenized.input_ids[start:end]) == " Heat (1995) and"


def test_answer_errors_name_the_example(tiny_tokenizer):
    split = Example(
        (entity("Heat", answer=True), Segment(" or "), entity("Babe", answer=True)),
        task="sequential",
        template_id="2-1",
        user="u7",
        answer_mask="mask",
    )
    with pytest.raises(ValueError, match=r"template='2-1', user='u7'.*not contiguous"):
        tiny_tokenizer.tokenize_example(split)
    empty = Example(
        (Segment("Rate it: "), Segment("", answer=True)),
        task="rating",
        user="u8",
        answer_mask="mask",
    )
    with pytest.raises(ValueError, match=r"user='u8'.*no tokens"):
        tiny_tokenizer.tokenize_example(empty)


def test_bad_entities_name_the_example(tiny_tokenizer):
    example = Example(
        (Segment("I watched "), Segment("", entity="item:42")), task="pretrain", user="u9"
    )
    with pytest.raises(ValueError, match=r"user='u9'.*segment 1 \(entity 'item:42'\).*empty"):
        tiny_tokenizer.tokenize_example(example)
    spaced = Example((Segment(" Heat", entity="Heat"),), task="pretrain", user="u10")
    with pytest.raises(ValueError, match=r"user='u10'.*leading space"):
        tiny_tokenizer.tokenize_example(spaced)


def test_encode_entity_is_cached(tiny_tokenizer):
    first = tiny_tokenizer.encode_entity("Fargo (1996)")
    assert tiny_tokenizer.encode_entity("Fargo (1996)") is first
    assert list(first) == tiny_tokenizer.encode(" Fargo (1996)")


def test_text_pieces_are_encoded_once_and_the_memory_is_bounded(monkeypatch, tmp_path):
    """A text piece seen before is not encoded again (prompts repeat their template
    text), the ids are encode()'s, and the memory is cleared when it is full."""
    tokenizer = load_tokenizer(GPT2_DIR)  # a fresh instance: an empty memory
    calls = []
    encode = tokenizer.encode
    monkeypatch.setattr(tokenizer, "encode", lambda text: calls.append(text) or encode(text))
    segments = [Segment("The user watched. It was"), entity("Heat (1995)"), Segment(" fine.")]
    first, _ = tokenizer.tokenize_segments(segments)
    assert calls == ["The user watched.", " It was", " Heat (1995)", " fine."]
    again, _ = tokenizer.tokenize_segments(segments)
    assert again == first == encode("The user watched. It was Heat (1995) fine.")
    assert len(calls) == 4  # nothing encoded twice
    monkeypatch.setattr("recsysllm.tokenization._PIECE_CACHE_SIZE", 2)
    tokenizer.tokenize_segments([Segment("Something new.")])  # the memory held 3: cleared
    assert tokenizer._piece_cache == {"Something new.": tuple(encode("Something new."))}


# ---------------------------------------------------------------- trained sentencepiece


def test_sentencepiece_training_is_deterministic(tmp_path):
    first = train_sentencepiece_tokenizer(TINY_CORPUS, tmp_path / "a", vocab_size=300)
    second = train_sentencepiece_tokenizer(list(TINY_CORPUS), tmp_path / "b", vocab_size=300)
    model_a = (tmp_path / "a" / "sentencepiece.model").read_bytes()
    assert model_a == (tmp_path / "b" / "sentencepiece.model").read_bytes()
    assert first.fingerprint == second.fingerprint
    other = train_sentencepiece_tokenizer(TINY_CORPUS[:-3], tmp_path / "c", vocab_size=300)
    assert other.fingerprint != first.fingerprint


def test_sentencepiece_specials_are_single_control_ids(tiny_tokenizer, tmp_path):
    tok = tiny_tokenizer
    assert tok.kind == "sentencepiece"
    assert tok.vocab_size <= 300  # fits tiny_glm_config's 320 embedding rows
    names = {
        "<|endoftext|>": tok.eos_token_id,
        "[SEP]": tok.sep_token_id,
        "[CLS]": tok.cls_token_id,
        "[MASK]": tok.mask_token_id,
        "<|startofpiece|>": tok.sop_token_id,
        "<|endofpiece|>": tok.eop_token_id,
        "[sMASK]": tok.smask_token_id,
        "[gMASK]": tok.gmask_token_id,
    }
    assert len(set(names.values())) == 8
    assert tok.pad_token_id == tok.eos_token_id
    assert tok.special_token_ids == frozenset(names.values())
    tok.save_pretrained(tmp_path)
    processor = spm.SentencePieceProcessor(model_file=str(tmp_path / "sentencepiece.model"))
    for text, token_id in names.items():
        assert processor.id_to_piece(token_id) == text
        assert processor.is_control(token_id)
        assert tok.decode([token_id], skip_special_tokens=False) == text
        assert token_id not in tok.encode(f"say {text} here")  # never matched in text
    ids = tok.encode_entity("Toy Story (1995)")
    assert processor.id_to_piece(ids[0]).startswith("▁T")  # the entity's space is its own
    after = tok.encode(", then")
    assert processor.id_to_piece(after[0]) == ","
    assert tok.decode([tok.cls_token_id, *ids, tok.eos_token_id]) == " Toy Story (1995)"


def test_sentencepiece_byte_fallback_when_vocab_has_room(tmp_path, tiny_tokenizer):
    text = "héllo 日本 🎬, tab\there"
    big = train_sentencepiece_tokenizer(TINY_CORPUS, tmp_path / "big", vocab_size=600)
    assert big.decode(big.encode(text)) == text
    # A 300-piece vocabulary has no room for 256 byte pieces: unseen characters are <unk>,
    # but every printable ASCII character still round-trips.
    ascii_text = "~Quiz #7: {x|y} @home ^_^ `code` \\ ok"
    assert tiny_tokenizer.decode(tiny_tokenizer.encode(ascii_text)) == ascii_text
    assert 0 in tiny_tokenizer.encode("日本")


# ---------------------------------------------------------------- chinese sentencepiece


def train_chinese_style_model(directory: Path) -> Path:
    """A plain sentencepiece model, as cog-pretrain.model is (no GLM specials inside)."""
    directory.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(TINY_CORPUS),
        model_prefix=str(directory / "cog-pretrain"),
        vocab_size=200,
        model_type="bpe",
        num_threads=1,
        minloglevel=2,
    )
    return directory / "cog-pretrain.model"


def test_chinese_sentencepiece_fixed_ids_and_ban(tmp_path):
    model_path = train_chinese_style_model(tmp_path / "glm-10b-chinese")
    tok = load_tokenizer(model_path.parent)
    assert tok.kind == "sentencepiece"
    assert tok.eos_token_id == tok.pad_token_id == 50000
    assert (tok.sep_token_id, tok.cls_token_id, tok.mask_token_id) == (50001, 50002, 50003)
    assert (tok.sop_token_id, tok.eop_token_id) == (50006, 50007)
    assert (tok.smask_token_id, tok.gmask_token_id) == (50008, 50009)
    assert tok.banned_generation_ids == frozenset({50009})
    assert tok.vocab_size == 50010
    processor = spm.SentencePieceProcessor(model_file=str(model_path))
    text = "The user watched Heat."
    assert tok.encode(text) == processor.encode(text)
    ids = [tok.cls_token_id, *tok.encode(text), tok.mask_token_id]
    assert tok.decode(ids) == processor.decode(processor.encode(text))
    assert tok.decode(ids, skip_special_tokens=False).startswith("[CLS]")
    assert tok.decode(ids, skip_special_tokens=False).endswith("[MASK]")
    with pytest.raises(ValueError, match="50005"):
        tok.decode([50005])  # between the pieces and the specials: never emitted
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)
    again = load_tokenizer(saved)
    assert again.fingerprint == tok.fingerprint
    assert again.special_tokens == tok.special_tokens
    assert again.banned_generation_ids == frozenset({50009})


# ---------------------------------------------------------------- BERT wordpiece (glm-large)


def write_bert_vocab(path: Path) -> list[str]:
    """A full-size (30522) vocab.txt laid out like bert-large-uncased's."""
    words = ["toy", "story", "(", ")", "1995", "the", "user", "watched", "heat", ",", ".", "!"]
    words += ["##s", "great", "then"]
    tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokens += words
    tokens += [f"[unused{i}]" for i in range(99, 99 + 30522 - len(tokens))]
    assert len(tokens) == 30522
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(tokens) + "\n", encoding="utf-8")
    return tokens


def test_wordpiece_glm_large(tmp_path):
    tokens = write_bert_vocab(tmp_path / "glm-large" / "vocab.txt")
    tok = load_tokenizer(tmp_path / "glm-large")
    assert tok.kind == "wordpiece"
    assert (tok.pad_token_id, tok.eos_token_id) == (0, 0)  # reference: eos = [PAD]
    assert (tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (101, 102, 103)
    assert (tok.sop_token_id, tok.eop_token_id) == (30522, 30523)
    assert tok.vocab_size == 30524
    for name in ("smask_token_id", "gmask_token_id"):
        with pytest.raises(ValueError, match="glm-large was trained without task masks"):
            getattr(tok, name)
    ids = tok.encode("The user WATCHED Toy Story (1995), then heats!")
    assert [tokens[i] for i in ids] == [
        "the", "user", "watched", "toy", "story", "(", "1995", ")", ",", "then", "heat", "##s", "!",
    ]  # fmt: skip
    assert tok.encode_entity("Toy Story") == (tokens.index("toy"), tokens.index("story"))
    assert tok.encode("[MASK]") != [103]  # plain text, like every kind
    assert tok.decode([101, *tok.encode("toy story"), 0, 30523]) == "toy story"
    saved = tmp_path / "saved"
    tok.save_pretrained(saved)
    assert load_tokenizer(saved).fingerprint == tok.fingerprint


def test_wordpiece_vocab_errors_name_file_and_line(tmp_path):
    directory = tmp_path / "dup"
    directory.mkdir()
    (directory / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[UNK]\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"vocab.txt, line 4: token '\[UNK\]' already on line 2"):
        load_tokenizer(directory)


# ---------------------------------------------------------------- save / load, detection


@pytest.mark.parametrize("which", ["gpt2", "sentencepiece"])
def test_save_load_round_trip_keeps_fingerprint(which, tmp_path, gpt2, tiny_tokenizer):
    tok = gpt2 if which == "gpt2" else tiny_tokenizer
    tok.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert config["kind"] == which
    assert not list(tmp_path.glob("*.tmp"))  # temp files were renamed away
    again = GLMTokenizer.from_pretrained(tmp_path)
    assert again.fingerprint == tok.fingerprint
    assert again.special_tokens == tok.special_tokens
    assert again.vocab_size == tok.vocab_size
    text = "The user watched Toy Story (1995), then Heat."
    assert again.encode(text) == tok.encode(text)
    clone = pickle.loads(pickle.dumps(tok))
    assert clone.fingerprint == tok.fingerprint
    assert clone.encode(text) == tok.encode(text)


def test_fingerprint_is_stable_across_processes(gpt2):
    code = (
        "from recsysllm.modeling.glm.tokenization import load_tokenizer; "
        f"print(load_tokenizer({str(GPT2_DIR)!r}).fingerprint)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO_ROOT
    )
    assert result.stdout.strip() == gpt2.fingerprint
    assert len(gpt2.fingerprint) == 64


def test_fingerprint_depends_on_vocabulary_and_special_ids(tmp_path, gpt2):
    changed = GLMTokenizer("gpt2", dict(gpt2._files), {**gpt2.special_tokens, "mask": 50262})
    assert changed.fingerprint != gpt2.fingerprint
    shutil.copytree(GPT2_DIR, tmp_path / "copy")
    merges = tmp_path / "copy" / "merges.txt"
    merges.write_text(merges.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    assert load_tokenizer(tmp_path / "copy").fingerprint != gpt2.fingerprint


def test_tampered_saved_files_are_detected(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    train_sentencepiece_tokenizer(TINY_CORPUS[:5], tmp_path / "other", vocab_size=150)
    shutil.copy(tmp_path / "other" / "sentencepiece.model", tmp_path / "sentencepiece.model")
    with pytest.raises(ValueError, match=r"tokenizer_config.json: field 'fingerprint'"):
        load_tokenizer(tmp_path)


def test_bad_directory_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "README.md").write_text("not a tokenizer")
    (tmp_path / "vocab.json").write_text("{}")  # no merges.txt next to it
    with pytest.raises(ValueError) as error:
        load_tokenizer(tmp_path)
    message = str(error.value)
    for looked_for in ("tokenizer_config.json", "vocab.json + merges.txt", "*.model", "vocab.txt"):
        assert looked_for in message
    assert "README.md" in message  # and what was found


def test_malformed_files_are_named(tmp_path):
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "tokenizer_config.json").write_text('{"kind": "gpt2",\n  oops}')
    with pytest.raises(ValueError, match=r"tokenizer_config.json, line 2: malformed JSON"):
        load_tokenizer(bad_json)
    roberta = tmp_path / "roberta"
    roberta.mkdir()
    (roberta / "vocab.json").write_text(json.dumps({"<s>": 0, "</s>": 2}))
    (roberta / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match=r"vocab.json: not a GPT-2 vocabulary"):
        load_tokenizer(roberta)
    missing_field = tmp_path / "missing_field"
    missing_field.mkdir()
    config = {"recsysllm_tokenizer_version": 1, "kind": "gpt2"}
    (missing_field / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"tokenizer_config.json: missing field 'special_tokens'"):
        load_tokenizer(missing_field)
    ambiguous = tmp_path / "ambiguous"
    shutil.copytree(GPT2_DIR, ambiguous)
    (ambiguous / "vocab.txt").write_text("[UNK]\n")
    with pytest.raises(ValueError, match="ambiguous"):
        load_tokenizer(ambiguous)


def test_unknown_ids_are_an_error(gpt2):
    with pytest.raises(ValueError, match="50300"):
        gpt2.decode([464, 50300])  # one of glm-10b's padding rows
