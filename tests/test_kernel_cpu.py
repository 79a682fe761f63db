"""The compiled C++ CPU kernel against the pure-PyTorch reference, plus build/availability logic.

The extension is built once per test session (about 15 s on 2 cores) into the normal cache folder.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

import pytest
import torch

from ddetr_cli.ops import build, kernel
from ddetr_cli.ops.reference import ms_deform_attn_reference


@pytest.fixture(scope="module")
def ext():
    """The CPU extension (built on first use); fails loudly if it cannot be built here."""
    return build.load_extension("cpu")


def shape_tensors(shapes):
    spatial = torch.tensor(shapes, dtype=torch.int64).reshape(-1, 2)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial, start


def make_inputs(n=2, lq=5, m=2, d=4, p=3, shapes=((6, 4), (3, 2), (1, 1)), dtype=torch.float64):
    g = torch.Generator().manual_seed(n * 1000 + lq * 10 + d)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    # Locations spill over the borders so that partly and fully outside points are covered.
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, n_levels, p, generator=g, dtype=torch.float64) + 1e-5
    attn = attn / attn.sum((-1, -2), keepdim=True)
    spatial, start = shape_tensors(shapes)
    return value.to(dtype), spatial, start, loc.to(dtype), attn.to(dtype), list(shapes)


def reference_grads(value, shapes, loc, attn, grad_out):
    leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_reference(leaves[0], shapes, leaves[1], leaves[2])
    out.backward(grad_out)
    return out.detach(), [t.grad for t in leaves]


def assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol, atol):
    out = kernel.forward(value, spatial, start, loc, attn)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype)
    ref_out, ref_grads = reference_grads(value, shapes, loc, attn, grad_out)
    torch.testing.assert_close(out, ref_out, rtol=rtol, atol=atol)
    grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads, strict=True):
        assert got.shape == want.shape and got.dtype == want.dtype, name
        torch.testing.assert_close(got, want, rtol=rtol, atol=atol, msg=f"grad {name}")


@pytest.mark.parametrize("d", [1, 30, 32, 64])
def test_float64_matches_reference(ext, d):
    value, spatial, start, loc, attn, shapes = make_inputs(d=d)
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("d", [1, 30, 32, 64])
def test_float32_matches_reference(ext, d):
    value, spatial, start, loc, attn, shapes = make_inputs(d=d, dtype=torch.float32)
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-4, atol=1e-5)


def test_encoder_like_float32(ext):
    """The real head layout (M=8, D=32, L=4, P=4) on a small 4-level pyramid."""
    shapes = ((10, 13), (5, 7), (3, 4), (2, 2))
    value, spatial, start, loc, attn, shapes = make_inputs(
        n=2, lq=40, m=8, d=32, p=4, shapes=shapes, dtype=torch.float32
    )
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-4, atol=1e-5)


def test_gradcheck_float64(ext):
    value, spatial, start, loc, attn, _ = make_inputs(n=1, lq=2, m=2, d=3, p=2)
    # Keep points away from cell borders, where bilinear sampling is not differentiable.
    loc = loc.clamp(0.05, 0.95)

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v, lo, a):
            ctx.save_for_backward(v, lo, a)
            return kernel.forward(v, spatial, start, lo, a)

        @staticmethod
        def backward(ctx, g):
            v, lo, a = ctx.saved_tensors
            return kernel.backward(v, spatial, start, lo, a, g)

    inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    assert torch.autograd.gradcheck(Op.apply, inputs)


def test_borders_and_outside_points(ext):
    """Exact pixel centres, the -0.5 / size-0.5 borders and points beyond them (dyadic sizes so the
    kernel and grid_sample compute the same pixel coordinate exactly)."""
    shapes = [(4, 8), (2, 2), (1, 1)]
    spatial, start = shape_tensors(shapes)
    xs = [0.0, 1.0, 0.5 / 8, 1 - 0.5 / 8, 0.5, 0.25, -0.3, 1.4, -5.0, 7.0]
    n_pts = len(xs) ** 2
    grid = torch.tensor([(x, y) for x in xs for y in xs], dtype=torch.float64)
    loc = grid.reshape(1, n_pts, 1, 1, 1, 2).expand(1, n_pts, 1, 3, 1, 2).contiguous()
    attn = torch.rand(1, n_pts, 1, 3, 1, dtype=torch.float64)
    value = torch.randn(1, sum(h * w for h, w in shapes), 1, 3, dtype=torch.float64)
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-10, atol=1e-12)


def test_points_exactly_on_the_outer_edge_contribute_nothing(ext):
    """pix == -1 or pix == size is outside (strict inequalities, as the official kernel)."""
    shapes = [(4, 8)]
    spatial, start = shape_tensors(shapes)
    edges = [(-0.5 / 8, 0.5), ((8 + 0.5) / 8, 0.5), (0.5, -0.5 / 4), (0.5, (4 + 0.5) / 4)]
    loc = torch.tensor(edges, dtype=torch.float64).reshape(1, 4, 1, 1, 1, 2)
    attn = torch.ones(1, 4, 1, 1, 1, dtype=torch.float64)
    value = torch.randn(1, 32, 1, 2, dtype=torch.float64)
    out = kernel.forward(value, spatial, start, loc, attn)
    assert torch.equal(out, torch.zeros_like(out))
    grads = kernel.backward(value, spatial, start, loc, attn, torch.ones_like(out))
    for g in grads:
        assert torch.equal(g, torch.zeros_like(g))


def test_one_by_one_levels_and_zeroed_padding(ext):
    shapes = [(1, 1), (3, 5), (1, 1)]
    value, spatial, start, loc, attn, shapes = make_inputs(n=3, lq=6, d=8, shapes=shapes)
    pad = torch.zeros(value.shape[:2], dtype=torch.bool)
    pad[1, 4:] = True  # a padded image: the model zeroes padded value rows before sampling
    value = value.masked_fill(pad[..., None, None], 0.0)
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-10, atol=1e-12)


def test_non_contiguous_inputs(ext):
    value, spatial, start, loc, attn, shapes = make_inputs(n=2, lq=4, d=6)
    value_nc = value.transpose(0, 1).contiguous().transpose(0, 1)
    loc_nc = loc.transpose(1, 2).contiguous().transpose(1, 2)
    attn_nc = attn[:, :, :, :, :].permute(1, 0, 2, 3, 4).contiguous().permute(1, 0, 2, 3, 4)
    assert not (value_nc.is_contiguous() or loc_nc.is_contiguous() or attn_nc.is_contiguous())
    out = kernel.forward(value_nc, spatial, start, loc_nc, attn_nc)
    torch.testing.assert_close(out, kernel.forward(value, spatial, start, loc, attn))
    g = torch.randn(out.shape, dtype=out.dtype).transpose(0, 1).contiguous().transpose(0, 1)
    grads_nc = kernel.backward(value_nc, spatial, start, loc_nc, attn_nc, g)
    grads = kernel.backward(value, spatial, start, loc, attn, g.contiguous())
    for a, b in zip(grads_nc, grads, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("n, lq", [(2, 0), (0, 3)])
def test_empty_batch_or_queries(ext, n, lq):
    value, spatial, start, loc, attn, _ = make_inputs(n=n, lq=lq)
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.shape == (n, lq, value.shape[2] * value.shape[3])
    gv, gl, ga = kernel.backward(value, spatial, start, loc, attn, torch.zeros_like(out))
    assert gv.shape == value.shape and gl.shape == loc.shape and ga.shape == attn.shape
    assert not gv.any()


def test_batch_100(ext):
    value, spatial, start, loc, attn, shapes = make_inputs(n=100, lq=3, m=1, d=2, p=1)
    assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-10, atol=1e-12)


def test_single_head_splits_queries_over_threads(ext):
    """N*M below the thread count: the backward splits queries into private buffers."""
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        value, spatial, start, loc, attn, shapes = make_inputs(n=1, lq=130, m=1, d=5)
        assert_matches_reference(value, spatial, start, loc, attn, shapes, rtol=1e-10, atol=1e-12)
    finally:
        torch.set_num_threads(before)


def test_deterministic(ext):
    value, spatial, start, loc, attn, _ = make_inputs(n=2, lq=50, m=4, d=8, dtype=torch.float32)
    out1 = kernel.forward(value, spatial, start, loc, attn)
    out2 = kernel.forward(value, spatial, start, loc, attn)
    assert torch.equal(out1, out2)
    g = torch.randn_like(out1)
    for a, b in zip(
        kernel.backward(value, spatial, start, loc, attn, g),
        kernel.backward(value, spatial, start, loc, attn, g),
        strict=True,
    ):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("d", [16, 32])  # any D, and the compiled-in D = 32
def test_half_value_with_float_locations_matches_float64(ext, dtype, d):
    """A float16/bfloat16 value with float32 locations and weights (the model under autocast) is
    read as it is and accumulated in float32: the result and value's gradient differ from the
    float64 reference on the same rounded inputs by the final rounding only; the locations' and
    weights' gradients are float32 and float32-accurate."""
    value, spatial, start, loc, attn, shapes = make_inputs(n=2, lq=8, d=d)
    value, loc, attn = value.to(dtype), loc.float(), attn.float()
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.dtype == dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(dtype)
    grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    assert [g.dtype for g in grads] == [dtype, torch.float32, torch.float32]
    want_out, want_grads = reference_grads(value.double(), shapes, loc.double(), attn.double(),
                                           grad_out.double())  # fmt: skip
    rounding = 2**-8 if dtype == torch.bfloat16 else 2**-11  # one rounding to the value's dtype
    pairs = zip(("out", "grad value"), (out, grads[0]), (want_out, want_grads[0]), strict=True)
    for name, got, want in pairs:
        torch.testing.assert_close(got.double(), want, rtol=rounding, atol=1e-6, msg=name)
    pairs = zip(("grad loc", "grad attn"), grads[1:], want_grads[1:], strict=True)
    for name, got, want in pairs:
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_value_is_not_converted(ext, dtype):
    """The forward reads a half/bf16 value in place: no dtype conversion runs inside it."""
    value, spatial, start, loc, attn, _ = make_inputs(n=2, lq=4, m=2, d=32)
    value, loc, attn = value.to(dtype), loc.float(), attn.float()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        kernel.forward(value, spatial, start, loc, attn)
    names = {e.name for e in prof.events()}
    assert "ddetr_cpu_kernel::forward" in names
    assert not names & {"aten::to", "aten::_to_copy", "aten::copy_"}, names


def test_argument_errors_are_python_exceptions(ext):
    value, spatial, start, loc, attn, _ = make_inputs()
    with pytest.raises(RuntimeError, match=r"value must be \(N, S, M, D\)"):
        kernel.forward(value[0], spatial, start, loc, attn)
    with pytest.raises(RuntimeError, match="sampling_locations and attention_weights must be"):
        kernel.forward(value, spatial, start, loc.float(), attn)
    with pytest.raises(RuntimeError, match="must be Float for a BFloat16 value"):
        kernel.forward(value.bfloat16(), spatial, start, loc.bfloat16(), attn.bfloat16())
    with pytest.raises(RuntimeError, match="spatial_shapes must be int64"):
        kernel.forward(value, spatial.int(), start, loc, attn)
    with pytest.raises(RuntimeError, match="attention_weights must be"):
        kernel.forward(value, spatial, start, loc, attn[..., :1])
    with pytest.raises(RuntimeError, match="does not fit"):
        kernel.forward(value, spatial * 2, start, loc, attn)
    out = kernel.forward(value, spatial, start, loc, attn)
    with pytest.raises(RuntimeError, match="grad_output must be"):
        kernel.backward(value, spatial, start, loc, attn, out[:, :1])


# ---- availability and build logic --------------------------------------------------------------


def test_is_available_on_cpu(ext):
    ok, reason = kernel.is_available(torch.device("cpu"))
    assert ok, reason


def test_disable_env(monkeypatch):
    monkeypatch.setenv("DDETR_DISABLE_KERNEL", "1")
    ok, reason = kernel.is_available("cpu")
    assert not ok and "DDETR_DISABLE_KERNEL" in reason


def test_unavailable_logs_one_warning(monkeypatch, caplog):
    def broken(device_type):
        raise build.KernelBuildError("cpu build failed: x.cpp:1:1: error: nope")

    monkeypatch.setattr(build, "load_extension", broken)
    monkeypatch.setattr(kernel, "_status", {})
    with caplog.at_level(logging.WARNING, logger="ddetr_cli.ops.kernel"):
        for _ in range(3):
            ok, reason = kernel.is_available("cpu")
    assert not ok and "error: nope" in reason
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "\n" not in warnings[0].getMessage()


def test_compile_error_is_one_line(monkeypatch, tmp_path):
    """A broken source gives KernelBuildError naming the first compiler error, on one line."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "broken.cpp").write_text("int main() { return undefined_name; }\n")
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "CSRC", src)
    monkeypatch.setattr(build, "_SOURCES", {"cpu": ["broken.cpp"]})
    monkeypatch.setattr(build, "_HEADERS", {"cpu": []})
    monkeypatch.setattr(build, "_loaded", {})
    # Its own extension name: torch renames a rebuilt name with changed sources (name_v1).
    monkeypatch.setattr(build, "_module_name", lambda device_type: "ddetr_broken_for_test")
    with pytest.raises(build.KernelBuildError) as info:
        build.load_extension("cpu")
    message = str(info.value)
    assert "\n" not in message and "error" in message and "undefined_name" in message


def test_missing_ninja_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.raises(build.KernelBuildError, match="ninja is not installed"):
        build.load_extension("cpu")


def test_cuda_build_needs_an_arch_without_a_gpu(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: its capability is the default")
    monkeypatch.delenv("TORCH_CUDA_ARCH_LIST", raising=False)
    monkeypatch.setattr(build, "_loaded", {})
    with pytest.raises(build.KernelBuildError, match="TORCH_CUDA_ARCH_LIST"):
        build.load_extension("cuda")


def test_cache_key_tracks_arch_and_sources(monkeypatch):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    key90 = build.build_key("cuda")
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    assert build.build_key("cuda") != key90
    assert torch.__version__.split("+")[0] in key90 and "sm9.0" in key90
    assert build.build_key("cpu").split("-")[-1] != key90.split("-")[-1]


def test_cache_key_tracks_the_cuda_toolkit(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(build, "toolkit_version", lambda: "13.0")
    key130 = build.build_key("cuda")
    monkeypatch.setattr(build, "toolkit_version", lambda: "13.1")
    assert build.build_key("cuda") != key130 and "-nvcc13.0-" in key130
    # Without a toolkit, a finished build of torch's CUDA major loads as it is (no compiler needed).
    finished = tmp_path / key130
    finished.mkdir()
    (finished / "build.json").write_text("{}")
    (finished / "ddetr_ms_deform_attn_cuda.so").write_bytes(b"")
    monkeypatch.setattr(build, "toolkit_version", lambda: None)
    assert build.build_dir("cuda") == finished
    monkeypatch.setattr(torch.version, "cuda", "14.0")
    assert "-nvccnone-" in build.build_dir("cuda").name


def test_cuda_toolkit_major_mismatch_means_the_reference_with_one_line(monkeypatch, tmp_path):
    """nvcc 12.x under a torch built with CUDA 13 would link a second CUDA runtime: refused with
    one line naming both versions, and `auto` runs the reference."""
    from ddetr_cli.ops import backends

    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("TORCH_CUDA_ARCH_LIST", "9.0")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(build, "_cuda_home", lambda: "/opt/cuda-12.4")
    monkeypatch.setattr(build, "toolkit_version", lambda: "12.4")
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(kernel, "_status", {})
    with pytest.raises(build.KernelBuildError) as info:
        build.load_extension("cuda")
    assert str(info.value) == (
        "the CUDA toolkit at /opt/cuda-12.4 is 12.4 but torch was built with CUDA 13.0; "
        "set CUDA_HOME to a CUDA 13.x toolkit"
    )
    backend, reason = backends.resolve_backend("cuda")
    assert backend == "reference" and reason == str(info.value)
    backends.clear_cache()


def test_concurrent_builds_compile_once(monkeypatch, tmp_path):
    """The file lock serialises builders; the second finds the finished build and only loads it."""
    monkeypatch.setenv("DDETR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(build, "_loaded", {})
    monkeypatch.setattr(build, "_info", {})
    monkeypatch.setattr(build, "_check_toolchain", lambda device_type: {})
    calls, inside = [], []

    def fake_compile(device_type, build_dir, tools):
        inside.append(1)
        assert len(inside) == 1, "two builds ran at once"
        time.sleep(0.3)
        (Path(build_dir) / f"{build._module_name(device_type)}.so").write_bytes(b"")
        calls.append(device_type)
        inside.pop()

    monkeypatch.setattr(build, "_compile", fake_compile)
    monkeypatch.setattr(build, "_load_so", lambda device_type, so_path: "loaded")
    results, errors = [], []

    def worker():
        try:
            build._loaded.pop("cpu", None)  # each thread acts like a separate process
            results.append(build.load_extension("cpu"))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and results == ["loaded"] * 3
    assert calls == ["cpu"]
    (marker,) = tmp_path.glob("*/build.json")
    assert json.loads(marker.read_text())["device_type"] == "cpu"


def test_build_info_reports_the_cpu_build(ext):
    info = build.build_info()["cpu"]
    assert Path(info["cache_dir"]).is_dir() and info["build_seconds"] >= 0
