"""`ddetr bench`: parameter counts, FLOPs that include the deformable sampling, the speed loop."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ddetr_cli.bench.flops import PARTS, count_flops
from ddetr_cli.bench.model import (
    BenchOptions,
    build_bench_model,
    count_params,
    measure_speed,
    run_bench,
)
from ddetr_cli.bench.timing import time_forward
from ddetr_cli.cli import app
from ddetr_cli.errors import UsageError
from ddetr_cli.model import build_model
from ddetr_cli.ops import ms_deform_attn_macs
from ddetr_cli.recipe import load_recipe

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
# Official counts (trainable, all) from the release logs; docs/design.md#parameters.
OFFICIAL_PARAMS = {
    "deformable_detr.yaml": (39_847_265, 40_069_665),
    "refine.yaml": (40_627_260, 40_849_660),
    "two_stage.yaml": (40_959_129, 41_181_529),
    "single_scale.yaml": (33_844_193, 34_066_593),
}
TINY = [
    "model.backbone=resnet18",
    "model.hidden_dim=32",
    "model.nheads=2",
    "model.enc_layers=1",
    "model.dec_layers=1",
    "model.dim_feedforward=32",
    "model.num_queries=5",
]
runner = CliRunner()


def r50(*overrides: str) -> torch.nn.Module:
    return build_model(load_recipe(None, list(overrides))).eval()


@pytest.fixture(scope="module")
def plain_r50() -> torch.nn.Module:
    return r50()


@pytest.mark.parametrize("recipe", sorted(OFFICIAL_PARAMS))
def test_official_recipes_have_the_official_parameter_counts(recipe):
    model, _, _ = build_bench_model(None, RECIPES / recipe, [])
    total, trainable = count_params(model)
    assert (trainable, total) == OFFICIAL_PARAMS[recipe]


def test_flops_count_the_deformable_sampling_and_parts_add_up(plain_r50):
    report = count_flops(plain_r50, [(256, 320)])
    # Levels at strides 8/16/32/64 of 256x320: 32x40 + 16x20 + 8x10 + 4x5 = 1700 positions.
    per_query = ms_deform_attn_macs(N=1, Lq=1, M=8, D=32, L=4, P=4)
    expected_op = 6 * (1700 + 300) * per_query  # 6 encoder + 6 decoder layers
    assert report.ms_deform_attn_gflops == pytest.approx(expected_op / 1e9)
    assert report.ms_deform_attn_gflops > 0
    assert set(report.parts) == set(PARTS)
    assert sum(report.parts.values()) == pytest.approx(report.gflops)
    assert all(v > 0 for v in report.parts.values())
    assert report.parts["backbone"] > report.parts["decoder"]
    assert report.by_op["ddetr.ms_deform_attn"] == pytest.approx(report.ms_deform_attn_gflops)
    assert 0 < report.ms_deform_attn_gflops < report.parts["encoder"] + report.parts["decoder"]


def test_flops_convention_is_multiply_adds(plain_r50):
    """One 1x1 conv from 2048 to 256 channels on an h x w map is 2048*256*h*w multiply-adds."""
    report = count_flops(plain_r50, [(256, 320)])
    counted = report.parts["input_projection"] * 1e9
    # input_proj: 1x1 convs on C3/C4/C5 and the 3x3 stride-2 conv on C5 (bias and GroupNorm
    # are not matmuls and not counted).
    expected = (
        512 * 256 * 32 * 40 + 1024 * 256 * 16 * 20 + 2048 * 256 * 8 * 10 + 2048 * 256 * 9 * 4 * 5
    )
    assert counted == pytest.approx(expected)


def test_refinement_heads_inside_the_decoder_count_as_heads(plain_r50):
    plain = count_flops(plain_r50, [(128, 160)])
    refine = count_flops(r50("model.with_box_refine=true"), [(128, 160)])
    assert refine.parts["decoder"] == pytest.approx(plain.parts["decoder"])
    assert refine.parts["heads"] > plain.parts["heads"]


def test_flops_average_over_picture_sizes(plain_r50):
    a = count_flops(plain_r50, [(128, 160)]).gflops
    b = count_flops(plain_r50, [(160, 128)]).gflops
    mean = count_flops(plain_r50, [(128, 160), (160, 128), (128, 160)])
    assert mean.gflops == pytest.approx((2 * a + b) / 3)
    assert mean.n_images == 3 and mean.sizes == [(128, 160), (160, 128)]


def test_flops_fall_back_to_real_tensors_when_meta_fails(monkeypatch):
    import ddetr_cli.bench.flops as flops

    model = build_model(load_recipe(None, TINY)).eval()
    on_meta = count_flops(model, [(64, 96)])

    def no_meta(_model):
        raise RuntimeError("no meta here")

    monkeypatch.setattr(flops, "_meta_copy", no_meta)
    real = count_flops(model, [(64, 96)])
    assert real.ms_deform_attn_gflops == pytest.approx(on_meta.ms_deform_attn_gflops)
    assert real.parts["backbone"] == pytest.approx(on_meta.parts["backbone"])
    assert model.training is False
    assert any(p.requires_grad for p in model.parameters())  # flags restored


def test_time_forward_runs_warmup_then_timed_iterations():
    calls = []
    latencies, total, first = time_forward(lambda: calls.append(1), torch.device("cpu"), 2, 5)
    assert len(calls) == 7 and len(latencies) == 5
    assert total >= sum(latencies) * 0.99 and first is not None


def test_measure_speed_reports_fps_and_latency():
    model = build_model(load_recipe(None, TINY)).eval()
    result = measure_speed(model, torch.randn(3, 64, 96), torch.device("cpu"), "fp32", 2, 1, 3)
    assert result.error is None
    assert result.fps > 0 and result.latency_ms_p50 <= result.latency_ms_p90
    assert result.peak_memory_mib is None  # CUDA only


def test_run_bench_report_keys():
    model, recipe, source = build_bench_model(None, None, TINY)
    options = BenchOptions(flops=True, fps=True, image_size=(64, 96), iters=2, warmup=1)
    report = run_bench(model, recipe, source, options)
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert report["params_trainable"] < report["params"]
    assert report["gflops"] == pytest.approx(report["flops"]["gflops"], abs=1e-3)
    backends = {r["backend"] for r in report["speed"]["results"]}
    assert "reference" in backends and backends <= {"reference", "kernel"}
    assert report["speed"]["protocol"]["timed_iterations"] == 2
    json.dumps(report)  # JSON-ready


def test_cli_bench_flops_json(tmp_path):
    out = tmp_path / "bench.json"
    result = runner.invoke(app, ["bench", "--image-size", "64", "96", "--json", str(out), *TINY])
    assert result.exit_code == 0, result.output
    assert "multiply-add" in result.stdout and "params" in result.stdout
    report = json.loads(out.read_text())
    for key in ("params", "params_trainable", "gflops", "flops", "machine", "model", "inputs"):
        assert key in report
    assert report["speed"] is None  # --fps not asked
    assert set(report["flops"]["parts"]) == set(PARTS)
    assert report["flops"]["ms_deform_attn_gflops"] > 0


def test_cli_bench_fps_tiny_model(tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--fps", "--image-size", "64", "96", "-b", "1,2", "--warmup", "1"]
    args += ["--iters", "2", "--attention-backend", "reference", "--json", str(out), *TINY]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["speed"]["results"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [("reference", 1), ("reference", 2)]
    assert all(r["fps"] > 0 for r in rows)
    assert report["gflops"] is None  # --fps alone skips the FLOP count
    assert "FPS" in result.stdout


def test_cli_bench_images_folder_averages_flops(tmp_path, image_files):
    folder = tmp_path / "good"
    folder.mkdir()
    for name in ("rgb", "gray", "rgba"):
        src = image_files[name]
        (folder / src.name).write_bytes(src.read_bytes())
    out = tmp_path / "bench.json"
    args = ["bench", "--images", str(folder), "--json", str(out), *TINY]
    args += ["data.eval_min_size=64", "data.eval_max_size=96"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["flops"]["n_images"] == 3
    assert report["inputs"]["n_images"] == 3


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["--dtype", "fp8"], 2, "--dtype"),
        (["-b", "0"], 2, "--batch-size"),
        (["-b", "x"], 2, "--batch-size"),
        (["--attention-backend", "fast", "--fps"], 2, "--attention-backend"),
        (["--images", "nowhere", "--image-size", "64", "64"], 2, "either --image-size"),
        (["--images", "nowhere"], 1, "nowhere"),
        (["model.nheds=8"], 1, "model.nheds"),
        (["--fps", "--compile", "--warmup", "0"], 2, "--compile"),
    ],
)
def test_cli_bench_errors_are_one_line(args, status, message):
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == status, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0]


def test_speedups_compare_each_row_with_the_reference_of_its_setting():
    from ddetr_cli.bench.backends import speedups

    rows = [("reference", "a", 2.0), ("kernel", "a", 6.0), ("kernel", "b", 5.0),
            ("reference", "c", None), ("kernel", "c", 1.0)]  # fmt: skip
    gains = speedups(rows, setting=lambda r: r[1], speed=lambda r: r[2], backend=lambda r: r[0])
    assert gains == [1.0, 3.0, None, None, None]


def test_options_are_checked_once_before_the_model_is_built(monkeypatch):
    """`ddetr bench` refuses bad options before it builds (or downloads) a model."""
    import ddetr_cli.bench.model as bench_model

    checked = []
    real = bench_model.check_options
    monkeypatch.setattr(bench_model, "check_options", lambda o: (checked.append(o), real(o)))
    monkeypatch.setattr(bench_model, "build_bench_model", lambda *a: pytest.fail("built"))
    with pytest.raises(UsageError, match="--batch-size"):
        bench_model.bench_weights(None, None, (), BenchOptions(batch_sizes=[0]))
    options = BenchOptions(flops=False, fps=True, image_size=(64, 64), warmup=0, iters=1)
    monkeypatch.setattr(bench_model, "build_bench_model", lambda *a: (None, {}, "tiny"))
    monkeypatch.setattr(bench_model, "_measure", lambda *a: {"measured": True})
    assert bench_model.bench_weights(None, None, (), options) == {"measured": True}
    assert len(checked) == 2  # once per call


@pytest.mark.gpu
def test_measure_speed_on_cuda_reports_peak_memory():
    model = build_model(load_recipe(None, TINY)).eval().cuda()
    device = torch.device("cuda")
    for dtype in ("fp32", "bf16"):
        result = measure_speed(model, torch.randn(3, 64, 96), device, dtype, 2, 1, 3)
        assert result.error is None and result.fps > 0
        assert result.peak_memory_mib > 0
