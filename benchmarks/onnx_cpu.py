"""CPU latency of the exported ONNX model in onnxruntime against ddetr's PyTorch path.

The plain R50 Deformable DETR (random weights, the built-in defaults) at 800x1066, batch 1, on
``--threads`` CPU threads (default 2), timed side by side in one process: each round runs
PyTorch (``optimize_for_inference()`` and the attention backend 'auto': the compiled kernel
when it builds, else the reference) and then onnxruntime on the same picture.
Also times the attention op alone at the R50 encoder's shapes in both ONNX translations
(gather, GridSample) against PyTorch, which is what the sampler choice in docs/export.md rests
on, and reports the full model's largest output differences.

  python benchmarks/onnx_cpu.py --iters 5 --json benchmarks/onnx_cpu.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddetr_cli.export.runtime import ort_session
from ddetr_cli.export.writer import export_onnx
from ddetr_cli.model import build_model
from ddetr_cli.ops import ms_deform_attn
from ddetr_cli.ops.backends import resolve_backend
from ddetr_cli.ops.onnx import SAMPLERS, translation_table
from ddetr_cli.recipe import load_recipe


class _Attention(torch.nn.Module):
    def __init__(self, shapes: list[tuple[int, int]], backend: str) -> None:
        super().__init__()
        self.shapes = shapes
        self.backend = backend

    def forward(self, value, locations, weights):
        spatial = torch.as_tensor(self.shapes, dtype=torch.long)
        start = torch.cat((spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]))
        return ms_deform_attn(value, spatial, start, locations, weights, backend=self.backend)


def bench_op(size: tuple[int, int], threads: int, warmup: int, iters: int, tmp: Path) -> dict:
    """The encoder's attention (Lq = S) at the R50's four levels for ``size``."""
    h, w = size
    for _ in range(3):  # stride 8: the ResNet's stem, max pool and layer2 each halve, rounding up
        h, w = -(-h // 2), -(-w // 2)
    shapes = []
    for _ in range(4):  # levels at strides 8, 16, 32 and the extra stride-2 conv's 64
        shapes.append((h, w))
        h, w = -(-h // 2), -(-w // 2)
    s = sum(a * b for a, b in shapes)
    n, m, d, levels, p = 1, 8, 32, 4, 4
    g = torch.Generator().manual_seed(0)
    value = torch.randn(n, s, m, d, generator=g)
    locations = torch.rand(n, s, m, levels, p, 2, generator=g)
    weights = torch.softmax(torch.randn(n, s, m, levels * p, generator=g), -1)
    weights = weights.view(n, s, m, levels, p)
    inputs = (value, locations, weights)
    result: dict = {"shapes": shapes, "S": s}
    with torch.inference_mode():
        ref = _Attention(shapes, "reference")(*inputs)
    runners = {"torch_reference": lambda: _Attention(shapes, "reference")(*inputs)}
    if resolve_backend("cpu", None)[0] == "kernel":
        runners["torch_kernel"] = lambda: _Attention(shapes, "kernel")(*inputs)
    for sampler in SAMPLERS:
        program = torch.onnx.export(
            _Attention(shapes, "reference").eval(),
            inputs,
            dynamo=True,
            custom_translation_table=translation_table(sampler),
            opset_version=18,
            verbose=False,
        )
        path = tmp / f"op_{sampler}.onnx"
        program.save(str(path))
        session = ort_session(path, threads=threads)
        names = [i.name for i in session.get_inputs()]
        feeds = dict(zip(names, [t.numpy() for t in inputs], strict=True))
        out = torch.from_numpy(session.run(None, feeds)[0])
        result[f"onnx_{sampler}_max_diff"] = float((out - ref).abs().max())
        runners[f"onnx_{sampler}"] = lambda s=session, f=feeds: s.run(None, f)
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for round_index in range(warmup + iters):  # interleaved: the load drifts between rounds
            for name, run in runners.items():
                start = time.perf_counter()
                run()
                if round_index >= warmup:
                    times[name].append(time.perf_counter() - start)
    result["median_ms"] = {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()}
    result["all_ms"] = {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()}
    ratios = [a / b for a, b in zip(times["onnx_gridsample"], times["onnx_gather"], strict=True)]
    result["gridsample_over_gather_per_round_median"] = round(statistics.median(ratios), 3)
    return result


def bench_model(size: tuple[int, int], threads: int, warmup: int, iters: int, tmp: Path) -> dict:
    """PyTorch and both exports, one run of each per round (the machine's load drifts)."""
    recipe = load_recipe(None, ["model.pretrained_backbone=false"])
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    sessions, export_s = {}, {}
    for sampler in SAMPLERS:
        path = tmp / f"r50_{sampler}.onnx"
        started = time.perf_counter()
        export_onnx(model, recipe, path, image_size=size, sampler=sampler, check=False)
        export_s[sampler] = round(time.perf_counter() - started, 1)
        sessions[sampler] = ort_session(path, threads=threads)
        print(f"exported {sampler} in {export_s[sampler]} s", flush=True)
    model.optimize_for_inference()
    backend = resolve_backend("cpu", None)[0]
    picture = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
    feeds = {"images": picture.numpy()}

    def run_torch():
        with torch.inference_mode():
            return model(picture)

    runners = {"torch": run_torch}
    for sampler, session in sessions.items():
        runners[f"onnx_{sampler}"] = lambda s=session: s.run(None, feeds)
    outputs = {}
    for _ in range(warmup):
        for name, run in runners.items():
            outputs[name] = run()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for _ in range(iters):  # side by side: one of each per round
        for name, run in runners.items():
            start = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - start)
    ref = outputs["torch"]
    result: dict = {
        "image_size": list(size),
        "export_seconds": export_s,
        "torch_attention_backend": backend,
        "median_ms": {k: round(statistics.median(v) * 1e3, 1) for k, v in times.items()},
        "all_ms": {k: [round(t * 1e3, 1) for t in v] for k, v in times.items()},
    }
    torch_ms = result["median_ms"]["torch"]
    for sampler in SAMPLERS:
        out = outputs[f"onnx_{sampler}"]
        result[f"onnx_{sampler}_over_torch"] = round(
            result["median_ms"][f"onnx_{sampler}"] / torch_ms, 3
        )
        # Per round ratios: each round's runs are seconds apart, under the same load.
        per_round = [o / t for o, t in zip(times[f"onnx_{sampler}"], times["torch"], strict=True)]
        result[f"onnx_{sampler}_over_torch_per_round_median"] = round(
            statistics.median(per_round), 3
        )
        result[f"onnx_{sampler}_max_logits_diff"] = float(
            (torch.from_numpy(out[0]) - ref["pred_logits"]).abs().max()
        )
        result[f"onnx_{sampler}_max_boxes_diff"] = float(
            (torch.from_numpy(out[1]) - ref["pred_boxes"]).abs().max()
        )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1066))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--skip-op", action="store_true")
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    import onnxruntime

    results: dict = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": args.threads},
        "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__},
        "protocol": {"warmup": args.warmup, "iters": args.iters, "statistic": "median"},
    }
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        if not args.skip_op:
            results["op"] = bench_op(tuple(args.size), args.threads, args.warmup, args.iters, tmp)
            print(json.dumps(results["op"], indent=1), flush=True)
        if not args.skip_model:
            size = tuple(args.size)
            results["model"] = bench_model(size, args.threads, args.warmup, args.iters, tmp)
            print(json.dumps(results["model"], indent=1), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
