"""What sliced inference (--slice) buys on the small-object task, measured end to end.

Generates the task (`ddetr data shapes --task small`), cuts its training pictures into tiles
(`ddetr data slice`), trains `recipes/shapes_small.yaml` on them (about 9 minutes on 2 CPU
cores), then on the held-out large pictures: evaluates the same model unsliced and sliced
(and sliced with NMS instead of the merge, and with the whole picture added), times a picture
unsliced and sliced with tiles one by one and batched (`ddetr bench`), draws one picture both
ways side by side, and checks the goals of issue #21:

- sliced APs at least 2x unsliced APs, and sliced AP above unsliced AP;
- batched tiles at least 2x the pictures per second of tiles one by one.

Every step is a `ddetr` command, printed before it runs; everything lands in --out, with
`summary.json` and `summary.md` (the tables of the README) at the end.

  python benchmarks/slice_small.py --out runs/slice_small                 # full size
  python benchmarks/slice_small.py --out /tmp/slice_small --small         # a minute's proof

Timings need a quiet machine: the training and the speed figures are what other processes
leave of the CPU.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

TILE = (128, 128)  # the model's own resolution: the shapes demo's 128x128
OVERLAP = 0.25  # 32 pixels: the largest shape lies whole in some tile
FULL = {"train": 24, "train_val": 2, "eval": 12, "overrides": [], "batches": "1,4,16,64",
        "iters": 3}  # fmt: skip
SMALL = {"train": 2, "train_val": 1, "eval": 2, "iters": 1, "batches": "1,16",
         "overrides": ["train.epochs=1", "train.max_steps=20"]}  # fmt: skip
# Sliced evaluations: (name, options after --slice H W).
VARIANTS = [
    ("sliced", []),
    ("sliced, NMS at IoU 0.5", ["--merge", "nms", "--match", "iou"]),
    ("sliced + whole picture", ["--full"]),
]
CROP = (0, 0, 480, 480)  # the part of the first eval picture shown side by side


def ddetr(*args: Any, log: Path) -> None:
    """Run `ddetr ARGS` (this Python's ddetr), echoing the command; its output goes to log."""
    command = [sys.executable, "-m", "ddetr_cli", *map(str, args)]
    print("$ ddetr " + shlex.join(command[3:]), flush=True)
    started = time.perf_counter()
    with log.open("a") as out:
        out.write(f"$ ddetr {shlex.join(command[3:])}\n")
        out.flush()
        subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, check=True)
    print(f"  {time.perf_counter() - started:.0f} s", flush=True)


def make_data(out: Path, sizes: dict[str, Any], log: Path) -> tuple[Path, Path]:
    """(the tiles folder to train on, the folder of large pictures to evaluate on)."""
    train_set, eval_set, tiles = (
        out / "data" / "train",
        out / "data" / "eval",
        out / "data" / "tiles",
    )
    ddetr("data", "shapes", train_set, "--task", "small", "--train", sizes["train"], "--val",
          sizes["train_val"], log=log)  # fmt: skip
    ddetr("data", "shapes", eval_set, "--task", "small", "--train", 0, "--val", sizes["eval"],
          log=log)  # fmt: skip
    ddetr("data", "slice", train_set, tiles, "--size", *TILE, "--overlap", OVERLAP, log=log)
    return tiles, eval_set


def evaluate(out: Path, run: Path, eval_set: Path, log: Path) -> dict[str, dict]:
    """COCO AP of the model on the large pictures: unsliced, then each sliced variant."""
    given = ["--images", eval_set / "val2017", "--annotations",
             eval_set / "annotations" / "instances_val2017.json"]  # fmt: skip
    reports = {}
    for i, (name, options) in enumerate([("unsliced", None), *VARIANTS]):
        sliced = [] if options is None else ["--slice", *TILE, "--overlap", OVERLAP, "-b", 16]
        path = out / f"evaluate_{i}.json"
        ddetr("evaluate", "-w", run, *given, *sliced, *(options or []), "-t", 0.5, "-o",
              out / f"evaluate_{i}", "--json", path, log=log)  # fmt: skip
        reports[name] = json.loads(path.read_text())
    return reports


def bench(out: Path, run: Path, eval_set: Path, sizes: dict[str, Any], log: Path) -> dict:
    """Seconds per picture unsliced (at the recipe's resize) and sliced, tiles one by one and
    batched, on the first eval picture."""
    common = ["-w", run, "--images", eval_set / "val2017", "--max-images", 1,
              "--attention-backend", "auto", "--threads", 2, "--iters", sizes["iters"]]  # fmt: skip
    ddetr("bench", *common, "--fps", "--json", out / "bench_unsliced.json", log=log)
    ddetr("bench", *common, "--slice", *TILE, "--overlap", OVERLAP, "-b", sizes["batches"],
          "--json", out / "bench_sliced.json", log=log)  # fmt: skip
    unsliced = json.loads((out / "bench_unsliced.json").read_text())["speed"]["results"][0]
    return {"unsliced_seconds_per_picture": round(1 / unsliced["fps"], 4),
            "sliced": json.loads((out / "bench_sliced.json").read_text())["slice"]}  # fmt: skip


def side_by_side(out: Path, run: Path, eval_set: Path, threshold: float, log: Path) -> Path:
    """The same corner of the first eval picture with its detections unsliced | sliced (from
    `ddetr predict`'s predictions.json, drawn at the corner's own scale)."""
    import torch

    from ddetr_cli.data.pictures import load_image
    from ddetr_cli.viz.draw import draw_detections, to_pil

    picture = eval_set / "val2017" / "000000.jpg"
    x0, y0, x1, y1 = CROP
    crop = load_image(picture)[:, y0:y1, x0:x1]
    names = json.loads((eval_set / "annotations" / "instances_val2017.json").read_text())
    names = [c["name"] for c in sorted(names["categories"], key=lambda c: c["id"])]
    halves = []
    for name, options in (("unsliced", []), ("sliced", ["--slice", *TILE, "--overlap", OVERLAP])):
        ddetr("predict", picture, "-w", run, "-t", threshold, "-o", out / f"pred_{name}",
              *options, "-b", 16, log=log)  # fmt: skip
        found = json.loads((out / f"pred_{name}" / "predictions.json").read_text())
        boxes = torch.tensor([[d["bbox"][0] - x0, d["bbox"][1] - y0, d["bbox"][0] + d["bbox"][2]
                               - x0, d["bbox"][1] + d["bbox"][3] - y0] for d in found])  # fmt: skip
        inside = [i for i, b in enumerate(boxes.reshape(-1, 4).tolist())
                  if b[2] > 0 and b[3] > 0 and b[0] < x1 - x0 and b[1] < y1 - y0]  # fmt: skip
        drawn = draw_detections(crop, boxes.reshape(-1, 4)[inside],
                                [found[i]["category_id"] for i in inside],
                                [found[i]["score"] for i in inside], names)  # fmt: skip
        halves.append((f"{name}: {len(found)} detections in the picture", to_pil(drawn)))
    width, height, banner, gap = x1 - x0, y1 - y0, 24, 8
    sheet = Image.new("RGB", (2 * width + gap, height + banner), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (title, half) in enumerate(halves):
        sheet.paste(half, (i * (width + gap), banner))
        draw.text((i * (width + gap) + 4, 5), f"{title} (score >= {threshold:.2f})", fill=0)
    path = out / "slice_small.png"
    sheet.save(path)
    return path


def goals(reports: dict[str, dict], speed: dict) -> dict[str, Any]:
    plain, sliced = reports["unsliced"], reports["sliced"]
    best = max(speed["sliced"]["results"], key=lambda r: r["gain_vs_batch_1"] or 0)
    return {
        "sliced APs >= 2x unsliced APs": sliced["APs"] > 0
        and sliced["APs"] >= 2 * max(plain["APs"], 0),
        "sliced AP > unsliced AP": sliced["AP"] > max(plain["AP"], 0),
        f"batched tiles (batch {best['batch_size']}) >= 2x pictures/s of tiles one by one": (
            (best["gain_vs_batch_1"] or 0) >= 2
        ),
    }


def markdown(reports: dict[str, dict], speed: dict, passed: dict[str, bool], cmd: str) -> str:
    columns = ["", "AP", "AP50", "APs", "AR100", "AP, every detection", "tiles per picture",
               "s per picture"]  # fmt: skip
    rows = ["| " + " | ".join(columns) + " |", "|---" * len(columns) + "|"]
    footnote = ("s per picture: unsliced, `ddetr bench --fps` (the resized picture's forward "
                "pass); sliced, `ddetr evaluate`'s (16 tiles per pass; cutting, forward passes, "
                "merging).")  # fmt: skip
    for name, r in reports.items():
        every = r.get("every_detection") or {}
        sliced = r.get("slicing") or {}
        tiles = sliced.get("tiles_per_picture", 1)
        seconds = sliced.get("seconds_per_picture", speed["unsliced_seconds_per_picture"])
        every_ap = f"{every['AP']:.3f} (maxDets {every['max_dets']})" if every else "-"
        rows.append(f"| {name} | {r['AP']:.3f} | {r['AP50']:.3f} | {r['APs']:.3f} | "
                    f"{r['AR100']:.3f} | {every_ap} | {tiles:g} | {seconds:.3f} |")  # fmt: skip
    s = speed["sliced"]
    rows += ["", footnote, "", f"Sliced {s['picture_size'][0]}x{s['picture_size'][1]} picture, "
             f"{s['tiles_per_picture']} tiles of {TILE[0]}x{TILE[1]}:", "",
             "| tiles per batch | pictures/s | tiles/s | gain over tiles one by one |",
             "|---|---|---|---|"]  # fmt: skip
    for r in s["results"]:
        rows.append(f"| {r['batch_size']} | {r['pictures_per_s']:.3f} | {r['tiles_per_s']:.1f} | "
                    f"{r['gain_vs_batch_1']:.2f}x |")  # fmt: skip
    rows += ["", *(f"- {'PASS' if ok else 'FAIL'}: {goal}" for goal, ok in passed.items()), "",
             f"Command: `{cmd}`"]  # fmt: skip
    return "\n".join(rows) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="A new folder for everything.")
    parser.add_argument("--small", action="store_true", help="Tiny settings: proves it runs.")
    args = parser.parse_args()
    if args.out.exists() and any(args.out.iterdir()):
        parser.error(f"{args.out} exists and is not empty")
    args.out.mkdir(parents=True, exist_ok=True)
    sizes = SMALL if args.small else FULL
    log = args.out / "commands.log"
    started = time.perf_counter()
    tiles, eval_set = make_data(args.out, sizes, log)
    run = args.out / "run"
    ddetr("train", "shapes_small", f"data.root={tiles}", f"train.output_dir={run}",
          *sizes["overrides"], log=log)  # fmt: skip
    reports = evaluate(args.out, run, eval_set, log)
    speed = bench(args.out, run, eval_set, sizes, log)
    best_f1 = (reports["sliced"].get("best_f1") or {}).get("score_threshold", 0.5)
    picture = side_by_side(args.out, run, eval_set, best_f1, log)
    passed = goals(reports, speed)
    command = "python benchmarks/slice_small.py " + shlex.join(sys.argv[1:])
    summary = {"command": command, "settings": sizes, "tile": TILE, "overlap": OVERLAP,
               "evaluations": reports, "speed": speed, "goals": passed, "picture": str(picture),
               "minutes": round((time.perf_counter() - started) / 60, 1)}  # fmt: skip
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    table = markdown(reports, speed, passed, command)
    (args.out / "summary.md").write_text(table)
    print(table)
    print(f"picture: {picture}; all in {args.out} ({summary['minutes']} minutes)")


if __name__ == "__main__":
    main()
