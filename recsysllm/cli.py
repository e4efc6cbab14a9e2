"""`recsysllm` console entry point: a thin dispatcher to each module's ``main(argv)``.

recsysllm data fetch movielens-100k data/ml-100k
recsysllm model fetch smollm2-135m data/models/smollm2-135m
recsysllm train --config configs/tiny_ml100k.yaml
recsysllm evaluate --config ... --checkpoint DIR --split test --prompts all --out results.json
recsysllm recommend --checkpoint DIR --user-history "Toy Story (1995)" -k 10
recsysllm convert SRC_DIR OUT_DIR
recsysllm demo

An error ends a command with one line on stderr (``recsysllm train: error: <file>: line
3: ...``) and exit code 1; ``--debug`` (anywhere on the command line) or
``RECSYSLLM_DEBUG=1`` shows the Python traceback instead.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "RECSYSLLM_DEBUG"

# subcommand -> (module, function, one-line help). Imported lazily so `recsysllm --help`
# stays fast and a subcommand's heavy imports load only when it runs.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "data": (
        "recsysllm.data.fetch",
        "main",
        "obtain embedded real data sets (data fetch NAME DIR)",
    ),
    "model": (
        "recsysllm.modeling.fetch",
        "main",
        "obtain the pretrained SmolLM2-135M (model fetch smollm2-135m DIR)",
    ),
    "train": ("recsysllm.training", "main", "train from a YAML config (same as scripts/train.py)"),
    "evaluate": (
        "recsysllm.evaluation.cli",
        "main",
        "evaluate a checkpoint on seen/unseen prompts",
    ),
    "recommend": ("recsysllm.api", "recommend_main", "top-k items for a user history"),
    "convert": (
        "recsysllm.modeling.checkpoint",
        "convert_main",
        "convert a THUDM GLM checkpoint to safetensors",
    ),
    "demo": (
        "recsysllm.demo",
        "main",
        "fetch MovieLens-100K, train the tiny model on CPU, evaluate",
    ),
}


def _usage() -> str:
    lines = ["usage: recsysllm COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name:<10} {help_}" for name, (_, _, help_) in COMMANDS.items()]
    return "\n".join(lines)


def error_message(error: BaseException) -> str:
    """One line for ``error``: its message (a KeyError's without the repr quotes)."""
    text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
    text = str(text) or type(error).__name__
    return "; ".join(line.strip() for line in text.splitlines() if line.strip())


def run_command(prog: str, function: Callable[[list[str]], int | None], argv: Sequence[str]) -> int:
    """Run an entry point's ``main(argv)``; an exception becomes one line on stderr and exit 1.

    ``--debug`` in ``argv`` (removed before the call) or ``RECSYSLLM_DEBUG=1`` lets the
    exception propagate with its traceback.
    """
    argv = list(argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    argv = [arg for arg in argv if arg != DEBUG_FLAG]
    try:
        return int(function(argv) or 0)
    except Exception as error:  # KeyboardInterrupt and SystemExit pass through
        if debug:
            raise
        print(
            f"{prog}: error: {error_message(error)} "
            f"({DEBUG_FLAG} or {DEBUG_ENV}=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if DEBUG_FLAG in argv[:1]:  # `recsysllm --debug train ...`: passed on to the command
        argv = [*argv[1:], DEBUG_FLAG]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"recsysllm: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, function_name, _ = COMMANDS[command]
    function = getattr(importlib.import_module(module_name), function_name)
    return run_command(f"recsysllm {command}", function, rest)


if __name__ == "__main__":
    sys.exit(main())
