"""Shared fixtures: tiny tokenizers and models built in-process, no network."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

# A small fixed corpus: movie-like titles, user attributes and review sentences,
# enough for a sentencepiece model that every test can train in well under a second.
TINY_TITLES = [
    "Toy Story (1995)",
    "GoldenEye (1995)",
    "Four Rooms (1995)",
    "Get Shorty (1995)",
    "Copycat (1995)",
    "Twelve Monkeys (1995)",
    "Babe (1995)",
    "Dead Man Walking (1995)",
    "Richard III (1995)",
    "Seven (Se7en) (1995)",
    "The Usual Suspects (1995)",
    "Mighty Aphrodite (1995)",
    "Postino, Il (1994)",
    "Heat (1995)",
    "Sabrina (1995)",
    "Star Wars (1977)",
    "Fargo (1996)",
    "Return of the Jedi (1983)",
    "Contact (1997)",
    "Scream (1996)",
]
TINY_CORPUS = (
    TINY_TITLES
    + [
        "The user is 25-34 years old, works as a programmer and lives in zip code 55105.",
        "The user is a 18-24 year old student and she watched these movies in order.",
        "Which movie will the user watch next? Answer with one title.",
        "How many stars would the user give this movie on a scale of 1 to 5? 4 stars.",
        "Great fit and the fabric is soft. I love this dress, would buy again.",
        "Runs small, the color was not as pictured. Returned it.",
        "Does the user like the movie? yes. Does the user like the movie? no.",
        "Recommend one of the following candidates to the user: a list of titles.",
    ]
    * 3
)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A sentencepiece GLMTokenizer trained on TINY_CORPUS (all GLM special tokens)."""
    from recsysllm.modeling.glm.tokenization import train_sentencepiece_tokenizer

    out_dir = tmp_path_factory.mktemp("tiny_spm")
    return train_sentencepiece_tokenizer(TINY_CORPUS, out_dir, vocab_size=300)


def make_tiny_glm_config():
    """A 2-layer GLM config, hidden 32, no dropout, 320 vocab rows (fits ``tiny_tokenizer``)."""
    from recsysllm.modeling import GLMConfig

    return GLMConfig(
        vocab_size=320,
        hidden_size=32,
        num_layers=2,
        num_attention_heads=4,
        max_sequence_length=128,
        embedding_dropout_prob=0.0,
        attention_dropout_prob=0.0,
        output_dropout_prob=0.0,
    )


@pytest.fixture
def tiny_glm_config():
    """A 2-layer GLM config, hidden 32, for fast CPU tests."""
    return make_tiny_glm_config()


# Real data fetched from PyPI wheels lands here once (gitignored) and is reused.
REPO_DATA = Path(__file__).resolve().parents[1] / "data"


def rows_to_tables(
    rows: list[tuple[str, str, int]],
    titles: dict[str, str],
    ratings: list[float] | None = None,
    name: str = "toy",
):
    """RecTables of (user, item, timestamp) rows, item -> title, no review text and no
    users table rows; ``ratings`` per row (default 4.0)."""
    import datasets

    from recsysllm.data.tables import RecTables

    return RecTables(
        name=name,
        interactions=datasets.Dataset.from_dict(
            {
                "user": [u for u, _, _ in rows],
                "item": [i for _, i, _ in rows],
                "timestamp": [t for _, _, t in rows],
                "rating": [4.0] * len(rows) if ratings is None else list(ratings),
                "review": [""] * len(rows),
                "summary": [""] * len(rows),
            }
        ),
        items=datasets.Dataset.from_dict({"item": list(titles), "title": list(titles.values())}),
        users=datasets.Dataset.from_dict(
            {"user": []}, features=datasets.Features({"user": datasets.Value("string")})
        ),
    )


def load_benchmark(name: str):
    """The module of ``benchmarks/<name>.py`` (benchmarks are scripts, not a package),
    registered in ``sys.modules`` so its dataclasses work."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fetch_or_skip(name: str, directory: str) -> Path:
    """``recsysllm data fetch NAME data/DIRECTORY``, or skip when the registry is unreachable."""
    from recsysllm.data.fetch import FetchError, fetch

    try:
        return fetch(name, REPO_DATA / directory)
    except FetchError as error:
        pytest.skip(f"cannot fetch {name} (package registry unreachable?): {error}")


def assert_command_picks_the_gpu_when_visible(monkeypatch, run) -> None:
    """``run(extra_argv)`` runs a command line that loads a checkpoint: with no --device it
    must ask the loader for cuda when a GPU is visible and cpu otherwise, and --device wins.

    The loader is replaced by one that records the device and stops the command.
    """
    from recsysllm import pipeline

    class Loaded(Exception):
        pass

    devices = []

    def load(checkpoint, base_model=None, device=None):
        devices.append(device)
        raise Loaded

    monkeypatch.setattr(pipeline, "load_checkpoint_for_inference", load)
    for visible, extra, expected in [(True, [], "cuda"), (False, [], "cpu"),
                                     (True, ["--device", "cpu"], "cpu")]:  # fmt: skip
        monkeypatch.setattr(torch.cuda, "is_available", lambda visible=visible: visible)
        with pytest.raises(Loaded):
            run(extra)
        assert devices.pop() == expected
