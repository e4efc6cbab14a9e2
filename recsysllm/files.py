"""Writing files so that a crash never leaves them half-written, and reading YAML strictly.

- :func:`atomic_write`: the one way the project writes a file. The content goes to a temp
  file in the same directory (so the final rename stays on one filesystem), is flushed
  and fsynced, gets the mode a plain ``open(path, "w")`` would give (``0o666`` minus the
  umask; ``tempfile.mkstemp`` alone leaves ``0o600``), and is renamed over ``path``. On
  any failure the temp file is removed and ``path`` is left as it was.
- :func:`atomic_directory`: the same for a whole directory (a temp sibling directory,
  renamed into place when the block completes).
- :func:`load_yaml`: ``yaml.safe_load`` that refuses a key repeated in one mapping (plain
  ``safe_load`` silently keeps the last one), naming the file and line.

Example:
    >>> atomic_write("out/notes.txt", "hello\\n")  # doctest: +SKIP
    >>> with atomic_directory("out/tokenizer") as tmp:  # doctest: +SKIP
    ...     (tmp / "vocab.txt").write_text("...")
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml


def _umask() -> int:
    """The process umask, read from /proc on Linux (no change, no race with other threads)."""
    with (
        contextlib.suppress(OSError, ValueError),
        open("/proc/self/status", encoding="ascii") as status,
    ):
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    # Elsewhere os.umask can only be read by setting it; put the old value back at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """Mode of a newly created plain file: ``0o666`` minus the process umask (0o644 usually)."""
    return 0o666 & ~_umask()


def _fsync_directory(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not supported everywhere (e.g. some network filesystems)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike[str],
    content: bytes | str | Callable[[Path], object],
    *,
    encoding: str = "utf-8",
) -> Path:
    """Write ``content`` to ``path`` atomically (temp file, fsync, rename; parents created).

    Args:
        path: the file to write (replaced if it exists).
        content: bytes, text (encoded with ``encoding``), or a function that writes the
            file at the path it is given (for writers that want a path, such as
            ``matplotlib.savefig`` or ``safetensors.torch.save_file``).
        encoding: encoding of a ``str`` content.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        if callable(content):
            os.close(fd)
            content(tmp)
            with open(tmp, "rb+") as handle:
                os.fsync(handle.fileno())
        else:
            data = content.encode(encoding) if isinstance(content, str) else bytes(content)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)
    return path


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Build a directory under a temp name next to ``path``; rename it into place on success.

    An existing ``path`` is replaced (moved aside first, deleted once the new one is in
    place). If the block raises, the temp directory is deleted and ``path`` is untouched.
    The directory gets the mode of a plain ``mkdir`` (``0o777`` minus the umask).

    Yields:
        The temp directory to fill.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".old"))
            os.replace(path, old / path.name)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- YAML


class DuplicateKeyError(ValueError):
    """A YAML mapping repeats a key; the message names the file and both lines."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader whose mappings refuse a repeated key."""

    source = "<yaml>"

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # "<<: *base": explicit keys may override merged ones
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let SafeLoader raise its own error
                break
            if first is not None:
                raise DuplicateKeyError(
                    f"{self.source}: line {line}: field {key!r}: duplicate key "
                    f"(first given on line {first}; YAML would silently keep the last one)"
                )
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load(text)``, refusing duplicate keys; errors name ``source`` and the line.

    Raises:
        DuplicateKeyError: a mapping repeats a key.
        ValueError: malformed YAML (the message names ``source``, line and column).
    """
    loader = _UniqueKeyLoader(text)
    loader.source = source
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}: line {mark.line + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error)
        raise ValueError(f"{where}: malformed YAML ({problem})") from None
    finally:
        loader.dispose()


def read_yaml(path: str | os.PathLike[str]) -> Any:
    """Read a YAML file with :func:`load_yaml` (UTF-8; a decoding error names the file)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: byte {error.start}: not UTF-8 text ({error.reason})") from None
    return load_yaml(text, str(path))
