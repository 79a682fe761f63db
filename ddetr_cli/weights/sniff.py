"""What a file given as weights holds, told from its first bytes before any reader opens it.

Readers fail on a file of the wrong kind in their own ways (torch's weights-only unpickler with
an ``IndexError`` on a text file); the first bytes say what the file is, so a recipe, a note or
random bytes get one line naming what they are. Nothing is unpickled here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# Suffixes of weights files: a name with one is a local path, never a Hub model id.
WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".onnx", ".ckpt")
WEIGHTS_TAKES = (
    "--weights takes a checkpoint (.pth), a run folder, a .safetensors or .onnx file, "
    "a transformers folder or a Hugging Face Hub id"
)
_HEAD = 4096
_ZIP = b"PK\x03\x04"  # torch.save's format since 1.6 is a zip archive
_PICKLE_PROTOCOLS = range(2, 6)  # b"\x80" + protocol: torch's legacy format (protocol 2)
# ONNX ModelProto fields in the order protobuf writes them: ir_version (field 1, a varint)
# first, then a length-delimited or varint field.
_ONNX_WIRE_TYPES = (0, 2)
_YAML_KEY = re.compile(r"^[\w.-]+\s*:(\s|$)")


@dataclass(frozen=True)
class FileKind:
    """``reader``: 'checkpoint', 'safetensors' or 'onnx', None when no reader takes the file;
    ``what``: the kind in words, for messages ("YAML text", "an empty file")."""

    reader: str | None
    what: str


def sniff(path: Path) -> FileKind:
    """The kind of the file at ``path`` (an existing regular file)."""
    with path.open("rb") as f:
        head = f.read(_HEAD)
    size = path.stat().st_size
    if not head:
        return FileKind(None, "an empty file")
    if head.startswith(_ZIP):
        return FileKind("checkpoint", "a zip archive")
    if head[0] == 0x80 and len(head) > 1 and head[1] in _PICKLE_PROTOCOLS:
        return FileKind("checkpoint", "a pickle")
    if _is_safetensors(head, size):
        return FileKind("safetensors", "a safetensors file")
    if _is_onnx(head):
        return FileKind("onnx", "an ONNX model")
    text = _as_text(head)
    if text is not None:
        return FileKind(None, _text_kind(text, path))
    return FileKind(None, "unknown binary data (not a zip, pickle, safetensors or ONNX file)")


def _is_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length, then the JSON header itself."""
    if len(head) < 9:
        return False
    header = int.from_bytes(head[:8], "little")
    return 2 <= header <= size - 8 and head[8:9] == b"{"


def _is_onnx(head: bytes) -> bool:
    return (
        len(head) > 2
        and head[0] == 0x08  # field 1 (ir_version), varint
        and 0 < head[1] < 0x80  # a one-byte version number
        and head[2] & 0x07 in _ONNX_WIRE_TYPES
    )


def _as_text(head: bytes) -> str | None:
    """``head`` as UTF-8 text, or None for binary data (a NUL byte, invalid UTF-8)."""
    if b"\x00" in head:
        return None
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            return head[: len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
    return None


def _text_kind(text: str, path: Path) -> str:
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    first = lines[0].lstrip() if lines else ""
    if first.startswith(("{", "[")):
        return "JSON text"
    if path.suffix.lower() in (".yaml", ".yml") or _YAML_KEY.match(first):
        return "YAML text"
    return "plain text"
