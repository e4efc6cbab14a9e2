"""The GLM family's tokenizers: the public GLM checkpoints' vocabularies and special tokens.

One class, :class:`GLMTokenizer`, wraps the three tokenizer families of the public
GLM checkpoints (see GLM_REFERENCE.md) plus sentencepiece models we train ourselves:

| kind            | checkpoint                             | files                  | backend                   |
|-----------------|----------------------------------------|------------------------|---------------------------|
| "gpt2"          | glm-10b, glm-2b                        | vocab.json, merges.txt | ``tokenizers`` BPE        |
| "sentencepiece" | glm-large-chinese, glm-10b-chinese     | ``*.model``            | ``sentencepiece``         |
| "sentencepiece" | ours (train_sentencepiece_tokenizer)   | sentencepiece.model    | ``sentencepiece``         |
| "wordpiece"     | glm-large (BERT uncased)               | vocab.txt              | ``tokenizers`` WordPiece  |

Special tokens are never produced by :meth:`GLMTokenizer.encode`: user text such as
"[MASK]" or "<|endoftext|>" (recommendation data can contain anything) is tokenized as
plain text, and only the collator/generation insert special ids, by id. This is why the
backends are built without added special tokens.

Segment tokenization (entities, sentences, the answer span) is shared with every
backbone's tokenizer: :class:`recsysllm.tokenization.SegmentTokenizer`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import sentencepiece as spm
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

from recsysllm.files import atomic_directory, atomic_write
from recsysllm.tokenization import SegmentTokenizer, read_json

KINDS = ("gpt2", "sentencepiece", "wordpiece")

CONFIG_FILE = "tokenizer_config.json"
# Marker key that tells our own tokenizer_config.json from the one of a THUDM checkpoint.
CONFIG_MARKER = "recsysllm_tokenizer_version"
CONFIG_VERSION = 1

# Canonical file names per kind, as written by save_pretrained (the fingerprint hashes
# them, so a THUDM "cog-pretrain.model" and its saved copy hash the same).
KIND_FILES = {
    "gpt2": ("vocab.json", "merges.txt"),
    "sentencepiece": ("sentencepiece.model",),
    "wordpiece": ("vocab.txt",),
}

# GLM special token surface strings, by the names used throughout recsysllm.
SPECIAL_TEXT = {
    "eos": "<|endoftext|>",
    "pad": "<|endoftext|>",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
    "smask": "[sMASK]",
    "gmask": "[gMASK]",
    "sop": "<|startofpiece|>",
    "eop": "<|endofpiece|>",
    "unused": "[UNUSED]",
}

# glm-10b / glm-2b: GPT-2's 50257 ids, then the GLM command tokens appended in this order.
GPT2_SPECIAL_IDS = {
    "eos": 50256,
    "pad": 50256,
    "sop": 50257,
    "eop": 50258,
    "cls": 50259,
    "mask": 50260,
    "sep": 50261,
    "unused": 50262,
    "gmask": 50263,
    "smask": 50264,
}
GPT2_TEXT_VOCAB_SIZE = 50257

# glm-large-chinese / glm-10b-chinese (the reference's ChineseSPTokenizer with
# fix_command_token, numbered from the sentencepiece size, 50000 for cog-pretrain.model).
CHINESE_SP_SPECIAL_IDS = {
    "eos": 50000,
    "pad": 50000,
    "sep": 50001,
    "cls": 50002,
    "mask": 50003,
    "sop": 50006,
    "eop": 50007,
    "smask": 50008,
    "gmask": 50009,
}
CHINESE_SP_TEXT_VOCAB_SIZE = 50000
# glm-10b-chinese once had eop and gMASK on one id; the converted checkpoint copied row
# 50007 to 50009, so 50009 must never be generated.
CHINESE_SP_BANNED_IDS = frozenset({50009})

# glm-large: the BERT uncased vocabulary's own [PAD]/[CLS]/[SEP]/[MASK]; sop/eop are
# appended after the 30522 pieces. The reference BertWordPieceTokenizer maps its 'eos'
# command token to [PAD] (id 0), so glm-large was pretrained with [PAD] as eos: we keep
# that (eos = pad = [PAD]) rather than [SEP].
WORDPIECE_VOCAB_TOKENS = {
    "eos": "[PAD]",
    "pad": "[PAD]",
    "cls": "[CLS]",
    "sep": "[SEP]",
    "mask": "[MASK]",
}
WORDPIECE_UNK = "[UNK]"

# The 8 GLM special strings a trained sentencepiece model carries as control symbols
# (control symbols are never matched in text, and each is exactly one id).
SP_CONTROL_SYMBOLS = (
    "<|endoftext|>",
    "[SEP]",
    "[CLS]",
    "[MASK]",
    "<|startofpiece|>",
    "<|endofpiece|>",
    "[sMASK]",
    "[gMASK]",
)
_SP_TRAINED_NAMES = ("eos", "pad", "sep", "cls", "mask", "sop", "eop", "smask", "gmask")

# Sentence ends: the whitespace after . ! ? goes with the next sentence.

# Printable ASCII without whitespace: always taught to trained sentencepiece models so
# that ASCII text never maps to <unk>, even in a tiny vocabulary without byte fallback.
_ASCII_LINE = "".join(c for c in string.printable if not c.isspace())


class GLMTokenizer(SegmentTokenizer):
    """Tokenizer of a GLM checkpoint (or a from-scratch sentencepiece model).

    Build one with :meth:`from_pretrained` / :func:`load_tokenizer` or
    :func:`train_sentencepiece_tokenizer`; the constructor takes the raw files.

    Attributes:
        kind: "gpt2" | "sentencepiece" | "wordpiece".
        vocab_size: 1 + the largest id this tokenizer can emit, specials included (the
            model needs at least this many embedding rows).
        special_tokens: name ("eos", "pad", "cls", "sep", "mask", "smask", "gmask",
            "sop", "eop", "unused") -> id, for the specials this tokenizer has.
        banned_generation_ids: ids generation must never emit (glm-10b-chinese: 50009).

    Example:
        >>> tok = load_tokenizer("checkpoints/glm-10b")  # doctest: +SKIP
        >>> tok.encode_entity("Toy Story (1995)")  # doctest: +SKIP
        (10977, 8362, 357, 21908, 8)
    """

    def __init__(
        self,
        kind: str,
        files: dict[str, bytes],
        special_tokens: dict[str, int],
        banned_generation_ids: Iterable[int] = (),
    ) -> None:
        """Builds the backend from file contents.

        Args:
            kind: one of KINDS.
            files: canonical file name (KIND_FILES[kind]) -> file content.
            special_tokens: special token name (a key of SPECIAL_TEXT) -> id.
            banned_generation_ids: ids generation must never emit.
        """
        if kind not in KINDS:
            raise ValueError(f"tokenizer kind {kind!r} not in {KINDS}")
        missing = [name for name in KIND_FILES[kind] if name not in files]
        if missing:
            raise ValueError(f"{kind} tokenizer needs files {missing}")
        unknown = sorted(set(special_tokens) - set(SPECIAL_TEXT))
        if unknown:
            raise ValueError(
                f"unknown special token names {unknown}; known: {sorted(SPECIAL_TEXT)}"
            )
        self.kind = kind
        self._files = {name: files[name] for name in KIND_FILES[kind]}
        self.special_tokens = dict(special_tokens)
        self.banned_generation_ids = frozenset(int(i) for i in banned_generation_ids)
        self._special_text_by_id = {
            i: SPECIAL_TEXT[name] for name, i in self.special_tokens.items()
        }
        self._entity_cache: dict[str, tuple[int, ...]] = {}
        self._fingerprint: str | None = None

        if kind == "sentencepiece":
            self._sp = spm.SentencePieceProcessor(model_proto=self._files["sentencepiece.model"])
            self._backend_size = self._sp.get_piece_size()
        else:
            self._hf = _build_hf_backend(kind, self._files)
            self._backend_size = self._hf.get_vocab_size()
        self.vocab_size = max(self._backend_size, max(self.special_tokens.values(), default=-1) + 1)

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuild from the files: datasets.map(num_proc=...) and DataLoader workers pickle us.
        return (
            GLMTokenizer,
            (self.kind, self._files, self.special_tokens, sorted(self.banned_generation_ids)),
        )

    def __repr__(self) -> str:
        return (
            f"GLMTokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, "
            f"fingerprint={self.fingerprint[:12]!r})"
        )

    # ------------------------------------------------------------------ special ids

    def _special(self, name: str) -> int:
        if name in self.special_tokens:
            return self.special_tokens[name]
        if self.kind == "wordpiece" and name in ("smask", "gmask"):
            raise ValueError(
                f"this BERT wordpiece tokenizer (glm-large) has no {SPECIAL_TEXT[name]} token: "
                "glm-large was trained without task masks ([sMASK]/[gMASK]); use [MASK] "
                "(answer_mask='mask') or a glm-10b / glm-2b / chinese checkpoint"
            )
        raise ValueError(f"this {self.kind} tokenizer has no {SPECIAL_TEXT[name]} token")

    @property
    def cls_token_id(self) -> int:
        return self._special("cls")

    @property
    def eos_token_id(self) -> int:
        return self._special("eos")

    @property
    def pad_token_id(self) -> int:
        return self._special("pad")

    @property
    def sep_token_id(self) -> int:
        return self._special("sep")

    @property
    def mask_token_id(self) -> int:
        return self._special("mask")

    @property
    def smask_token_id(self) -> int:
        return self._special("smask")

    @property
    def gmask_token_id(self) -> int:
        return self._special("gmask")

    @property
    def sop_token_id(self) -> int:
        return self._special("sop")

    @property
    def eop_token_id(self) -> int:
        return self._special("eop")

    @property
    def special_token_ids(self) -> frozenset[int]:
        """Ids of all special tokens (never produced by :meth:`encode`)."""
        return frozenset(self.special_tokens.values())

    @property
    def fingerprint(self) -> str:
        """sha256 hex of kind, vocabulary files and special ids (same files -> same value)."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            header = {
                "kind": self.kind,
                "special_tokens": self.special_tokens,
                "banned_generation_ids": sorted(self.banned_generation_ids),
            }
            digest.update(json.dumps(header, sort_keys=True).encode())
            for name in KIND_FILES[self.kind]:
                content = self._files[name]
                digest.update(f"\n{name}:{len(content)}\n".encode())
                digest.update(content)
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    # ------------------------------------------------------------------ encode / decode

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, no special tokens added.

        Special strings inside ``text`` ("[MASK]", "<|endoftext|>", ...) are tokenized as
        ordinary text, never turned into special ids: recommendation data (titles,
        reviews) may contain such strings, and a review must not be able to inject a
        mask or an end of text. Special ids are inserted by id only (collator, generation).
        """
        if not text:
            return []
        if self.kind == "sentencepiece":
            return self._sp.encode(text)
        return self._hf.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; special tokens are dropped or written as their strings.

        Byte-level BPE and our trained sentencepiece models decode exactly what was
        encoded; wordpiece (lower-cased, whitespace-split) does not round-trip.

        Raises:
            ValueError: an id outside the ids this tokenizer can emit (e.g. one of the
                model's padding rows 50265..50303 for glm-10b).
        """
        pieces: list[str] = []
        run: list[int] = []
        for token_id in ids:
            token_id = int(token_id)
            if token_id in self._special_text_by_id:
                pieces.append(self._decode_run(run))
                run = []
                if not skip_special_tokens:
                    pieces.append(self._special_text_by_id[token_id])
            elif 0 <= token_id < self._backend_size:
                run.append(token_id)
            else:
                raise ValueError(
                    f"token id {token_id} is not in this {self.kind} tokenizer's vocabulary "
                    f"(text ids 0..{self._backend_size - 1}, special ids {sorted(self.special_token_ids)})"
                )
        pieces.append(self._decode_run(run))
        return "".join(pieces)

    def _decode_run(self, ids: list[int]) -> str:
        if not ids:
            return ""
        if self.kind == "sentencepiece":
            return self._sp.decode(ids)
        return self._hf.decode(ids, skip_special_tokens=False)

    # ------------------------------------------------------------------ save / load

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Writes the vocabulary files and tokenizer_config.json (each file atomically).

        The config is written last and records the fingerprint, so a reload detects
        files that changed or were half-written.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        for name, content in self._files.items():
            atomic_write(directory / name, content)
        config = {
            CONFIG_MARKER: CONFIG_VERSION,
            "kind": self.kind,
            "files": list(KIND_FILES[self.kind]),
            "special_tokens": self.special_tokens,
            "banned_generation_ids": sorted(self.banned_generation_ids),
            "fingerprint": self.fingerprint,
        }
        atomic_write(directory / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> GLMTokenizer:
        """Loads a tokenizer directory, detecting its kind from the files.

        Looked for, in this order:

        - ``tokenizer_config.json`` written by :meth:`save_pretrained` (has the key
          ``recsysllm_tokenizer_version``): kind and special ids as recorded;
        - ``vocab.json`` + ``merges.txt``: GPT-2 BPE of glm-10b / glm-2b, specials
          50256..50264 (GPT2_SPECIAL_IDS);
        - one ``*.model``: sentencepiece of glm-large-chinese / glm-10b-chinese, specials
          at the fixed ids 50000..50009 (CHINESE_SP_SPECIAL_IDS), 50009 banned from
          generation. The reference numbers them from the model's piece count, which is
          50000 for cog-pretrain.model; a smaller model keeps the same fixed ids (the ids
          between its last piece and 50000 are simply never emitted), so embedding rows
          always mean the same token. A model with more than 50000 pieces is an error.
        - ``vocab.txt``: BERT uncased wordpiece of glm-large, [PAD]/[CLS]/[SEP]/[MASK]
          from the vocabulary, sop/eop = the two ids after it (30522/30523), eos = pad =
          [PAD] as in the reference, no [sMASK]/[gMASK].

        Raises:
            FileNotFoundError: the path does not exist or is not a directory.
            ValueError: no layout matches (the message lists the files looked for and
                found), several do, or a file is malformed (named in the message).
        """
        directory = Path(path)
        if not directory.is_dir():
            raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
        config_path = directory / CONFIG_FILE
        if config_path.is_file():
            config = read_json(config_path)
            if isinstance(config, dict) and CONFIG_MARKER in config:
                return cls._from_own_config(directory, config)

        names = sorted(p.name for p in directory.iterdir())
        sp_models = [n for n in names if n.endswith(".model")]
        layouts = []
        if "vocab.json" in names and "merges.txt" in names:
            layouts.append("gpt2")
        if sp_models:
            layouts.append("sentencepiece")
        if "vocab.txt" in names:
            layouts.append("wordpiece")
        if not layouts:
            raise ValueError(
                f"{str(directory)!r} is not a tokenizer directory: looked for "
                f"{CONFIG_FILE} (recsysllm), vocab.json + merges.txt (GPT-2 BPE: glm-10b, "
                "glm-2b), *.model (sentencepiece: glm-large-chinese, glm-10b-chinese), "
                f"vocab.txt (BERT wordpiece: glm-large); found {names}"
            )
        if len(layouts) > 1:
            raise ValueError(
                f"{str(directory)!r} is ambiguous: it matches tokenizer layouts {layouts}"
            )
        if layouts == ["gpt2"]:
            return cls._from_gpt2_files(directory)
        if layouts == ["sentencepiece"]:
            if len(sp_models) > 1:
                raise ValueError(f"{str(directory)!r} has several sentencepiece models {sp_models}")
            return cls._from_chinese_sp(directory / sp_models[0])
        return cls._from_bert_vocab(directory / "vocab.txt")

    @classmethod
    def _from_own_config(cls, directory: Path, config: dict[str, Any]) -> GLMTokenizer:
        config_path = directory / CONFIG_FILE
        if config[CONFIG_MARKER] != CONFIG_VERSION:
            raise ValueError(
                f"{config_path}: field {CONFIG_MARKER!r} is {config[CONFIG_MARKER]!r}, "
                f"this version of recsysllm reads {CONFIG_VERSION}"
            )
        for key in ("kind", "special_tokens", "banned_generation_ids", "fingerprint"):
            if key not in config:
                raise ValueError(f"{config_path}: missing field {key!r}")
        kind = config["kind"]
        if kind not in KINDS:
            raise ValueError(f"{config_path}: field 'kind' is {kind!r}, expected one of {KINDS}")
        special = config["special_tokens"]
        if not isinstance(special, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in special.values()
        ):
            raise ValueError(f"{config_path}: field 'special_tokens' must map names to integer ids")
        files = {}
        for name in KIND_FILES[kind]:
            file_path = directory / name
            if not file_path.is_file():
                raise ValueError(
                    f"{config_path}: {kind} tokenizer file {str(file_path)!r} is missing"
                )
            files[name] = file_path.read_bytes()
        try:
            tokenizer = cls(kind, files, special, config["banned_generation_ids"])
        except ValueError as error:
            raise ValueError(f"{config_path}: {error}") from None
        if tokenizer.fingerprint != config["fingerprint"]:
            raise ValueError(
                f"{config_path}: field 'fingerprint' does not match the files in "
                f"{str(directory)!r} (changed or half-written since save_pretrained)"
            )
        return tokenizer

    @classmethod
    def _from_gpt2_files(cls, directory: Path) -> GLMTokenizer:
        vocab_path = directory / "vocab.json"
        vocab = read_json(vocab_path)
        if not isinstance(vocab, dict) or vocab.get("<|endoftext|>") != GPT2_SPECIAL_IDS["eos"]:
            raise ValueError(
                f"{vocab_path}: not a GPT-2 vocabulary (field '<|endoftext|>' must be "
                f"{GPT2_SPECIAL_IDS['eos']}); glm-roberta-large's RoBERTa BPE is not supported"
            )
        if len(vocab) != GPT2_TEXT_VOCAB_SIZE:
            raise ValueError(
                f"{vocab_path}: has {len(vocab)} entries, the GPT-2 vocabulary has "
                f"{GPT2_TEXT_VOCAB_SIZE} (GLM's specials 50257..50264 are appended after it)"
            )
        files = {
            "vocab.json": vocab_path.read_bytes(),
            "merges.txt": (directory / "merges.txt").read_bytes(),
        }
        return cls("gpt2", files, GPT2_SPECIAL_IDS)

    @classmethod
    def _from_chinese_sp(cls, model_path: Path) -> GLMTokenizer:
        content = model_path.read_bytes()
        try:
            pieces = spm.SentencePieceProcessor(model_proto=content).get_piece_size()
        except (RuntimeError, OSError) as error:
            raise ValueError(f"{model_path}: not a sentencepiece model ({error})") from None
        if pieces > CHINESE_SP_TEXT_VOCAB_SIZE:
            raise ValueError(
                f"{model_path}: has {pieces} pieces, more than the {CHINESE_SP_TEXT_VOCAB_SIZE} "
                "below GLM's fixed chinese special ids 50000..50009"
            )
        return cls(
            "sentencepiece",
            {"sentencepiece.model": content},
            CHINESE_SP_SPECIAL_IDS,
            CHINESE_SP_BANNED_IDS,
        )

    @classmethod
    def _from_bert_vocab(cls, vocab_path: Path) -> GLMTokenizer:
        content = vocab_path.read_bytes()
        vocab = _parse_bert_vocab(vocab_path, content)
        special = {}
        for name, token in WORDPIECE_VOCAB_TOKENS.items():
            if token not in vocab:
                raise ValueError(f"{vocab_path}: BERT vocabulary has no {token} line")
            special[name] = vocab[token]
        special["sop"] = len(vocab)
        special["eop"] = len(vocab) + 1
        return cls("wordpiece", {"vocab.txt": content}, special)


def load_tokenizer(path: str | os.PathLike) -> GLMTokenizer:
    """Loads a tokenizer directory (see :meth:`GLMTokenizer.from_pretrained`)."""
    return GLMTokenizer.from_pretrained(path)


def load_saved_tokenizer(path: str | os.PathLike) -> GLMTokenizer:
    """Loads a directory written by :meth:`GLMTokenizer.save_pretrained`, and nothing else.

    For directories recsysllm wrote itself (``output_dir/tokenizer``, a checkpoint's
    ``tokenizer/``): one without our ``tokenizer_config.json`` is a save that did not
    finish, and must not be read as a THUDM layout (a lone ``sentencepiece.model``
    would otherwise load as the 50k-id Chinese tokenizer).

    Raises:
        FileNotFoundError: the directory does not exist.
        ValueError: the directory lacks the config written by save_pretrained, or its
            files do not match the recorded fingerprint (named in the message).
    """
    directory = Path(path)
    if not directory.is_dir():
        raise FileNotFoundError(f"tokenizer directory {str(directory)!r} does not exist")
    config_path = directory / CONFIG_FILE
    config = read_json(config_path) if config_path.is_file() else None
    if not isinstance(config, dict) or CONFIG_MARKER not in config:
        found = sorted(p.name for p in directory.iterdir())
        raise ValueError(
            f"{config_path}: missing or not written by recsysllm (field {CONFIG_MARKER!r}); "
            f"{str(directory)!r} holds {found}: an incomplete save (interrupted run?). "
            "Delete the directory to train or save the tokenizer again"
        )
    return GLMTokenizer._from_own_config(directory, config)


def train_sentencepiece_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 8000, **kw: Any
) -> GLMTokenizer:
    """Trains a sentencepiece BPE model in-process and saves it as a GLMTokenizer.

    The model keeps the leading-space convention intact: no dummy prefix, identity
    normalisation, no whitespace folding, so ``" Toy Story"`` encodes to pieces whose
    first starts with "▁" and a "," after an entity stays its own piece. Every training
    text is fed with one leading space (as entities are encoded) so first words learn
    their "▁"-prefixed pieces. The 8 GLM specials are control symbols (ids 1..8 after
    <unk> 0): one id each, never matched in text. Printable ASCII is always in the
    vocabulary; byte fallback (any text encodes losslessly) is on whenever the vocabulary
    has room for the 256 byte pieces besides the corpus' characters, otherwise unseen
    characters map to <unk> (the case of tiny test vocabularies such as 300).
    Deterministic: one thread, no sampling, so the same texts give the same model.

    Args:
        texts: training sentences (a list or any iterable, read once).
        out_dir: directory the tokenizer is saved to (save_pretrained layout).
        vocab_size: number of pieces, specials included (an upper bound: sentencepiece
            stops early on a corpus too small to fill it).
        **kw: extra or overriding ``sentencepiece.SentencePieceTrainer.train`` options.

    Returns:
        The trained tokenizer (also saved in ``out_dir``).

    Example:
        >>> tok = train_sentencepiece_tokenizer(["Toy Story (1995)", "Heat (1995)"], "out",
        ...                                     vocab_size=120)  # doctest: +SKIP
    """
    corpus = []
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{index}] is {type(text).__name__}, expected str")
        if text.strip():
            corpus.append(" " + text)
    if not corpus:
        raise ValueError("train_sentencepiece_tokenizer: texts holds no non-blank text")
    corpus.append(_ASCII_LINE)
    characters = set("".join(corpus)) - {" "}
    # <unk> + control symbols + "▁" + every character must fit beside the 256 byte pieces.
    byte_fallback = vocab_size >= 1 + len(SP_CONTROL_SYMBOLS) + 1 + len(characters) + 256
    options: dict[str, Any] = {
        "model_type": "bpe",
        "vocab_size": vocab_size,
        "control_symbols": list(SP_CONTROL_SYMBOLS),
        "unk_id": 0,
        "bos_id": -1,
        "eos_id": -1,
        "pad_id": -1,
        "add_dummy_prefix": False,
        "remove_extra_whitespaces": False,
        "normalization_rule_name": "identity",
        "byte_fallback": byte_fallback,
        "character_coverage": 1.0,
        "hard_vocab_limit": False,
        "num_threads": 1,
        "input_sentence_size": 0,
        "shuffle_input_sentence": False,
        "minloglevel": 2,
    }
    options.update(kw)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(corpus), model_writer=model, **options)
    content = model.getvalue()
    processor = spm.SentencePieceProcessor(model_proto=content)
    special = {}
    for name in _SP_TRAINED_NAMES:
        piece = SPECIAL_TEXT[name]
        token_id = processor.piece_to_id(piece)
        if processor.id_to_piece(token_id) != piece or not processor.is_control(token_id):
            raise ValueError(
                f"trained sentencepiece model has no control symbol {piece!r} "
                "(do not override control_symbols)"
            )
        special[name] = token_id
    tokenizer = GLMTokenizer("sentencepiece", {"sentencepiece.model": content}, special)
    out_dir = Path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        tokenizer.save_pretrained(out_dir)  # a directory holding other files: file by file
    else:
        # A directory of its own appears complete or not at all: a run killed while saving
        # must not leave a model file without its config (read back as another kind).
        with atomic_directory(out_dir) as staging:
            tokenizer.save_pretrained(staging)
    return tokenizer


def _build_hf_backend(kind: str, files: dict[str, bytes]) -> Tokenizer:
    """A ``tokenizers`` pipeline without added special tokens (see GLMTokenizer.encode)."""
    if kind == "gpt2":
        vocab = json.loads(files["vocab.json"])
        merges = []
        for line in files["merges.txt"].decode("utf-8").splitlines():
            if line.startswith("#version") or not line.strip():
                continue
            left, _, right = line.partition(" ")
            merges.append((left, right))
        tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        return tokenizer
    vocab = _parse_bert_vocab(Path("vocab.txt"), files["vocab.txt"])
    tokenizer = Tokenizer(models.WordPiece(vocab=vocab, unk_token=WORDPIECE_UNK))
    # glm-large is BERT *uncased*: lower-case and strip accents as bert-large-uncased does.
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def _parse_bert_vocab(path: Path, content: bytes) -> dict[str, int]:
    """vocab.txt: one token a line, id = line number - 1 (as BERT's load_vocab)."""
    lines = content.decode("utf-8").split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    vocab: dict[str, int] = {}
    for index, line in enumerate(lines):
        token = line.rstrip("\r")
        if not token:
            raise ValueError(f"{path}, line {index + 1}: empty token")
        if token in vocab:
            raise ValueError(
                f"{path}, line {index + 1}: token {token!r} already on line {vocab[token] + 1}"
            )
        vocab[token] = index
    if WORDPIECE_UNK not in vocab:
        raise ValueError(f"{path}: BERT vocabulary has no {WORDPIECE_UNK} line")
    return vocab
