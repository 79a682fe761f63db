"""What `-w` is given: a missing local path says "no such file" (the Hub is never asked), a bare
owner/name that is nowhere says both, and a file that is not weights is named for what it is.
Every case is one line and exit 1, never a traceback."""

from __future__ import annotations

import datetime
import io
import pickle
import random
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.errors import DdetrError
from ddetr_cli.model import build_model
from ddetr_cli.recipe import load_recipe
from ddetr_cli.weights import (
    is_hub_id,
    read_checkpoint,
    read_weights,
    save_checkpoint,
    weights_format,
)
from ddetr_cli.weights.sniff import WEIGHTS_TAKES, sniff

runner = CliRunner()
TINY_HF = Path(__file__).parent / "data" / "hf_tiny"
SMALL = ["model.backbone=resnet18", "model.hidden_dim=32", "model.dim_feedforward=32",
         "model.enc_layers=1", "model.dec_layers=1", "model.num_queries=5"]  # fmt: skip


@pytest.fixture
def no_hub(monkeypatch):
    """The Hub as offline; records what was asked of it."""
    hub = pytest.importorskip("huggingface_hub")
    asked: list[str] = []

    def offline(repo_id, **kwargs):
        asked.append(repo_id)
        raise OSError("We couldn't connect to 'https://huggingface.co'")

    monkeypatch.setattr(hub, "snapshot_download", offline)
    return asked


@pytest.fixture
def picture(tmp_path):
    path = tmp_path / "p.png"
    Image.new("RGB", (32, 24)).save(path)
    return path


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0].removeprefix("error: ")


@pytest.mark.parametrize(
    "name",
    ["exports/model.onnx", "runs/best.pth", "w.pt", "m.safetensors", "pytorch_model.bin",
     "x.ckpt", "./owner/name", "../owner/name", "~/owner/name", "/nowhere/owner"],
)  # fmt: skip
def test_a_missing_local_path_is_no_such_file(name, no_hub, picture, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert not is_hub_id(name)
    result = runner.invoke(app, ["predict", str(picture), "-w", name])
    assert _one_error_line(result) == f"--weights {name}: no such file"
    with pytest.raises(DdetrError, match=r"^.*: no such file$"):
        weights_format(name)
    assert no_hub == []


@pytest.mark.parametrize("command", ["predict", "evaluate", "convert", "train"])
def test_a_bare_owner_name_that_is_nowhere_says_both(command, no_hub, picture, tmp_path):
    args = {
        "predict": ["predict", str(picture), "-w", "owner/name"],
        "evaluate": ["evaluate", "-w", "owner/name"],
        "convert": ["convert", "owner/name", str(tmp_path / "out.pth")],
        "train": ["train", "shapes", "-w", "owner/name", f"train.output_dir={tmp_path / 'run'}",
                  *SMALL],
    }[command]  # fmt: skip
    message = _one_error_line(runner.invoke(app, args))
    assert message.startswith(
        "owner/name: no such local file or folder, and no Hugging Face Hub model reached "
        "(offline: the Hub cannot be reached; OSError: We couldn't connect"
    ), message
    assert no_hub == ["owner/name"]
    assert not (tmp_path / "run").exists()  # train gives up before claiming a run folder


def test_the_hub_without_such_a_model_is_told_apart_from_offline(monkeypatch):
    hub = pytest.importorskip("huggingface_hub")

    class RepositoryNotFoundError(Exception):  # huggingface_hub's, by name
        pass

    def not_found(repo_id, **kwargs):
        raise RepositoryNotFoundError("404 Client Error. Repository Not Found for url")

    monkeypatch.setattr(hub, "snapshot_download", not_found)
    assert weights_format("owner/name") == "hub"
    with pytest.raises(DdetrError) as info:
        read_weights("owner/name")
    assert str(info.value).startswith(
        "owner/name: no such local file or folder, and no Hugging Face Hub model reached (the "
        "Hub has no such public model; RepositoryNotFoundError: 404 Client Error."
    ), info.value


def _checkpoint_bytes(content: object = None) -> bytes:
    buffer = io.BytesIO()
    torch.save(content or {"model": {"transformer.w": torch.zeros(3)}}, buffer)
    return buffer.getvalue()


def _random_bytes() -> bytes:
    data = bytearray(random.Random(0).randbytes(3000))
    data[0], data[5] = 0x13, 0  # no magic number of any format, and not text
    return bytes(data)


NOT_WEIGHTS = f", not weights; {WEIGHTS_TAKES}"
SAFE_PICKLE = (
    "is not a checkpoint ddetr reads: it is a pickle, but not a tensor checkpoint torch reads "
    "safely; ddetr never unpickles further (a pickle can run code)"
)
# name -> (content, the one line after the file's path)
BAD_FILES = {
    "typo.yaml": (b"model:\n  backbone: resnet50\n", f"is YAML text{NOT_WEIGHTS}"),
    "recipe.pth": (b"# a recipe\ntrain:\n  epochs: 3\n", f"is YAML text{NOT_WEIGHTS}"),
    "notes.txt": (b"remember to train longer\n", f"is plain text{NOT_WEIGHTS}"),
    "config.json": (b'{"model_type": "deformable_detr"}', f"is JSON text{NOT_WEIGHTS}"),
    "random.pth": (
        _random_bytes(),
        f"is unknown binary data (not a zip, pickle, safetensors or ONNX file){NOT_WEIGHTS}",
    ),
    "empty.pth": (b"", f"is an empty file{NOT_WEIGHTS}"),
    "truncated.pth": (
        _checkpoint_bytes()[:300],
        "is not a readable checkpoint (a zip archive: PytorchStreamReader failed reading zip "
        "archive: failed finding central directory)",
    ),
    "garbled_pickle.pth": (b"\x80\x02" + _random_bytes(), SAFE_PICKLE),
    "list.pth": (pickle.dumps([1, 2, 3]), SAFE_PICKLE),
    "object.pth": (
        _checkpoint_bytes({"day": datetime.date(2020, 1, 1)}),
        "is not a checkpoint ddetr reads: it holds a Python object of type datetime.date, not "
        "only tensors; ddetr never unpickles such objects (they can run code). Save the weights "
        "alone (torch.save(model.state_dict(), path)) or convert it where it was made",
    ),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_file_that_is_not_weights_is_named_for_what_it_is(name, no_hub, picture, tmp_path):
    content, said = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    message = _one_error_line(runner.invoke(app, ["predict", str(picture), "-w", str(path)]))
    assert message == f"{path} {said}"


def test_a_folder_that_is_not_weights(no_hub, picture, tmp_path):
    (tmp_path / "folder").mkdir()
    message = _one_error_line(
        runner.invoke(app, ["predict", str(picture), "-w", str(tmp_path / "folder")])
    )
    assert message == (
        f"{tmp_path / 'folder'} is a folder but neither a run folder (checkpoint_best.pth or "
        "checkpoint_last.pth) nor a transformers model folder (config.json)"
    )


@pytest.mark.parametrize("command", ["evaluate", "convert", "train", "bench", "export"])
def test_every_command_names_a_text_file_given_as_weights(command, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    args = {
        "evaluate": ["evaluate", "-w", str(notes)],
        "convert": ["convert", str(notes), str(tmp_path / "out.pth")],
        "train": ["train", "shapes", "-w", str(notes), f"train.output_dir={tmp_path / 'run'}",
                  *SMALL],
        "bench": ["bench", "-w", str(notes)],
        "export": ["export", "-w", str(notes), "-o", str(tmp_path / "m.onnx")],
    }[command]  # fmt: skip
    message = _one_error_line(runner.invoke(app, args))
    assert message == f"{notes} is plain text, not weights; {WEIGHTS_TAKES}"
    assert not (tmp_path / "run").exists()


def test_resume_from_a_text_file_is_one_line(tmp_path):
    notes = tmp_path / "notes.pth"
    notes.write_text("hello\n")
    with pytest.raises(DdetrError) as info:
        read_checkpoint(notes)
    assert str(info.value) == f"{notes} is plain text, not a PyTorch checkpoint"


def test_files_are_read_by_their_content_whatever_their_suffix(tmp_path):
    """A ddetr checkpoint named .onnx is a checkpoint; a .safetensors named .pth is read as
    safetensors; an ONNX file's first bytes say ONNX."""
    from ddetr_cli.weights.safetensors_file import write_safetensors

    recipe = load_recipe(None, SMALL)
    model = build_model(recipe)
    save_checkpoint(tmp_path / "ckpt.onnx", model, recipe)
    write_safetensors(model.state_dict(), recipe, tmp_path / "tensors.pth")
    assert weights_format(tmp_path / "ckpt.onnx") == "checkpoint"
    assert weights_format(tmp_path / "tensors.pth") == "safetensors"
    onnx = pytest.importorskip("onnx")
    graph = onnx.helper.make_graph([], "g", [], [])
    (tmp_path / "m.bin").write_bytes(onnx.helper.make_model(graph).SerializeToString())
    assert sniff(tmp_path / "m.bin").reader == "onnx"


@pytest.mark.parametrize("weights_file", ["model.safetensors", "pytorch_model.bin"])
def test_a_transformers_folder_with_a_bad_weights_file(weights_file, picture, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    shutil.copy(TINY_HF / "config.json", folder)
    (folder / weights_file).write_text("hello\n")
    message = _one_error_line(runner.invoke(app, ["predict", str(picture), "-w", str(folder)]))
    assert (
        message
        == {
            "model.safetensors": f"{folder / weights_file} is plain text, not a safetensors file",
            "pytorch_model.bin": f"{folder / weights_file} is plain text, not PyTorch weights",
        }[weights_file]
    )
