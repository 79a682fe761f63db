"""The CUDA kernel against the pure-PyTorch reference (needs a GPU; skipped without one)."""

from __future__ import annotations

import pytest
import torch

from ddetr_cli.ops import build, kernel
from ddetr_cli.ops.reference import ms_deform_attn_reference

pytestmark = pytest.mark.gpu

ENCODER_SHAPES = ((10, 13), (5, 7), (3, 4), (2, 2))


@pytest.fixture(scope="module")
def ext():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    return build.load_extension("cuda")


def make_inputs(n=2, lq=20, m=8, d=32, p=4, shapes=ENCODER_SHAPES, seed=0):
    """float64 CUDA inputs; locations spill over the borders to cover outside points."""
    g = torch.Generator().manual_seed(seed)
    s = sum(h * w for h, w in shapes)
    n_levels = len(shapes)
    value = torch.randn(n, s, m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(n, lq, m, n_levels, p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    attn = torch.rand(n, lq, m, n_levels, p, generator=g, dtype=torch.float64) + 1e-5
    attn = attn / attn.sum((-1, -2), keepdim=True)
    spatial = torch.tensor(shapes, dtype=torch.int64)
    areas = spatial[:, 0] * spatial[:, 1]
    start = torch.cat([areas.new_zeros(1), areas.cumsum(0)[:-1]])
    dev = torch.device("cuda")
    return [t.to(dev) for t in (value, spatial, start, loc, attn)] + [list(shapes)]


def reference(value, shapes, loc, attn, grad_out):
    """float64 reference output and gradients, computed on the CPU."""
    leaves = [t.detach().double().cpu().requires_grad_() for t in (value, loc, attn)]
    out = ms_deform_attn_reference(leaves[0], shapes, leaves[1], leaves[2])
    out.backward(grad_out.double().cpu())
    return out.detach(), [t.grad for t in leaves]


def off_outer_edges(loc, shapes):
    """Moves points lying exactly on a level's outer edge (pix == -1 or pix == size) to the centre.
    There the kernel, like the official one, samples nothing, while grid_sample still gives a
    one-sided location gradient; coarse float16/bfloat16 grids hit such points often."""
    size = torch.tensor([[w, h] for h, w in shapes], dtype=torch.float64, device=loc.device)
    pix = loc.double() * size[:, None, :] - 0.5  # (..., L, P, 2)
    edge = ((pix == -1) | (pix == size[:, None, :])).any(-1, keepdim=True)
    return torch.where(edge, torch.full_like(loc, 0.5), loc)


def sampling_dtype(dtype):
    """The kernels take locations and weights in float32 (float64 with a float64 value)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def check(dtype, rtol, atol, **kwargs):
    """value in ``dtype``, locations and weights in float32 (float64): the result and value's
    gradient within (rtol, atol) of float64, the locations' and weights' gradients (float32)
    within float32 accuracy for every value dtype."""
    value, spatial, start, loc, attn, shapes = make_inputs(**kwargs)
    value = value.to(dtype)
    loc, attn = loc.to(sampling_dtype(dtype)), attn.to(sampling_dtype(dtype))
    loc = off_outer_edges(loc, shapes)
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.dtype == dtype and out.is_cuda
    grad_out = torch.randn(out.shape, device=out.device, dtype=torch.float64).to(dtype)
    # The reference sees the same (rounded) inputs, so only the kernel's arithmetic is compared.
    ref_out, ref_grads = reference(value, shapes, loc, attn, grad_out)
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=rtol, atol=atol)
    grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    assert [g.dtype for g in grads] == [dtype, loc.dtype, attn.dtype]
    tolerances = [(rtol, atol)] + [(min(rtol, 1e-4), min(atol, 1e-4))] * 2
    for name, got, want, (rt, at) in zip(("value", "loc", "attn"), grads, ref_grads, tolerances,
                                         strict=True):  # fmt: skip
        torch.testing.assert_close(got.double().cpu(), want, rtol=rt, atol=at, msg=name)


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [
        (torch.float64, 1e-10, 1e-12),
        (torch.float32, 1e-4, 1e-4),
        (torch.float16, 2**-10, 1e-4),
        (torch.bfloat16, 2**-7, 1e-4),
    ],
)
def test_matches_reference(ext, dtype, rtol, atol):
    check(dtype, rtol, atol)


@pytest.mark.parametrize("d", [1, 2, 8, 24, 30, 32, 40, 64, 72, 256])
def test_channel_counts(ext, d):
    """Vector path (D % 8 == 0; groups of D / 8: xor-shuffle or segmented reduction) and the scalar
    path (other D; groups of D)."""
    check(torch.float32, 1e-4, 1e-4, n=1, lq=7, m=2, d=d)
    check(torch.float64, 1e-10, 1e-12, n=1, lq=7, m=2, d=d)


@pytest.mark.parametrize("levels, points", [(1, 4), (4, 4), (3, 2)])
def test_level_point_counts(ext, levels, points):
    shapes = ENCODER_SHAPES[:levels]
    check(torch.float32, 1e-4, 1e-4, n=1, lq=9, p=points, shapes=shapes)


@pytest.mark.parametrize("n", [1, 3, 65, 130])
def test_batch_sizes(ext, n):
    check(torch.float32, 1e-4, 1e-4, n=n, lq=5, m=2, d=32, shapes=((4, 6), (2, 3)))


def test_gradcheck_float64(ext):
    value, spatial, start, loc, attn, _ = make_inputs(n=1, lq=2, m=2, d=8, p=2)
    # Fresh random points inside the maps: clamping put many exactly on pixel centres (0.05 * 10
    # - 0.5 = 0), where sampling has no derivative and the numerical one is the two sides' mean.
    g = torch.Generator(device=loc.device).manual_seed(1)
    loc = 0.05 + 0.9 * torch.rand(loc.shape, generator=g, device=loc.device, dtype=loc.dtype)

    class Op(torch.autograd.Function):
        @staticmethod
        def forward(ctx, v, lo, a):
            ctx.save_for_backward(v, lo, a)
            return kernel.forward(v, spatial, start, lo, a)

        @staticmethod
        def backward(ctx, g):
            v, lo, a = ctx.saved_tensors
            return kernel.backward(v, spatial, start, lo, a, g.contiguous())

    inputs = [t.clone().requires_grad_() for t in (value, loc, attn)]
    # Backward uses atomics: tiny nondeterminism, hence nondet_tol.
    assert torch.autograd.gradcheck(Op.apply, inputs, nondet_tol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_forward_is_deterministic(ext, dtype):
    value, spatial, start, loc, attn, _ = make_inputs(n=2, lq=100)
    value, loc, attn = value.to(dtype), loc.float(), attn.float()
    a = kernel.forward(value, spatial, start, loc, attn)
    b = kernel.forward(value, spatial, start, loc, attn)
    assert torch.equal(a, b)


def test_misaligned_value_takes_the_scalar_path(ext):
    value, spatial, start, loc, attn, shapes = make_inputs(n=1, lq=6, m=2, d=32)
    flat = torch.empty(value.numel() + 1, dtype=value.dtype, device=value.device)
    shifted = flat[1:].view(value.shape)  # contiguous but not 16-byte aligned
    shifted.copy_(value)
    out = kernel.forward(shifted, spatial, start, loc, attn)
    torch.testing.assert_close(out, kernel.forward(value, spatial, start, loc, attn))


def test_empty_and_errors(ext):
    value, spatial, start, loc, attn, _ = make_inputs(n=2, lq=0)
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.shape == (2, 0, value.shape[2] * value.shape[3])
    with pytest.raises(RuntimeError, match="value's device"):
        kernel.forward(value, spatial.cpu(), start, loc, attn)
    with pytest.raises(RuntimeError, match="sampling_locations and attention_weights must be"):
        kernel.forward(value, spatial, start, loc.float(), attn)
    with pytest.raises(RuntimeError, match="must be Float for a BFloat16 value"):
        kernel.forward(value.bfloat16(), spatial, start, loc.bfloat16(), attn.bfloat16())


def test_is_available(ext):
    ok, reason = kernel.is_available(torch.device("cuda"))
    assert ok, reason


def misaligned(t):
    """A contiguous copy of t whose data pointer is not 16-byte aligned (the scalar path)."""
    flat = torch.empty(t.numel() + 1, dtype=t.dtype, device=t.device)
    shifted = flat[1:].view(t.shape)
    shifted.copy_(t)
    assert shifted.data_ptr() % 16 != 0
    return shifted


@pytest.mark.parametrize("d", [32, 256])
@pytest.mark.parametrize("which", ["value", "grad_out"])
def test_backward_on_misaligned_inputs(ext, d, which):
    """Misaligned fp32 D=256 runs groups of 256 threads (segmented reduction over 8 warps)."""
    value, spatial, start, loc, attn, shapes = make_inputs(n=2, lq=9, m=2, d=d)
    value, loc, attn = (t.float() for t in (value, loc, attn))
    grad_out = torch.randn(2, 9, 2 * d, device="cuda")
    if which == "value":
        value = misaligned(value)
    else:
        grad_out = misaligned(grad_out)
    _, ref_grads = reference(value, shapes, loc, attn, grad_out)
    grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads, strict=True):
        torch.testing.assert_close(got.double().cpu(), want, rtol=1e-4, atol=1e-4, msg=name)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("d", [30, 32, 256])
def test_half_precision_channel_counts(ext, dtype, d):
    """bf16/fp16 value with float32 locations: scalar (D = 30), vector (32) and a full-warp group
    (256)."""
    check(dtype, 2**-10 if dtype == torch.float16 else 2**-7, 1e-4, n=1, lq=7, m=2, d=d)


def test_unsampled_points_with_inf_weights_get_zero_gradient(ext):
    """Points outside their level sample nothing: their gradients are 0 even for an inf weight."""
    for d in (32, 30, 72):  # shuffle, scalar segmented, vector segmented
        value, spatial, start, loc, attn, _ = make_inputs(n=1, lq=6, m=2, d=d)
        value, loc, attn = (t.float() for t in (value, loc, attn))
        loc[..., 0, :2, :] = 3.0
        attn[..., 0, :2] = float("inf")
        grad_out = torch.randn(1, 6, 2 * d, device="cuda")
        out = kernel.forward(value, spatial, start, loc, attn)
        grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
        assert torch.isfinite(out).all()
        for name, g in zip(("value", "loc", "attn"), grads, strict=True):
            assert torch.isfinite(g).all(), (d, name)
        assert (grads[1][..., 0, :2, :] == 0).all() and (grads[2][..., 0, :2] == 0).all()


def test_non_default_stream(ext):
    value, spatial, start, loc, attn, shapes = make_inputs(n=2, lq=50)
    value, loc, attn = (t.float() for t in (value, loc, attn))
    grad_out = torch.randn(2, 50, value.shape[2] * value.shape[3], device="cuda")
    want_out = kernel.forward(value, spatial, start, loc, attn)
    want_grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        # A long op first on the side stream: results read too early would be stale.
        torch.cuda._sleep(10_000_000)
        out = kernel.forward(value, spatial, start, loc, attn)
        grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, want_out)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_more_than_2_31_output_elements(ext):
    """64-bit indexing: (N, Lq, M*D) with more than 2^31 elements (about 4 GiB in float16)."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GiB of GPU memory")
    lq, m, d, shapes = (1 << 23) + 3, 8, 32, ((6, 5),)
    assert lq * m * d > 2**31
    g = torch.Generator(device="cuda").manual_seed(0)
    value = torch.randn(1, 30, m, d, device="cuda", generator=g).half()
    loc = torch.rand(1, lq, m, 1, 1, 2, device="cuda", generator=g)
    attn = torch.rand(1, lq, m, 1, 1, device="cuda", generator=g)
    spatial = torch.tensor(shapes, device="cuda")
    start = torch.zeros(1, dtype=torch.long, device="cuda")
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.shape == (1, lq, m * d)
    # Queries are independent: the last ones (past 2^31 elements) against the reference.
    tail = slice(lq - 5, lq)
    want = ms_deform_attn_reference(
        value.double(), list(shapes), loc[:, tail].double(), attn[:, tail].double()
    )
    torch.testing.assert_close(out[:, tail].double(), want, rtol=2e-2, atol=2e-2)
    grad_out = torch.zeros_like(out)
    grad_out[:, tail] = 1
    del out
    grad_value, grad_loc, grad_attn = kernel.backward(value, spatial, start, loc, attn, grad_out)
    leaves = [value.double().requires_grad_(), loc[:, tail].double().requires_grad_()]
    leaves.append(attn[:, tail].double().requires_grad_())
    ms_deform_attn_reference(leaves[0], list(shapes), leaves[1], leaves[2]).sum().backward()
    torch.testing.assert_close(grad_value.double(), leaves[0].grad, rtol=5e-2, atol=5e-2)
    torch.testing.assert_close(grad_attn[:, tail].double(), leaves[2].grad, rtol=2e-2, atol=2e-2)
    assert (grad_attn[:, : lq - 5] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_bit_identical_across_runs(ext, dtype):
    value, spatial, start, loc, attn, _ = make_inputs(n=2, lq=300, d=32)
    value, loc, attn = value.to(dtype), loc.float(), attn.float()
    first = kernel.forward(value, spatial, start, loc, attn)
    for _ in range(5):
        assert torch.equal(kernel.forward(value, spatial, start, loc, attn), first)


def test_deterministic_algorithms_raise_in_backward(ext):
    value, spatial, start, loc, attn, _ = make_inputs(n=1, lq=4)
    grad_out = torch.ones(1, 4, value.shape[2] * value.shape[3], device="cuda", dtype=value.dtype)
    was, warn_only = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    try:
        torch.use_deterministic_algorithms(True)
        kernel.forward(value, spatial, start, loc, attn)  # the forward is deterministic
        with pytest.raises(RuntimeError, match="ms_deform_attn_backward_cuda"):
            kernel.backward(value, spatial, start, loc, attn, grad_out)
        torch.use_deterministic_algorithms(True, warn_only=True)
        with pytest.warns(UserWarning, match="ms_deform_attn_backward_cuda"):
            kernel.backward(value, spatial, start, loc, attn, grad_out)
    finally:
        torch.use_deterministic_algorithms(was, warn_only=warn_only)


def _op_inputs(dtype=torch.float32):
    value, spatial, start, loc, attn, shapes = make_inputs(n=2, lq=30, d=32)
    leaves = [t.to(dtype).requires_grad_() for t in (value, loc, attn)]
    return leaves, spatial, start, shapes


def test_full_op_autograd_matches_reference(ext):
    from ddetr_cli.ops import ms_deform_attn

    (value, loc, attn), spatial, start, _ = _op_inputs()
    outs, grads = {}, {}
    for backend in ("kernel", "reference"):
        leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
        out = ms_deform_attn(leaves[0], spatial, start, leaves[1], leaves[2], backend=backend)
        out.square().sum().backward()
        outs[backend], grads[backend] = out.detach(), [t.grad for t in leaves]
    torch.testing.assert_close(outs["kernel"], outs["reference"], rtol=1e-4, atol=1e-4)
    for got, want in zip(grads["kernel"], grads["reference"], strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)


def test_full_op_under_torch_compile(ext):
    from ddetr_cli.ops import ms_deform_attn

    (value, loc, attn), spatial, start, _ = _op_inputs()

    def f(v, lo, a):
        return ms_deform_attn(v, spatial, start, lo, a, backend="kernel").square().sum()

    compiled = torch.compile(f, fullgraph=True)
    eager_leaves = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
    f(*eager_leaves).backward()
    loss = compiled(value, loc, attn)
    loss.backward()
    torch.testing.assert_close(loss, f(*[t.detach() for t in eager_leaves]), rtol=1e-5, atol=1e-4)
    for got, want in zip((value, loc, attn), eager_leaves, strict=True):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-4)


def test_levels_that_do_not_fit_raise_on_cuda(ext):
    """Shapes on the GPU are checked (once per tensor) like CPU ones: a level that does not fit
    raises instead of being skipped by the kernel."""
    from ddetr_cli.ops import ms_deform_attn

    value, spatial, start, loc, attn, _ = make_inputs(n=1, lq=5)
    assert spatial.is_cuda
    out = ms_deform_attn(value, spatial, start, loc, attn, backend="kernel")
    assert out.shape == (1, 5, value.shape[2] * value.shape[3])
    bad = spatial.clone()
    bad[0, 0] += 1
    with pytest.raises(ValueError, match="sum of H\\*W"):
        ms_deform_attn(value, bad, start, loc, attn, backend="kernel")
    with pytest.raises(ValueError, match="level_start_index"):
        ms_deform_attn(value, spatial, start + 1, loc, attn, backend="kernel")


def test_model_under_autocast_runs_the_bf16_kernel(ext, monkeypatch):
    """Under bf16 autocast every attention layer hands the kernel its bf16 value as it is, with
    float32 locations and weights."""
    from ddetr_cli.model import build_model
    from ddetr_cli.recipe import load_recipe

    seen = []
    real = kernel.forward

    def spy(value, spatial_shapes, level_start_index, loc, attn):
        seen.append((value.dtype, loc.dtype, attn.dtype))
        return real(value, spatial_shapes, level_start_index, loc, attn)

    monkeypatch.setattr(kernel, "forward", spy)
    overrides = ["model.backbone=resnet18", "model.pretrained_backbone=false",
                 "model.enc_layers=2", "model.dec_layers=2",
                 "model.attention_backend=kernel"]  # fmt: skip
    model = build_model(load_recipe(None, overrides)).cuda().eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        model([torch.rand(3, 256, 320, device="cuda")])
    assert seen == [(torch.bfloat16, torch.float32, torch.float32)] * 4
