"""Tests for the multi-scale deformable attention op (reference backend, dispatch, registration)."""

from __future__ import annotations

import logging
import math
import sys
import types

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ddetr_cli.ops import (
    backends,
    ms_deform_attn,
    ms_deform_attn_macs,
    ms_deform_attn_reference,
    resolve_backend,
)
from ddetr_cli.ops import op as op_module
from ddetr_cli.ops.reference import ms_deform_attn_reference_backward

SHAPES = [(3, 4), (2, 1), (1, 1)]  # includes a 1x1 and a 2x1 level


@pytest.fixture(autouse=True)
def _fresh_backend_cache():
    backends.clear_cache()
    yield
    backends.clear_cache()


def shape_tensors(shapes):
    spatial = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    return spatial, start


def make_inputs(n=2, lq=3, m=2, d=3, p=2, shapes=SHAPES, dtype=torch.float64, seed=0):
    """Random inputs with locations inside, outside and exactly on the map borders."""
    g = torch.Generator().manual_seed(seed)
    n_levels = len(shapes)
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g, dtype=torch.float64)
    if n > 0 and lq > 1:
        loc[0, 0] = 0.0  # top-left border: pix = -0.5
        loc[0, 1] = 1.0  # bottom-right border: pix = size - 0.5
    if n > 1 and lq > 0:
        loc[1, 0, ..., 0] = -0.3  # left of the map (partly or fully outside)
        loc[1, 0, ..., 1] = 1.3  # below the map
    weights = torch.rand(n, lq, m, n_levels, p, generator=g, dtype=torch.float64) + 1e-5
    weights = weights / weights.sum((-1, -2), keepdim=True)
    spatial, start = shape_tensors(shapes)
    return (
        value.to(dtype),
        spatial,
        start,
        loc.to(dtype),
        weights.to(dtype),
    )


def naive_ms_deform_attn(value, shapes, loc, weights):
    """Per-point loop from the formula: pix = loc * size - 0.5, out-of-range corners give 0."""
    n, _, m, d = value.shape
    lq, n_levels, n_points = loc.shape[1], loc.shape[3], loc.shape[4]
    out = torch.zeros(n, lq, m, d, dtype=torch.float64)
    starts = [0]
    for h, w in shapes[:-1]:
        starts.append(starts[-1] + h * w)
    for b in range(n):
        for q in range(lq):
            for head in range(m):
                for lvl in range(n_levels):
                    h, w = shapes[lvl]
                    for pt in range(n_points):
                        x = loc[b, q, head, lvl, pt, 0].item() * w - 0.5
                        y = loc[b, q, head, lvl, pt, 1].item() * h - 0.5
                        attn = weights[b, q, head, lvl, pt].item()
                        x0, y0 = math.floor(x), math.floor(y)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= xx < w and 0 <= yy < h:
                                    pos = starts[lvl] + yy * w + xx
                                    out[b, q, head] += attn * wy * wx * value[b, pos, head].double()
    return out.reshape(n, lq, m * d)


# --------------------------------------------------------------------------- numerics


def test_matches_naive_loop():
    value, spatial, start, loc, weights = make_inputs()
    # Exactly on pixel centres, on the sampling cut-off (pix == -1) and at pix == size.
    loc[0, 2, 0, 0, 0] = torch.tensor([0.5 / 4, 1.5 / 3], dtype=torch.float64)
    loc[0, 2, 1, 0, 1] = torch.tensor([-0.5 / 4, 1.0 + 0.5 / 3], dtype=torch.float64)
    expected = naive_ms_deform_attn(value, SHAPES, loc, weights)
    out = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
    direct = ms_deform_attn_reference(value, SHAPES, loc, weights)
    torch.testing.assert_close(direct, expected, rtol=1e-12, atol=1e-12)


def test_gradcheck_float64():
    value, spatial, start, loc, weights = make_inputs()
    inputs = tuple(t.clone().requires_grad_(True) for t in (value, loc, weights))

    def fn(v, sl, aw):
        return ms_deform_attn(v, spatial, start, sl, aw, backend="reference")

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_closed_form_backward_matches_autograd(dtype):
    value, _, _, loc, weights = make_inputs(dtype=dtype, seed=1)
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    out = ms_deform_attn_reference(inputs[0], SHAPES, inputs[1], inputs[2])
    grad_out = torch.randn_like(out)
    expected = torch.autograd.grad(out, inputs, grad_out)
    got = ms_deform_attn_reference_backward(value, SHAPES, loc, weights, grad_out)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    for e, g in zip(expected, got, strict=True):
        torch.testing.assert_close(g, e, rtol=tol, atol=tol)


def test_float32_agrees_with_float64():
    inputs64 = make_inputs(seed=2)
    inputs32 = make_inputs(seed=2, dtype=torch.float32)
    out64 = ms_deform_attn(*inputs64, backend="reference")
    out32 = ms_deform_attn(*inputs32, backend="reference")
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_runs(dtype):
    value, spatial, start, loc, weights = make_inputs(seed=3)
    expected = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    half = [t.to(dtype).requires_grad_(True) for t in (value, loc, weights)]
    out = ms_deform_attn(half[0], spatial, start, half[1], half[2], backend="reference")
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0.05, atol=0.05)
    out.float().sum().backward()
    full = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ms_deform_attn(full[0], spatial, start, full[1], full[2], backend="reference").sum().backward()
    for got, want in zip(half, full, strict=True):
        assert got.grad.dtype == dtype
        torch.testing.assert_close(got.grad.double(), want.grad, rtol=0.05, atol=0.05)


def test_float64_anywhere_makes_everything_float64():
    value, spatial, start, loc, weights = make_inputs(seed=4)
    out = ms_deform_attn(value.float(), spatial, start, loc, weights.float(), backend="reference")
    assert out.dtype == torch.float64


class OpSpy:
    """Records the tensors the public op hands to the custom op, then runs it."""

    def __init__(self, monkeypatch):
        self.calls = []
        real = op_module._ms_deform_attn_op

        def spy(value, spatial_shapes, level_start_index, loc, weights, backend):
            self.calls.append({"value": value, "loc": loc, "weights": weights})
            return real(value, spatial_shapes, level_start_index, loc, weights, backend)

        monkeypatch.setattr(op_module, "_ms_deform_attn_op", spy)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("sampling", [torch.float32, "same"])
def test_half_value_is_used_as_is_with_float32_sampling(monkeypatch, dtype, sampling):
    """value keeps its dtype and storage (no copy); locations and weights run in float32 (bf16 ones
    are widened); the result has value's dtype, each gradient its input's."""
    sampling = dtype if sampling == "same" else sampling
    value, spatial, start, loc, weights = make_inputs(seed=5)
    leaves = [value.to(dtype), loc.to(sampling), weights.to(sampling)]
    leaves = [t.requires_grad_(True) for t in leaves]
    spy = OpSpy(monkeypatch)
    out = ms_deform_attn(leaves[0], spatial, start, leaves[1], leaves[2], backend="reference")
    (call,) = spy.calls
    assert call["value"].data_ptr() == leaves[0].data_ptr()
    assert call["loc"].dtype == call["weights"].dtype == torch.float32
    assert out.dtype == dtype
    wide = [t.detach().double() for t in leaves]
    expected = ms_deform_attn(wide[0], spatial, start, wide[1], wide[2], backend="reference")
    torch.testing.assert_close(out.double(), expected, rtol=2**-7, atol=1e-3)
    out.float().square().sum().backward()
    assert [t.grad.dtype for t in leaves] == [dtype, sampling, sampling]


@pytest.mark.parametrize(("n", "lq"), [(2, 0), (0, 3)])
def test_empty_batch_or_queries(n, lq):
    value, spatial, start, loc, weights = make_inputs(n=n, lq=lq)
    inputs = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    out = ms_deform_attn(inputs[0], spatial, start, inputs[1], inputs[2], backend="reference")
    assert out.shape == (n, lq, 2 * 3)
    out.sum().backward()
    for t in inputs:
        assert t.grad.shape == t.shape
        assert not t.grad.any()
    direct = ms_deform_attn_reference(value, SHAPES, loc, weights)
    assert direct.shape == (n, lq, 6)


def test_batch_elements_are_independent():
    value, spatial, start, loc, weights = make_inputs(n=3, seed=5)
    out = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    for b in range(3):
        one = slice(b, b + 1)
        single = ms_deform_attn(
            value[one], spatial, start, loc[one], weights[one], backend="reference"
        )
        torch.testing.assert_close(out[one], single, rtol=0, atol=0)


def test_non_contiguous_inputs():
    value, spatial, start, loc, weights = make_inputs(seed=6)
    # Same values, awkward strides.
    value_nc = value.transpose(1, 3).contiguous().transpose(1, 3)
    loc_nc = loc.permute(5, 4, 3, 2, 1, 0).contiguous().permute(5, 4, 3, 2, 1, 0)
    weights_nc = torch.stack([weights, weights], dim=-1)[..., 0]
    spatial_nc = spatial.t().contiguous().t()
    assert not any(t.is_contiguous() for t in (value_nc, loc_nc, weights_nc, spatial_nc))
    expected = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    leaves = [t.requires_grad_(True) for t in (value_nc, loc_nc, weights_nc)]
    out = ms_deform_attn(leaves[0], spatial_nc, start, leaves[1], leaves[2], backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    out.sum().backward()
    contiguous = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ms_deform_attn(contiguous[0], spatial, start, contiguous[1], contiguous[2],
                   backend="reference").sum().backward()  # fmt: skip
    for got, want in zip(leaves, contiguous, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=0, atol=0)


# --------------------------------------------------------------------------- registration


def test_opcheck_custom_ops():
    value, spatial, start, loc, weights = make_inputs(seed=7)
    value, loc, weights = (t.requires_grad_(True) for t in (value, loc, weights))
    torch.library.opcheck(
        torch.ops.ddetr.ms_deform_attn.default, (value, spatial, start, loc, weights, "reference")
    )
    grad_out = torch.randn(2, 3, 6, dtype=torch.float64)
    torch.library.opcheck(
        torch.ops.ddetr.ms_deform_attn_backward.default,
        (value.detach(), spatial, start, loc.detach(), weights.detach(), grad_out, "reference"),
    )


class TinyDeformableAttention(nn.Module):
    """A minimal MSDeformAttn-like block: projections around the op."""

    def __init__(self, dim=8, heads=2, levels=2, points=2):
        super().__init__()
        self.heads, self.levels, self.points = heads, levels, points
        self.value_proj = nn.Linear(dim, dim)
        self.offsets = nn.Linear(dim, heads * levels * points * 2)
        self.weights = nn.Linear(dim, heads * levels * points)
        self.output_proj = nn.Linear(dim, dim)

    def forward(self, query, memory, spatial_shapes, level_start_index, reference_points):
        n, lq, c = query.shape
        shape = (n, lq, self.heads, self.levels, self.points)
        value = self.value_proj(memory).view(n, memory.shape[1], self.heads, c // self.heads)
        offsets = self.offsets(query).view(*shape, 2)
        attn = self.weights(query).view(n, lq, self.heads, -1).softmax(-1).view(shape)
        loc = reference_points[:, :, None, :, None, :] + 0.1 * offsets
        out = ms_deform_attn(value, spatial_shapes, level_start_index, loc, attn, "reference")
        return self.output_proj(out)


@pytest.mark.parametrize("compile_backend", ["aot_eager", "inductor"])
def test_torch_compile_fullgraph_matches_eager(compile_backend):
    torch.manual_seed(0)
    module = TinyDeformableAttention()
    shapes = [(4, 5), (2, 3)]
    spatial, start = shape_tensors(shapes)
    query = torch.randn(2, 6, 8)
    memory = torch.randn(2, sum(h * w for h, w in shapes), 8)
    ref = torch.rand(2, 6, 2, 2)
    args = (query, memory, spatial, start, ref)

    eager = module(*args)
    eager.square().sum().backward()
    eager_grads = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()

    compiled = torch.compile(module, fullgraph=True, backend=compile_backend)
    out = compiled(*args)
    out.square().sum().backward()
    torch.testing.assert_close(out, eager, rtol=1e-5, atol=1e-6)
    for expected, p in zip(eager_grads, module.parameters(), strict=True):
        torch.testing.assert_close(p.grad, expected, rtol=1e-4, atol=1e-5)


def test_flop_counter_uses_formula():
    n, lq, m, d, p = 2, 3, 2, 3, 2
    value, spatial, start, loc, weights = make_inputs(n=n, lq=lq, m=m, d=d, p=p, seed=8)
    value.requires_grad_(True)
    macs = ms_deform_attn_macs(n, lq, m, d, len(SHAPES), p)
    assert macs == n * lq * m * d * len(SHAPES) * p * 5
    with FlopCounterMode(display=False) as counter:
        out = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
        out.backward(torch.ones_like(out))
    counts = counter.get_flop_counts()["Global"]
    assert counts[torch.ops.ddetr.ms_deform_attn] == 2 * macs
    assert counts[torch.ops.ddetr.ms_deform_attn_backward] == 4 * macs
    assert counter.get_total_flops() == 6 * macs


# --------------------------------------------------------------------------- backends


def fake_kernel(available=True, reason="fake kernel ready", calls=None):
    """A stand-in kernel module honouring the contract, backed by the reference."""

    def check(*tensors):
        assert all(t.is_contiguous() for t in tensors)
        assert len({t.device for t in tensors}) == 1

    def forward(value, spatial_shapes, level_start_index, loc, weights):
        check(value, spatial_shapes, level_start_index, loc, weights)
        calls.append("forward")
        return ms_deform_attn_reference(value, spatial_shapes.tolist(), loc, weights)

    def backward(value, spatial_shapes, level_start_index, loc, weights, grad_output):
        check(value, spatial_shapes, level_start_index, loc, weights, grad_output)
        calls.append("backward")
        return ms_deform_attn_reference_backward(
            value, spatial_shapes.tolist(), loc, weights, grad_output
        )

    module = types.ModuleType("ddetr_cli.ops.kernel")
    module.is_available = lambda device: (available, reason)
    module.forward = forward
    module.backward = backward
    return module


def test_reference_backend_resolves_without_kernel_probe(monkeypatch):
    monkeypatch.setattr(backends, "import_kernel", lambda: pytest.fail("kernel probed"))
    assert resolve_backend("cpu", "reference") == ("reference", "requested explicitly")


def test_missing_kernel_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "ddetr_cli.ops.kernel", None)  # import now fails
    assert backends.import_kernel() == (None, "kernel module not present")
    value, spatial, start, loc, weights = make_inputs()
    with pytest.raises(RuntimeError, match="'kernel' is unavailable on cpu: kernel module not"):
        ms_deform_attn(value, spatial, start, loc, weights, backend="kernel")


def test_kernel_unavailable_raises_and_auto_falls_back(monkeypatch, caplog):
    module = fake_kernel(available=False, reason="no C++ toolchain", calls=[])
    monkeypatch.setattr(backends, "import_kernel", lambda: (module, ""))
    value, spatial, start, loc, weights = make_inputs()
    with pytest.raises(RuntimeError, match="no C\\+\\+ toolchain"):
        ms_deform_attn(value, spatial, start, loc, weights, backend="kernel")
    with caplog.at_level(logging.INFO, logger="ddetr_cli.ops"):
        out = ms_deform_attn(value, spatial, start, loc, weights)
        ms_deform_attn(value, spatial, start, loc, weights, backend="auto")
    expected = ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    messages = [r.getMessage() for r in caplog.records if r.name == "ddetr_cli.ops"]
    assert len(messages) == 1  # once per device
    assert "reference" in messages[0] and "no C++ toolchain" in messages[0]
    assert resolve_backend(torch.device("cpu")) == ("reference", "no C++ toolchain")


def test_failing_availability_probe_means_unavailable(monkeypatch):
    module = fake_kernel(calls=[])

    def boom(device):
        raise OSError("driver exploded")

    module.is_available = boom
    monkeypatch.setattr(backends, "import_kernel", lambda: (module, ""))
    backend, reason = resolve_backend("cpu", "auto")
    assert backend == "reference" and "driver exploded" in reason


def test_kernel_backend_dispatch(monkeypatch):
    calls = []
    module = fake_kernel(calls=calls)
    monkeypatch.setattr(backends, "import_kernel", lambda: (module, ""))
    assert resolve_backend("cpu") == ("kernel", "fake kernel ready")
    value, spatial, start, loc, weights = make_inputs(seed=9)
    leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    out = ms_deform_attn(leaves[0], spatial, start, leaves[1], leaves[2])  # auto -> kernel
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    assert calls == ["forward", "backward"]

    ref_leaves = [t.clone().requires_grad_(True) for t in (value, loc, weights)]
    ref_out = ms_deform_attn(
        ref_leaves[0], spatial, start, ref_leaves[1], ref_leaves[2], backend="reference"
    )
    ref_out.backward(grad_out)
    torch.testing.assert_close(out, ref_out)
    for got, want in zip(leaves, ref_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad)


def test_unknown_backend():
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        ms_deform_attn(*make_inputs(), backend="cuda")


# --------------------------------------------------------------------------- validation


def _broken(name):
    value, spatial, start, loc, weights = make_inputs()
    if name == "value_rank":
        value = value.flatten(2)
    elif name == "loc_last_dim":
        loc = torch.cat([loc, loc[..., :1]], dim=-1)
    elif name == "loc_rank":
        loc = loc[:, :, :, 0]
    elif name == "weights_points":
        weights = weights[..., :1]
    elif name == "batch":
        value = value[:1]
    elif name == "heads":
        weights = weights[:, :, :1]
    elif name == "shapes_dtype":
        spatial = spatial.int()
    elif name == "shapes_columns":
        spatial = torch.cat([spatial, spatial[:, :1]], dim=1)
    elif name == "levels":
        spatial, start = spatial[:2], start[:2]
    elif name == "sum_hw":
        spatial = spatial.clone()
        spatial[0, 0] += 1
    elif name == "start_index":
        start = start + 1
    elif name == "value_dtype":
        value = value.long()
    return value, spatial, start, loc, weights


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("value_rank", "value must be 4-D"),
        ("loc_last_dim", "sampling_locations must be 6-D"),
        ("loc_rank", "sampling_locations must be 6-D"),
        ("weights_points", "attention_weights shape"),
        ("batch", "N differs"),
        ("heads", "M differs"),
        ("shapes_dtype", "spatial_shapes must be int64"),
        ("shapes_columns", "spatial_shapes must be \\(L, 2\\)"),
        ("levels", "number of levels differs"),
        ("sum_hw", "sum of H\\*W"),
        ("start_index", "level_start_index"),
        ("value_dtype", "value must be floating point"),
    ],
)
def test_invalid_inputs_raise_value_error(name, message):
    with pytest.raises(ValueError, match=f"^ms_deform_attn: {message}"):
        ms_deform_attn(*_broken(name), backend="reference")


def test_levels_are_checked_once_per_shapes_tensor(monkeypatch):
    """A model hands one shapes tensor to every layer: its levels are read once (on a GPU each
    read is a device sync), again when the tensor changes in place or another one comes."""
    checked = []
    real = op_module._check_levels
    monkeypatch.setattr(op_module, "_check_levels", lambda *a: (checked.append(1), real(*a)))
    value, spatial, start, loc, weights = make_inputs(seed=6)
    for _ in range(3):
        ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    assert len(checked) == 1
    spatial[0, 0] += 1  # in place: the version changes, the levels no longer add up to S
    with pytest.raises(ValueError, match="sum of H\\*W"):
        ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    spatial[0, 0] -= 1
    ms_deform_attn(value, spatial, start, loc, weights, backend="reference")
    ms_deform_attn(value, spatial.clone(), start, loc, weights, backend="reference")
    ms_deform_attn(value, spatial, start.clone(), loc, weights, backend="reference")
    assert len(checked) == 5


def test_levels_are_checked_under_inference_mode():
    value, spatial, start, loc, weights = make_inputs(seed=6)
    with torch.inference_mode():
        bad = spatial.clone()
        bad[0, 1] += 1
        with pytest.raises(ValueError, match="sum of H\\*W"):
            ms_deform_attn(value, bad, start, loc, weights, backend="reference")
