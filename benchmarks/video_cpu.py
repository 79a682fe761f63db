"""`ddetr predict clip.mp4` against `ddetr predict` on the same frames saved as pictures (#22).

Writes the shapes clip (``ddetr data shapes --video``) of ``--seconds`` and one ``--long`` times
longer, saves the short clip's decoded frames as PNG pictures (lossless: the very frames the
video gives the model), then runs predict, each in a fresh process, ``--repeat`` times:

- on the pictures' folder: frames per second = 1 / predict's seconds per picture;
- on the short clip: frames per second of the video (opening it and finishing the MP4 included);
- on the long clip: the same, to compare peak memory.

Prints the median frames per second of both and their ratio (the goal: the video at least 90%
of the pictures, decoding hidden behind the model), and the peak resident memory of each kind
of process (the goal: the long clip's within a few percent of the short one's). Model loading
is outside the timed part; the processes' peak memory includes it. A first, untimed run builds
the attention kernel when this environment has no build of it yet. Both draw (the default);
``--no-draw`` compares the detections alone.

  python benchmarks/video_cpu.py -w runs/shapes                       # 10 s and 100 s clips
  python benchmarks/video_cpu.py -w runs/shapes --seconds 2 --long 3 --repeat 1   # a quick check
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

from ddetr_cli.data.shapes_video import write_shapes_video
from ddetr_cli.video.reader import FrameReader


def _child(kind: str, inputs: str, weights: str, out: str, batch: int, draw: bool) -> None:
    """In a fresh process: predict, then one JSON line with the frames per second."""
    from ddetr_cli.inference.predict import run_predict

    summary = run_predict(
        [Path(inputs)], weights, out_dir=Path(out), batch_size=batch, progress=False, draw=draw
    )
    if kind == "pictures":
        fps = 1 / summary.seconds_per_image
    else:
        fps = summary.videos[0].frames_per_second
    print(json.dumps({"fps": fps, "failed": summary.n_failed}))


def _run(kind: str, inputs: Path, args: argparse.Namespace, out: Path) -> tuple[float, float]:
    """(frames per second, peak resident memory in MiB) of one predict process."""
    command = [
        sys.executable,
        __file__,
        "--child",
        kind,
        str(inputs),
        "-w",
        args.weights,
        "--out",
        str(out),
        "-b",
        str(args.batch_size),
    ]
    command += [] if args.draw else ["--no-draw"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    output = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)  # this child's own peak, not the largest one's
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode != 0:
        raise SystemExit(f"{kind} run failed ({process.returncode}): {' '.join(command)}")
    result = json.loads(output.strip().splitlines()[-1])
    if result["failed"]:
        raise SystemExit(f"{kind} run: {result['failed']} inputs failed")
    return result["fps"], usage.ru_maxrss / 1024  # KiB on Linux


def _frames_as_pictures(clip: Path, folder: Path) -> int:
    folder.mkdir()
    with FrameReader(clip) as reader:
        for frame in reader:
            picture = Image.fromarray(frame.picture.permute(1, 2, 0).numpy())
            picture.save(folder / f"{frame.index:06d}.png", compress_level=1)
    return len(list(folder.iterdir()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-w", "--weights", default="runs/shapes", help="(default runs/shapes)")
    parser.add_argument("--seconds", type=float, default=10.0, help="the short clip (10)")
    parser.add_argument("--long", type=int, default=10, help="the long clip, times (10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each (3; the median)")
    parser.add_argument("-b", "--batch-size", type=int, default=1)
    parser.add_argument("--no-draw", dest="draw", action="store_false")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "INPUTS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child, args.weights, args.out, args.batch_size, args.draw)
        return

    with tempfile.TemporaryDirectory(prefix="ddetr_video_") as scratch:
        work = args.keep or Path(scratch)
        work.mkdir(parents=True, exist_ok=True)
        short, long = work / "clip.mp4", work / "clip_long.mp4"
        frames = write_shapes_video(short, args.seconds)
        long_frames = write_shapes_video(long, args.seconds * args.long)
        pictures = work / "frames"
        _frames_as_pictures(short, pictures)
        print(
            f"clips: {frames} and {long_frames} frames (256x256, 25 frames/s); "
            f"{frames} PNG pictures; weights {args.weights}; batch {args.batch_size}; "
            f"draw {args.draw}; {args.repeat} runs each, medians"
        )
        # A first, untimed run: it builds the attention kernel if this environment has not yet.
        _run("video", short, args, work / "out_warmup")
        runs: dict[str, list[tuple[float, float]]] = {"pictures": [], "video": [], "long": []}
        for index in range(args.repeat):  # interleaved, so a busier moment hits all kinds
            for kind, inputs in (("pictures", pictures), ("video", short), ("long", long)):
                out = work / f"out_{kind}_{index}"
                runs[kind].append(
                    _run("pictures" if kind == "pictures" else "video", inputs, args, out)
                )
        fps = {k: statistics.median(f for f, _ in v) for k, v in runs.items()}
        rss = {k: statistics.median(m for _, m in v) for k, v in runs.items()}
        print(f"pictures:   {fps['pictures']:7.2f} frames/s   peak RSS {rss['pictures']:7.1f} MiB")
        print(f"video:      {fps['video']:7.2f} frames/s   peak RSS {rss['video']:7.1f} MiB")
        print(f"video x{args.long}:  {fps['long']:7.2f} frames/s   peak RSS {rss['long']:7.1f} MiB")
        print(f"video / pictures fps: {fps['video'] / fps['pictures']:.3f} (goal >= 0.9)")
        print(f"peak RSS long / short: {rss['long'] / rss['video']:.3f} (goal ~1.0)")


if __name__ == "__main__":
    main()
