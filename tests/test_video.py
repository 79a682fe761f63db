"""`ddetr predict clip.mp4` (#22): JSON lines and drawn video per video, frames as pictures
give, Ctrl-C and bad videos leave valid files; the clip generator, reader and writer."""

from __future__ import annotations

import io
import json
import shutil
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

av = pytest.importorskip("av")

import ddetr_cli.inference.predict as predict_module  # noqa: E402
import ddetr_cli.video.reader as reader_module  # noqa: E402
import ddetr_cli.video.writer as writer_module  # noqa: E402
from ddetr_cli.cli import app  # noqa: E402
from ddetr_cli.data.shapes_video import CLIP_SIZE, shapes_clip, write_shapes_video  # noqa: E402
from ddetr_cli.errors import DdetrError  # noqa: E402
from ddetr_cli.inference.predict import output_names, run_predict  # noqa: E402
from ddetr_cli.inference.slicing import SliceOptions  # noqa: E402
from ddetr_cli.inference.video import VideoOptions, jsonl_name  # noqa: E402
from ddetr_cli.inference.video_progress import FrameProgress  # noqa: E402
from ddetr_cli.model import build_model  # noqa: E402
from ddetr_cli.recipe import load_recipe  # noqa: E402
from ddetr_cli.video.reader import FrameReader, VideoInfo, probe_video  # noqa: E402
from ddetr_cli.video.writer import VideoWriter, choose_codec  # noqa: E402
from ddetr_cli.weights import save_checkpoint  # noqa: E402

FPS = 10
SECONDS = 2.0
FRAMES = 20
# The demo's architecture, small and untrained: boxes still depend on every pixel.
TINY = [
    "model.hidden_dim=32",
    "model.dim_feedforward=32",
    "model.num_queries=10",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.num_detections=5",
    "data.eval_min_size=64",
    "data.eval_max_size=64",
]
runner = CliRunner()


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    """20 frames of moving shapes at 10 frames per second, 256 x 256."""
    path = tmp_path_factory.mktemp("clip") / "clip.mp4"
    assert write_shapes_video(path, SECONDS, FPS, seed=1) == FRAMES
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    recipe = load_recipe("shapes", TINY)
    torch.manual_seed(0)
    return save_checkpoint(
        tmp_path_factory.mktemp("weights") / "tiny.pth", build_model(recipe), recipe
    )


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def decode(path: Path) -> list:
    """(time, (3, H, W) picture) of every frame."""
    with FrameReader(path) as reader:
        return [(frame.time, frame.picture) for frame in reader]


def predict(inputs, checkpoint, out, **kwargs):
    return run_predict(inputs, checkpoint, threshold=0.0, out_dir=out, progress=False, **kwargs)


# --------------------------------------------------------------------------- predict on videos


def test_json_lines_count_and_time_every_frame(clip, checkpoint, tmp_path):
    summary = predict([clip], checkpoint, tmp_path / "o", batch_size=3)
    assert summary.n_failed == 0 and summary.n_images == 0 and summary.predictions_path is None
    (video,) = summary.videos
    assert video.jsonl_path == tmp_path / "o" / "clip.jsonl"
    assert (video.frames, video.detections) == (FRAMES, FRAMES * 5)
    lines = read_jsonl(video.jsonl_path)
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [line["time"] for line in lines] == pytest.approx([i / FPS for i in range(FRAMES)])
    first = lines[0]["detections"][0]
    assert list(lines[0]) == ["frame", "time", "detections"]
    assert list(first) == ["category_id", "bbox", "score"]
    assert all(len(line["detections"]) == 5 for line in lines)  # num_detections at threshold 0


def test_stride_start_and_end_choose_the_frames(clip, checkpoint, tmp_path):
    summary = predict([clip], checkpoint, tmp_path / "a", video=VideoOptions(stride=3))
    lines = read_jsonl(summary.videos[0].jsonl_path)
    assert [line["frame"] for line in lines] == [0, 3, 6, 9, 12, 15, 18]
    assert [line["time"] for line in lines] == pytest.approx([0, 0.3, 0.6, 0.9, 1.2, 1.5, 1.8])

    options = VideoOptions(stride=2, start=0.5, end=1.2)  # frames at 0.5 <= t < 1.2
    summary = predict([clip], checkpoint, tmp_path / "b", video=options)
    lines = read_jsonl(summary.videos[0].jsonl_path)
    assert [line["frame"] for line in lines] == [5, 7, 9, 11]
    assert [line["time"] for line in lines] == pytest.approx([0.5, 0.7, 0.9, 1.1])


def test_a_frame_gives_what_predict_gives_on_it_as_a_picture(clip, checkpoint, tmp_path):
    summary = predict([clip], checkpoint, tmp_path / "video")
    lines = read_jsonl(summary.videos[0].jsonl_path)
    for index in (0, 7, 19):
        picture = tmp_path / f"frame{index}.png"  # lossless: the decoded frame exactly
        Image.fromarray(decode(clip)[index][1].permute(1, 2, 0).numpy()).save(picture)
        pictures = predict([picture], checkpoint, tmp_path / f"picture{index}")
        found = json.loads(pictures.predictions_path.read_text())
        stripped = [{k: d[k] for k in ("category_id", "bbox", "score")} for d in found]
        assert stripped == lines[index]["detections"]
        assert len(stripped) == 5


def test_slice_cuts_a_frame_as_it_cuts_the_same_picture(clip, checkpoint, tmp_path):
    """--slice on a video: every frame goes through the same sliced detector as a picture
    (9 tiles of 128 in a 256 x 256 frame), and gives the picture's merged detections."""
    slicing = SliceOptions((128, 128))
    summary = predict(
        [clip],
        checkpoint,
        tmp_path / "video",
        batch_size=4,
        slicing=slicing,
        video=VideoOptions(stride=10),
    )
    assert summary.slicing["pictures"] == 2 and summary.slicing["tiles_per_picture"] == 9
    lines = read_jsonl(summary.videos[0].jsonl_path)
    assert [line["frame"] for line in lines] == [0, 10]
    picture = tmp_path / "frame10.png"
    Image.fromarray(decode(clip)[10][1].permute(1, 2, 0).numpy()).save(picture)
    pictures = predict([picture], checkpoint, tmp_path / "picture", batch_size=4, slicing=slicing)
    found = json.loads(pictures.predictions_path.read_text())
    stripped = [{k: d[k] for k in ("category_id", "bbox", "score")} for d in found]
    assert stripped == lines[1]["detections"]
    assert len(stripped) > 5  # merged from 9 tiles of 5 each, more than one pass gives


def test_slice_on_a_video_on_the_command_line(clip, checkpoint, tmp_path):
    out = tmp_path / "o"
    args = ["predict", str(clip), "-w", str(checkpoint), "-o", str(out), "-t", "0"]
    result = runner.invoke(app, [*args, "--slice", "128", "128", "--stride", "10", "-b", "4"])
    assert result.exit_code == 0, result.output
    assert (
        "tiles per picture or frame" in result.output
        and "9 (128x128, overlap 0.2;" in result.output
    )
    assert len(read_jsonl(out / "clip.jsonl")) == 2 and (out / "clip_pred.mp4").is_file()


def test_the_drawn_video_has_the_clips_frames_size_rate_and_drawing(clip, checkpoint, tmp_path):
    out = tmp_path / "o"
    summary = predict([clip], checkpoint, out)
    video = summary.videos[0].video_path
    assert video == out / "clip_pred.mp4"
    info = probe_video(video)
    assert (info.width, info.height, info.fps, info.codec) == (CLIP_SIZE, CLIP_SIZE, FPS, "h264")
    drawn = decode(video)
    assert len(drawn) == FRAMES
    assert [t for t, _ in drawn] == pytest.approx([i / FPS for i in range(FRAMES)])
    # Drawn as pictures are: where predict draws on frame 7 saved as a picture, the video
    # shows that drawing, not the frame. In luma, which H.264 keeps at full resolution.
    source = decode(clip)[7][1]
    picture = tmp_path / "frame7.png"
    Image.fromarray(source.permute(1, 2, 0).numpy()).save(picture)
    predict([picture], checkpoint, tmp_path / "p")
    expected = torch.from_numpy(np.array(Image.open(tmp_path / "p" / "frame7_pred.png")))
    luma = torch.tensor([0.299, 0.587, 0.114])
    source, expected = source.permute(1, 2, 0).float() @ luma, expected.float() @ luma
    shown = drawn[7][1].permute(1, 2, 0).float() @ luma
    lines = (expected - source).abs() > 40  # the boxes and labels drawn
    to_drawing = (shown - expected)[lines].abs().mean()
    to_frame = (shown - source)[lines].abs().mean()
    assert lines.sum() > 500 and to_frame > 5 * to_drawing, (to_drawing, to_frame)

    summary = predict([clip], checkpoint, tmp_path / "s", video=VideoOptions(stride=4))
    info = probe_video(summary.videos[0].video_path)
    assert (info.frames, info.fps) == (5, Fraction(FPS, 4))
    assert [t for t, _ in decode(summary.videos[0].video_path)] == pytest.approx(
        [0, 0.4, 0.8, 1.2, 1.6]
    )


def test_ctrl_c_mid_video_leaves_both_files_valid(clip, checkpoint, tmp_path, monkeypatch):
    real = predict_module._detect
    out = tmp_path / "o"
    calls, lines_on_disk = [], []

    def interrupted_at_the_third_batch(model, pictures, **kwargs):
        calls.append(len(pictures))
        # Each frame's line is on disk as soon as it is done, not when the file is closed.
        lines_on_disk.append((out / "clip.jsonl").read_text().count("\n"))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, pictures, **kwargs)

    monkeypatch.setattr(predict_module, "_detect", interrupted_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        predict([clip], checkpoint, out, batch_size=2)
    assert calls == [2, 2, 2] and lines_on_disk == [0, 2, 4]
    lines = read_jsonl(out / "clip.jsonl")  # every line whole JSON
    assert [line["frame"] for line in lines] == [0, 1, 2, 3]
    drawn = decode(out / "clip_pred.mp4")
    assert len(drawn) == 4 and drawn[0][1].shape == (3, CLIP_SIZE, CLIP_SIZE)
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "clip_pred.mp4"]  # no temp


def test_ctrl_c_on_the_cli_exits_130_with_the_files_named(clip, checkpoint, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(predict_module, "_detect", interrupted)
    result = runner.invoke(
        app, ["predict", str(clip), "-w", str(checkpoint), "-o", str(tmp_path / "o")]
    )
    assert result.exit_code == 130
    assert (tmp_path / "o" / "clip.jsonl").read_text() == ""
    assert "Traceback" not in result.output


def _audio_only(path: Path) -> Path:
    container = av.open(str(path), "w")
    stream = container.add_stream("aac", rate=8000)
    frame = av.AudioFrame.from_ndarray(
        np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
    )
    frame.sample_rate = 8000
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)
    container.close()
    return path


def test_bad_videos_fail_alone_in_one_line_each(clip, checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    data = clip.read_bytes()
    (folder / "cut.mp4").write_bytes(data[: len(data) * 6 // 10])  # the index is at the front
    (folder / "text.mov").write_text("not a video\n")
    _audio_only(folder / "sound.mp4")
    shutil.copy(clip, folder / "good.mkv")
    Image.fromarray(next(shapes_clip(0.1))).save(folder / "picture.png")
    out = tmp_path / "o"
    result = runner.invoke(app, ["predict", str(folder), "-w", str(checkpoint), "-o", str(out)])
    assert result.exit_code == 1, result.output
    failures = [line for line in result.stderr.splitlines() if line.startswith("failed:")]
    assert len(failures) == 3, result.stderr
    assert f"{folder / 'cut.mp4'}: truncated" in failures[0] or "decoding failed" in failures[0]
    assert failures[1] == f"failed: {folder / 'sound.mp4'}: has no video stream"
    assert failures[2] == (
        f"failed: {folder / 'text.mov'}: cannot read video (Invalid data found when processing "
        "input)"
    )
    assert "Traceback" not in result.output
    assert len(read_jsonl(out / "good.jsonl")) == FRAMES
    assert len(decode(out / "good_pred.mp4")) == FRAMES
    assert len(json.loads((out / "predictions.json").read_text())) == 0  # threshold 0.5
    # What the cut video gave before its end is kept, whole.
    cut = read_jsonl(out / "cut.jsonl")
    assert 0 < len(cut) < FRAMES and len(decode(out / "cut_pred.mp4")) == len(cut)
    assert not (out / "sound.jsonl").exists() and not (out / "text.jsonl").exists()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--stride", "0"], "--stride must be at least 1, got 0"),
        (["--start", "-1"], "--start must be at least 0 seconds, got -1"),
        (["--start", "2", "--end", "1"], "--end (1 s) must be after --start (2 s)"),
    ],
)
def test_a_stride_of_zero_and_empty_ranges_are_refused(clip, checkpoint, option, message):
    result = runner.invoke(app, ["predict", str(clip), "-w", str(checkpoint), *option])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: {message}"


def test_without_pyav_a_video_is_refused_in_one_line(clip, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "av", None)  # import fails as if not installed
    with pytest.raises(DdetrError) as info:
        # Refused before the model loads: these weights do not exist.
        run_predict([clip], tmp_path / "none.pth", out_dir=tmp_path / "o", progress=False)
    assert (
        str(info.value) == "this needs av, which is not installed: pip install 'ddetr-cli[video]'"
    )


def test_folders_hold_videos_and_predict_skips_its_own(clip, checkpoint, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clip, folder / "clip.mp4")
    Image.fromarray(next(shapes_clip(0.1))).save(folder / "still.png")
    for _ in range(2):  # the second run must not take clip_pred.mp4 or still_pred.png as inputs
        summary = predict([folder], checkpoint, folder)
        assert summary.n_images == 1 and [v.path for v in summary.videos] == [folder / "clip.mp4"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "clip.jsonl",
        "clip.mp4",
        "clip_pred.mp4",
        "predictions.json",
        "still.png",
        "still_pred.png",
    ]


def test_visualize_predictions_takes_the_pictures_of_a_folder_and_leaves_its_videos(
    clip, checkpoint, tmp_path
):
    folder = tmp_path / "in"
    folder.mkdir()
    shutil.copy(clip, folder / "clip.mp4")
    Image.fromarray(next(shapes_clip(0.1))).save(folder / "still.png")
    args = [
        "visualize",
        "predictions",
        str(folder),
        "-w",
        str(checkpoint),
        "-o",
        str(tmp_path / "o"),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == [
        "predictions.json",
        "sheet.png",
        "still_pred.png",
    ]


def test_no_draw_writes_the_json_only(clip, checkpoint, tmp_path):
    picture = tmp_path / "still.png"
    Image.fromarray(next(shapes_clip(0.1))).save(picture)
    out = tmp_path / "o"
    summary = predict([clip, picture], checkpoint, out, draw=False)
    assert summary.videos[0].video_path is None
    assert sorted(p.name for p in out.iterdir()) == ["clip.jsonl", "predictions.json"]


def test_same_stems_get_their_own_outputs(tmp_path):
    paths = [tmp_path / "a" / "clip.mp4", tmp_path / "b" / "clip.MOV", tmp_path / "clip.png"]
    names = output_names(paths)
    assert names == ["clip_pred.mp4", "clip_2_pred.mp4", "clip_pred.png"]
    assert [jsonl_name(n) for n in names[:2]] == ["clip.jsonl", "clip_2.jsonl"]


# --------------------------------------------------------------------------- reading and writing


def _write(path: Path, pictures, times, fps=Fraction(FPS)) -> Path:
    writer = VideoWriter(path, pictures[0].shape[2], pictures[0].shape[1], fps)
    for picture, seconds in zip(pictures, times, strict=True):
        writer.write(picture, seconds)
    writer.close()
    return path


def _halves(width: int, height: int) -> torch.Tensor:
    """Left half red, right half blue."""
    picture = torch.zeros(3, height, width, dtype=torch.uint8)
    picture[0, :, : width // 2] = 220
    picture[2, :, width // 2 :] = 220
    return picture


def test_a_rotated_video_is_read_upright(tmp_path):
    path = tmp_path / "phone.mp4"
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=FPS)
    stream.width, stream.height, stream.pix_fmt = 64, 32, "yuv420p"
    stream.set_display_rotation(90)  # shown turned a quarter counterclockwise
    frame = av.VideoFrame.from_ndarray(_halves(64, 32).permute(1, 2, 0).numpy(), format="rgb24")
    for packet in [*stream.encode(frame), *stream.encode(None)]:
        container.mux(packet)
    container.close()
    ((_, picture),) = decode(path)
    assert picture.shape == (3, 64, 32)  # portrait
    # Turned counterclockwise, the right (blue) half is on top.
    assert picture[2, :28].float().mean() > 200 and picture[0, 36:].float().mean() > 200


def test_frame_times_survive_a_variable_frame_rate(tmp_path):
    times = [0.0, 0.1, 0.2, 0.45, 0.5, 1.0]
    pictures = [_halves(64, 48) for _ in times]
    path = _write(tmp_path / "vfr.mp4", pictures, times)
    assert [t for t, _ in decode(path)] == pytest.approx(times)


def test_codecs_h264_odd_sides_and_without_h264(tmp_path, monkeypatch):
    assert choose_codec(av, 64, 48) == ("libx264", "yuv420p", None)
    codec, pixels, note = choose_codec(av, 65, 47)
    assert (codec, pixels) == ("libx264", "yuv444p") and "odd side" in note
    path = _write(tmp_path / "odd.mp4", [_halves(65, 47)] * 3, [0, 0.1, 0.2])
    assert [p.shape for _, p in decode(path)] == [(3, 47, 65)] * 3

    monkeypatch.setattr(writer_module, "_has_encoder", lambda av, name: False)
    assert choose_codec(av, 64, 48) == (
        "mpeg4",
        "yuv420p",
        "no H.264 encoder in this FFmpeg build: writing MPEG-4 Part 2",
    )
    path = _write(tmp_path / "mpeg4.mp4", [_halves(64, 48)] * 3, [0, 0.1, 0.2])
    assert probe_video(path).codec == "mpeg4" and len(decode(path)) == 3


def test_decoding_stays_a_few_frames_ahead(clip):
    """Memory flat in the video's length: the thread waits while the queue is full."""
    reader = FrameReader(clip, queue_size=2, background=True)
    try:
        frames = iter(reader)
        next(frames)
        for _ in range(100):  # until the thread has filled the queue and waits
            if reader._queue.full():
                break
            reader._thread.join(0.02)
        assert reader._queue.full() and reader.decoded <= 1 + 2 + 1  # taken, queued, in hand
    finally:
        reader.close()
    assert not reader._thread.is_alive()


@pytest.mark.parametrize("background", [True, False])
def test_in_line_and_background_decoding_give_the_same_frames(clip, tmp_path, background):
    with FrameReader(clip, background=True) as reader:
        expected = [(frame.index, frame.time, frame.picture) for frame in reader]
    with FrameReader(clip, start=0.5, stride=3, background=background) as reader:
        got = [(frame.index, frame.time, frame.picture) for frame in reader]
        assert reader.background is background
    wanted = [item for item in expected if item[1] >= 0.5 - 1e-6][::3]
    assert [(i, t) for i, t, _ in got] == [(i, t) for i, t, _ in wanted]
    assert all(torch.equal(a[2], b[2]) for a, b in zip(got, wanted, strict=True))
    # A truncated file: the frames before the cut, then one line, in either mode.
    cut = tmp_path / "cut.mp4"
    data = clip.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    frames = 0
    with pytest.raises(DdetrError, match="cut.mp4: (truncated|decoding failed)"):
        with FrameReader(cut, background=background) as reader:
            for _ in reader:
                frames += 1
    assert 0 < frames < FRAMES


def test_decoding_runs_in_line_when_torch_takes_every_core(clip, monkeypatch):
    monkeypatch.setattr(reader_module.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(reader_module.torch, "get_num_threads", lambda: 2)
    with FrameReader(clip) as reader:
        assert not reader.background and reader._thread is None
        assert next(iter(reader)).index == 0
    monkeypatch.setattr(reader_module.torch, "get_num_threads", lambda: 1)
    with FrameReader(clip) as reader:
        assert reader.background and reader._thread is not None


def test_progress_prints_a_line_per_tenth_in_a_log():
    log = io.StringIO()  # not a terminal
    with FrameProgress("clip.mp4", 20, enabled=True, stream=log) as progress:
        for _ in range(10):
            progress.advance(2)
    lines = log.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        f"clip.mp4: {p}%" for p in range(10, 101, 10)
    ]
    assert lines[-1].startswith("clip.mp4: 100% (20 of 20 frames, ")
    log = io.StringIO()
    with FrameProgress("long.mkv", None, enabled=True, stream=log) as progress:
        for _ in range(25):
            progress.advance(10)
    assert [line.split(" (")[0] for line in log.getvalue().splitlines()] == [
        "long.mkv: 100 frames",
        "long.mkv: 200 frames",
    ]
    log = io.StringIO()
    with FrameProgress("quiet.mp4", 20, enabled=False, stream=log) as progress:
        progress.advance(20)
    assert log.getvalue() == ""


# --------------------------------------------------------------------------- the shapes clip


def test_the_shapes_clip_is_the_same_from_the_same_seed(tmp_path):
    first = list(shapes_clip(0.5, FPS, seed=3))
    assert len(first) == 5 and first[0].shape == (CLIP_SIZE, CLIP_SIZE, 3)
    assert all(np.array_equal(a, b) for a, b in zip(first, shapes_clip(0.5, FPS, 3), strict=True))
    assert not np.array_equal(first[0], next(shapes_clip(0.5, FPS, seed=4)))
    assert not np.array_equal(first[0], first[4])  # the shapes move


def test_data_shapes_video_on_the_command_line(tmp_path):
    path = tmp_path / "shapes.mp4"
    result = runner.invoke(app, ["data", "shapes", "--video", str(path), "--seconds", "0.5"])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"video: {path} (12 frames at 25 frames/s)"
    info = probe_video(path)
    assert (info.frames, info.fps, info.width) == (12, 25, CLIP_SIZE)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shapes.mp4"]
    for both_or_neither in ([str(tmp_path / "d"), "--video", str(path)], []):
        result = runner.invoke(app, ["data", "shapes", *both_or_neither])
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            "error: give either OUT_DIR (pictures) or --video OUT.mp4 (a clip)"
        )


@pytest.mark.slow  # writing the ONNX file takes torch.onnx half a minute, even this small
def test_an_onnx_export_gives_a_video_what_pytorch_gives(clip, checkpoint, tmp_path):
    """-w model.onnx: frames go through onnxruntime as pictures do."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(module)
    from ddetr_cli.export.writer import export_onnx
    from ddetr_cli.weights import load_model

    model, recipe = load_model(checkpoint)
    exported = tmp_path / "tiny.onnx"
    # Static at the frames' evaluation size (256 -> 64) and unchecked: quicker to write.
    export_onnx(model.eval(), recipe, exported, image_size=(64, 64), static=True, check=False)
    every_fifth = VideoOptions(stride=5)
    onnx_lines = read_jsonl(
        predict([clip], exported, tmp_path / "onnx", video=every_fifth).videos[0].jsonl_path
    )
    torch_lines = read_jsonl(
        predict([clip], checkpoint, tmp_path / "torch", video=every_fifth).videos[0].jsonl_path
    )
    assert [line["frame"] for line in onnx_lines] == [0, 5, 10, 15]
    for ours, theirs in zip(onnx_lines, torch_lines, strict=True):
        assert ours["time"] == theirs["time"] and len(ours["detections"]) == 5
        scores = [d["score"] for d in ours["detections"]]
        assert scores == pytest.approx([d["score"] for d in theirs["detections"]], abs=2e-4)


def test_the_progress_total_counts_the_frames_chosen(tmp_path):
    info = VideoInfo(tmp_path / "v.mp4", 64, 48, Fraction(25), Fraction(1, 25), 250, 10.0, "h264")
    assert info.frames_between(0.0, None, 1) == 250
    assert info.frames_between(2.0, 4.0, 3) == 17  # frames 50..99, every third
    assert info.frames_between(20.0, None, 1) == 0
    unknown = VideoInfo(tmp_path / "v.mkv", 64, 48, Fraction(25), Fraction(1, 1000), 0, 4.0, "vp9")
    assert unknown.frames_between(0.0, None, 2) == 50  # from the duration
    nothing = VideoInfo(tmp_path / "v.mkv", 64, 48, Fraction(25), Fraction(1, 1000), 0, None, "")
    assert nothing.frames_between(0.0, None, 1) is None
