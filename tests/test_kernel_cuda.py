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


def check(dtype, rtol, atol, **kwargs):
    value, spatial, start, loc, attn, shapes = make_inputs(**kwargs)
    value, loc, attn = (t.to(dtype) for t in (value, loc, attn))
    loc = off_outer_edges(loc, shapes)
    out = kernel.forward(value, spatial, start, loc, attn)
    assert out.dtype == dtype and out.is_cuda
    grad_out = torch.randn(out.shape, device=out.device, dtype=torch.float64).to(dtype)
    # The reference sees the same (rounded) inputs, so only the kernel's arithmetic is compared.
    ref_out, ref_grads = reference(value, shapes, loc, attn, grad_out)
    torch.testing.assert_close(out.double().cpu(), ref_out, rtol=rtol, atol=atol)
    grads = kernel.backward(value, spatial, start, loc, attn, grad_out)
    for name, got, want in zip(("value", "loc", "attn"), grads, ref_grads, strict=True):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.double().cpu(), want, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize(
    "dtype, rtol, atol",
    [
        (torch.float64, 1e-10, 1e-12),
        (torch.float32, 1e-4, 1e-4),
        (torch.float16, 2e-2, 2e-2),
        (torch.bfloat16, 5e-2, 5e-2),
    ],
)
def test_matches_reference(ext, dtype, rtol, atol):
    check(dtype, rtol, atol)


@pytest.mark.parametrize("d", [1, 2, 8, 30, 32, 64, 72, 256])
def test_channel_counts(ext, d):
    """Vector path (D % 8 == 0, shuffle or atomic reduction) and the scalar path (other D)."""
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
    loc = loc.clamp(0.05, 0.95)  # away from cell borders, where sampling is not differentiable

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
    value, loc, attn = (t.to(dtype) for t in (value, loc, attn))
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
    with pytest.raises(RuntimeError, match="share a dtype"):
        kernel.forward(value, spatial, start, loc.float(), attn)


def test_is_available(ext):
    ok, reason = kernel.is_available(torch.device("cuda"))
    assert ok, reason
