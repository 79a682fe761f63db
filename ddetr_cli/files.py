"""Reading and writing files: writes are atomic, so a crash or Ctrl-C never leaves a half-written
file where a good one was; JSON is read with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _default_mode() -> int:
    """The permissions a plain open() would give (mkstemp's 0600 would surprise users)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` for writing; on success it is synced and renamed
    over `path`, on any failure (or Ctrl-C) removed, leaving `path` as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        encoding = None if "b" in mode else "utf-8"
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(data: Any, path: str | Path, indent: int | None = None) -> None:
    """JSON to `path`, atomically, ending with a newline."""
    with atomic_write(path) as f:
        json.dump(data, f, indent=indent)
        f.write("\n")


def read_json(path: str | Path, what: str) -> Any:
    """A JSON file's content, or one DdetrError line naming the file and `what` it should be
    (e.g. "annotations file")."""
    from ddetr_cli.errors import DdetrError

    path = Path(path)
    if not path.is_file():
        raise DdetrError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DdetrError(f"{path}: not a JSON {what} ({exc})") from None
