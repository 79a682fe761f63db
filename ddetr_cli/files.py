"""Reading and writing files: writes are atomic, so a crash or Ctrl-C never leaves a half-written
file (or folder) where a good one was; what they leave has the permissions the umask gives a
plain open() or mkdir(), not the private ones of the temporary files they start as; JSON is read
with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def _default_mode(folder: bool = False) -> int:
    """The permissions a plain open() (or mkdir()) would give: mkstemp's 0600 and mkdtemp's
    0700 would surprise users."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


def _default_permissions(folder: Path) -> None:
    """A folder and everything in it as mkdir() and open() would have made them (libraries
    that write into it may use private temporary files too)."""
    for inner, folders, files in os.walk(folder):
        for name in files:
            os.chmod(os.path.join(inner, name), _default_mode())
        for name in folders:
            os.chmod(os.path.join(inner, name), _default_mode(folder=True))
    os.chmod(folder, _default_mode(folder=True))


def temporary_beside(path: str | Path) -> Path:
    """An empty file beside `path`, hidden, for writers that need a file name (FFmpeg) rather
    than a file object; `publish` gives it its name when it is finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def publish(tmp: str | Path, path: str | Path) -> None:
    """Give a finished temporary file (`temporary_beside`) its name and the umask's
    permissions, replacing any file there in one step."""
    os.chmod(tmp, _default_mode())
    os.replace(tmp, path)


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


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder beside `path` to fill; on success it takes the umask's permissions
    and replaces `path` (an existing folder is moved aside, then removed), on any failure (or
    Ctrl-C) it is removed, leaving `path` as it was. Whether `path` may be replaced is the
    caller's decision."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        _default_permissions(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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
