"""Cheaper training steps (#23) that compute what they computed: no copies in the FFN's backward,
augmentation seeds without torch.manual_seed, the decoder layers matched in one go, the fused
AdamW, the padded softmax; and the step and data times every run reports."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from tiny import TINY_MODEL

from ddetr_cli.data.dataset import sample_seed
from ddetr_cli.data.shapes_dataset import ShapesDataset
from ddetr_cli.model import build_model
from ddetr_cli.model.attention import _sampling_locations, _softmax
from ddetr_cli.model.transformer import DecoderLayer, EncoderLayer
from ddetr_cli.recipe import load_recipe
from ddetr_cli.train.engine import train
from ddetr_cli.train.optim import build_optimizer, param_groups
from ddetr_cli.train.timing import PartTimer, StepClock, step_times_line

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    *TINY_MODEL, "data.shapes.train_images=6", "data.shapes.val_images=2", "train.batch_size=2",
    "train.epochs=2", "train.log_every=1", "model.attention_backend=reference",
]  # fmt: skip


def _recipe(*extra: str) -> dict:
    return load_recipe(ROOT / "recipes" / "shapes.yaml", [*TINY, *extra])


def _node_names(tensor: torch.Tensor) -> set[str]:
    seen, stack, names = set(), [tensor.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        stack += [child for child, _ in node.next_functions]
    return names


def test_the_ffn_backward_copies_nothing():
    """An in-place ReLU on Linear's output (a view) makes autograd copy the hidden tensor
    (CopySlices); without gradients it stays in place."""
    g = torch.Generator().manual_seed(0)
    shapes, starts = torch.tensor([[3, 3]]), torch.tensor([0])
    src = torch.randn(2, 9, 32, generator=g, requires_grad=True)
    mask = torch.zeros(2, 9, dtype=torch.bool)
    encoder = EncoderLayer(32, 64, 0.0, 1, 4, 2)
    out = encoder(
        src, torch.zeros_like(src), torch.rand(2, 9, 1, 2, generator=g), shapes, starts, mask
    )
    decoder = DecoderLayer(32, 64, 0.0, 1, 4, 2)
    tgt = torch.randn(2, 5, 32, generator=g, requires_grad=True)
    dec = decoder(
        tgt, torch.zeros_like(tgt), torch.rand(2, 5, 1, 2, generator=g), src, shapes, starts, mask
    )
    assert "ReluBackward0" in _node_names(out) and "CopySlices" not in _node_names(out)
    assert "ReluBackward0" in _node_names(dec) and "CopySlices" not in _node_names(dec)
    with torch.no_grad():
        again = encoder(
            src, torch.zeros_like(src), torch.rand(2, 9, 1, 2, generator=g), shapes, starts, mask
        )
    assert again.grad_fn is None


def test_augmentation_seeds_are_those_of_torch_manual_seed(monkeypatch):
    """The CPU generator is seeded as torch.manual_seed seeds it (the same random crops and
    sizes), without torch.manual_seed's lazy seeding of every GPU kind."""
    from ddetr_cli.data.transforms import finish, wrap

    dataset = ShapesDataset(split_seed=0, count=4, train=True, augment="paper")
    expected = []
    for index in range(4):
        image, boxes, labels = dataset.load(index)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed(dataset.seed, 3, index))
            expected.append(finish(*dataset.transform(*wrap(image, boxes)), labels))
    monkeypatch.setattr(torch, "manual_seed", lambda seed: pytest.fail("torch.manual_seed"))
    sizes = set()
    for index, (pixels, target) in enumerate(expected):
        got, got_target = dataset[(3, index)]
        assert torch.equal(got, pixels) and torch.equal(got_target["boxes"], target["boxes"])
        sizes.add(tuple(got.shape))
    assert len(sizes) > 1  # the random sizes were drawn


def test_a_shapes_picture_is_made_once_and_handed_out_as_a_copy(monkeypatch):
    from ddetr_cli.data import shapes, shapes_dataset

    made = []
    make = shapes.make_picture
    monkeypatch.setattr(shapes, "make_picture", lambda *a: made.append(a) or make(*a))
    shapes_dataset._picture.cache_clear()
    dataset = ShapesDataset(split_seed=5, count=3, train=True)
    first = dataset.load(2)
    first[0].zero_()  # whatever a caller does to its copy
    second = dataset.load(2)
    assert made == [(5, 2, "shapes3")]
    picture = make(5, 2, "shapes3")
    assert torch.equal(second[0], torch.from_numpy(picture.image).permute(2, 0, 1))
    assert torch.equal(second[1], torch.from_numpy(picture.boxes))
    assert second[0].data_ptr() != first[0].data_ptr()


def test_matching_levels_in_one_go_gives_each_images_own_assignment():
    from scipy.optimize import linear_sum_assignment

    from ddetr_cli.train.matcher import HungarianMatcher

    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher()
    levels = [
        (torch.randn(3, 7, 4, generator=g), torch.rand(3, 7, 4, generator=g) * 0.5 + 0.2)
        for _ in range(4)
    ]
    targets = [
        {
            "labels": torch.randint(0, 4, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.2,
        }
        for n in (3, 0, 5)
    ]
    matches = matcher.match_levels(levels, targets)
    assert len(matches) == 4 and all(len(level) == 3 for level in matches)
    for (logits, boxes), level in zip(levels, matches, strict=True):
        for i, (target, (rows, cols)) in enumerate(zip(targets, level, strict=True)):
            cost = matcher.cost_matrix(logits[i], boxes[i], target["labels"], target["boxes"])
            want_rows, want_cols = linear_sum_assignment(cost.numpy())
            assert rows.tolist() == want_rows.tolist() and cols.tolist() == want_cols.tolist()
            assert rows.dtype == cols.dtype == torch.int64
    assert [len(r) for r, _ in matches[0]] == [3, 0, 5]


def test_adamw_is_fused_and_makes_the_for_loop_update():
    recipe = _recipe()
    torch.manual_seed(0)
    model = build_model(recipe)
    twin = build_model(recipe)
    twin.load_state_dict(model.state_dict())
    fused = build_optimizer(model, recipe["train"])
    assert all(group["fused"] for group in fused.param_groups)
    cfg = recipe["train"]
    loop = torch.optim.AdamW(
        param_groups(twin, cfg), lr=cfg["lr"], weight_decay=cfg["weight_decay"], foreach=False
    )
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        for a, b in zip(model.parameters(), twin.parameters(), strict=True):
            a.grad = torch.randn(a.shape, generator=g)
            b.grad = a.grad.clone()
        fused.step()
        loop.step()
    moved = 0
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        # Within a few float32 roundings of each other: the same update.
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)
        moved += int(not torch.equal(a, b))
    assert moved < len(list(model.parameters()))


@pytest.mark.parametrize("width", [1, 4, 8, 12, 15])
def test_the_padded_softmax_is_the_softmax(width):
    g = torch.Generator().manual_seed(width)
    logits = (torch.randn(3, 11, 8, width, generator=g) * 4).requires_grad_()
    grad = torch.randn(3, 11, 8, width, generator=g)
    ours, plain = _softmax(logits), F.softmax(logits, -1)
    assert torch.allclose(ours, plain, rtol=0, atol=4e-7)
    assert torch.allclose(ours.sum(-1), torch.ones(3, 11, 8), atol=1e-6)
    (ours_grad,) = torch.autograd.grad(ours, logits, grad)
    (plain_grad,) = torch.autograd.grad(plain, logits, grad)
    assert torch.allclose(ours_grad, plain_grad, rtol=0, atol=2e-6)
    assert "ConstantPadNdBackward0" in _node_names(ours)


def test_the_softmax_is_torchs_own_where_nothing_is_gained():
    g = torch.Generator().manual_seed(0)
    for logits in (
        torch.randn(2, 5, 8, 16, generator=g),
        torch.randn(2, 5, 8, 12, generator=g, dtype=torch.float64),
    ):
        assert torch.equal(_softmax(logits), F.softmax(logits, -1))


def _locations_as_written(ref: torch.Tensor, offsets: torch.Tensor, shapes: torch.Tensor):
    ref = ref[:, :, None, :, None, :]
    if ref.shape[-1] == 2:
        normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1)
        return ref + offsets / normalizer[None, None, None, :, None, :]
    return ref[..., :2] + offsets / offsets.shape[4] * ref[..., 2:] * 0.5


@pytest.mark.parametrize("coords", [2, 4])
@pytest.mark.parametrize("ref_grad", [False, True])
def test_sampling_locations_are_those_of_the_formula_bit_for_bit(coords, ref_grad):
    g = torch.Generator().manual_seed(coords)
    shapes = torch.tensor([[16, 12], [8, 6], [4, 3]])
    ref = torch.rand(2, 21, 3, coords, generator=g).requires_grad_(ref_grad)
    offsets = (torch.randn(2, 21, 8, 3, 4, 2, generator=g) * 3).requires_grad_()
    grad = torch.randn(2, 21, 8, 3, 4, 2, generator=g)
    ours, written = (
        _sampling_locations(ref, offsets, shapes),
        _locations_as_written(ref, offsets, shapes),
    )
    assert torch.equal(ours, written)
    inputs = (offsets, ref) if ref_grad else (offsets,)
    expected = torch.autograd.grad(written, inputs, grad)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), expected, strict=True):
        assert torch.equal(a, b)


def test_no_padding_no_masking_the_same_outputs():
    """Same-size pictures on a CPU: the attention gets no padding mask (nothing to zero), and
    the model's outputs and gradients are those it gives with the all-False mask."""
    from ddetr_cli.model import transformer

    recipe = _recipe()
    torch.manual_seed(0)
    model = build_model(recipe).train()
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(1))
    assert transformer._padding_or_none(torch.zeros(2, 7, dtype=torch.bool)) is None
    padded = torch.zeros(2, 7, dtype=torch.bool)
    padded[1, 6] = True
    assert transformer._padding_or_none(padded) is padded

    def run():
        model.zero_grad()
        out = model(images)
        (out["pred_logits"].sum() + out["pred_boxes"].sum()).backward()
        return [out["pred_logits"], out["pred_boxes"], *(p.grad for p in model.parameters())]

    ours = run()
    original = transformer._padding_or_none
    transformer._padding_or_none = lambda mask: mask
    try:
        masked = run()
    finally:
        transformer._padding_or_none = original
    assert sum(a is not None for a in ours) > 100
    assert all(a is b is None or torch.equal(a, b) for a, b in zip(ours, masked, strict=True))


def _outputs_and_grads(model, images) -> list:
    model.zero_grad()
    out = model(images)
    (
        out["pred_logits"].sum() + out["pred_boxes"].sum() + out["enc_outputs"]["pred_boxes"].sum()
    ).backward()
    return [out["pred_logits"], out["pred_boxes"], *(p.grad for p in model.parameters())]


def test_unpadded_batches_keep_what_the_sizes_decide_and_compute_the_same(monkeypatch):
    """Same-size pictures on a CPU: position encodings, reference points and two-stage
    proposals are computed once per size and kept; outputs and gradients are those the model
    gives when it computes them at every call, to the bit."""
    from ddetr_cli.model import unpadded

    torch.manual_seed(0)
    model = build_model(_recipe("model.two_stage=true", "model.with_box_refine=true")).train()
    gen = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 80, generator=gen)
    # Another batch of the same size, another size: each its own.
    others = [torch.randn(3, 3, 64, 80, generator=gen), torch.randn(1, 3, 48, 64, generator=gen)]
    unpadded.forget()
    first = _outputs_and_grads(model, images)
    kept = dict(unpadded._kept)
    assert [key[0] for key in kept] == ["position", "geometry"]
    second = _outputs_and_grads(model, images)
    assert all(a is b for a, b in zip(kept.values(), unpadded._kept.values(), strict=True))
    from_kept = [first, second, *(_outputs_and_grads(model, x) for x in others)]
    assert len(unpadded._kept) == 6
    monkeypatch.setattr(unpadded, "remembered", lambda key, compute: compute())
    computed = [_outputs_and_grads(model, x) for x in (images, images, *others)]
    assert sum(a is not None for a in first) > 100
    for ours, theirs in zip(from_kept, computed, strict=True):
        assert all(a is b is None or torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))


def test_padded_batches_and_inference_mode_are_not_served_what_was_kept():
    from ddetr_cli.model import unpadded

    torch.manual_seed(0)
    model = build_model(_recipe("model.two_stage=true", "model.with_box_refine=true")).eval()
    unpadded.forget()
    with torch.no_grad():
        model([torch.randn(3, 64, 80), torch.randn(3, 48, 80)])  # padded: nothing kept
    assert not unpadded._kept
    with torch.inference_mode():
        model(torch.randn(1, 3, 64, 80))
    # Tensors made under inference_mode cannot be saved for a backward pass: a training step
    # of the same size computes its own.
    model.train()
    _outputs_and_grads(model, torch.randn(1, 3, 64, 80))
    assert sorted(key[-1] for key in unpadded._kept) == [False, False, True, True]


def test_only_the_last_sizes_are_kept():
    from ddetr_cli.model import unpadded

    unpadded.forget()
    for i in range(unpadded.KEPT_ENTRIES + 3):
        assert unpadded.remembered(("size", i), lambda i=i: i) == i
    assert len(unpadded._kept) == unpadded.KEPT_ENTRIES
    assert ("size", 0, False) not in unpadded._kept
    calls = []
    unpadded.remembered(("size", 10), lambda: calls.append(1))
    assert not calls  # still kept: not computed again


def test_the_optimiser_step_skips_non_finite_gradients_and_says_the_norm():
    import math

    from ddetr_cli.train.engine import _optimizer_step
    from ddetr_cli.train.state import TrainState

    recipe = _recipe()
    model = build_model(recipe)
    state = TrainState.create(model, recipe["train"], torch.device("cpu"))
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    norm = _optimizer_step(state, recipe["train"])
    assert isinstance(norm, float) and math.isnan(norm)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    count = sum(p.numel() for p in model.parameters())
    assert _optimizer_step(state, recipe["train"]) == pytest.approx(math.sqrt(count), rel=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_the_progress_bar_redraws_twice_a_second():
    from rich.console import Console

    from ddetr_cli.train.report import _progress_bar

    assert _progress_bar(Console()).live.refresh_per_second == 2


def test_part_timer_adds_up_a_part_entered_twice_and_takes_medians():
    timer = PartTimer()
    for seconds in (0.1, 0.3, 0.2):
        with timer("matcher"):
            pass
        timer.add("data", seconds)
        timer.add("data", seconds)
        timer.next_step()
    assert [round(step["data"], 6) for step in timer.steps] == [0.2, 0.6, 0.4]
    medians = timer.median_ms(skip=1)
    assert medians["data"] == pytest.approx(500.0)
    assert set(medians) == {"matcher", "data"}


def test_step_clock_medians_leave_out_the_warm_up():
    clock = StepClock(warmup=2)
    clock.start_epoch()
    assert clock.epoch_medians() == {}
    for data, step in ((9.0, 9.0), (9.0, 9.0), (0.1, 1.0), (0.3, 3.0), (0.2, 2.0)):
        clock.add(data, step)
    first = clock.epoch_medians()
    assert first == {"train_s_per_step": 2.0, "data_s_per_step": 0.2}
    clock.start_epoch()
    clock.add(0.5, 5.0)
    assert clock.epoch_medians() == {"train_s_per_step": 5.0, "data_s_per_step": 0.5}
    assert clock.run_medians() == {"train_s_per_step": 2.5, "data_s_per_step": 0.25}
    short = StepClock(warmup=5)
    short.start_epoch()
    short.add(0.5, 4.0)
    assert short.epoch_medians() == {"train_s_per_step": 4.0, "data_s_per_step": 0.5}
    line = step_times_line({"train_s_per_step": 0.09, "data_s_per_step": 0.01})
    assert line.startswith("0.090 training + 0.010 waiting for data (10% of the time")


def test_every_epoch_says_its_step_and_data_time(tmp_path):
    result = train(_recipe(f"train.output_dir={tmp_path / 'run'}"), progress=False)
    lines = [
        json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    epochs = [line for line in lines if line["type"] == "epoch"]
    assert len(epochs) == 2
    for record in epochs:
        assert 0 < record["train_s_per_step"] < 60 and 0 <= record["data_s_per_step"] < 60
    assert set(result.step_times) == {"train_s_per_step", "data_s_per_step"}
    assert 0 < result.step_times["train_s_per_step"] < 60


def _random_xyxy(count: int, g: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
    from torchvision.ops import box_convert

    cxcywh = torch.rand(count, 4, generator=g, dtype=dtype) * 0.5 + 0.1
    return box_convert(cxcywh, "cxcywh", "xyxy")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_giou_costs_and_losses_are_torchvisions_bit_for_bit(dtype):
    from torchvision.ops import generalized_box_iou

    from ddetr_cli.train.giou import broadcast_giou

    g = torch.Generator().manual_seed(0)
    for rows, cols in ((300, 22), (7, 1), (0, 3), (4, 0)):
        a, b = _random_xyxy(rows, g, dtype), _random_xyxy(cols, g, dtype)
        assert torch.equal(broadcast_giou(a[:, None], b[None]), generalized_box_iou(a, b))
    a, b = _random_xyxy(50, g, dtype), _random_xyxy(50, g, dtype)
    assert torch.equal(broadcast_giou(a, b), torch.diag(generalized_box_iou(a, b)))


def test_the_decoder_layers_losses_stacked_are_each_layers_alone():
    """The criterion computes every decoder layer's losses on the layers stacked; each equals
    the losses of that layer given alone (matched alone), and the gradients flow to each."""
    from ddetr_cli.train.criterion import build_criterion

    recipe = load_recipe(None, ["model.num_classes=3", "model.dec_layers=3"])
    criterion = build_criterion(recipe)
    g = torch.Generator().manual_seed(0)

    def level() -> dict[str, torch.Tensor]:
        logits = torch.randn(3, 7, 3, generator=g, dtype=torch.float64).requires_grad_()
        boxes = (torch.rand(3, 7, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2).requires_grad_()
        return {"pred_logits": logits, "pred_boxes": boxes}

    layers = [level() for _ in range(3)]
    targets = [
        {
            "labels": torch.randint(0, 3, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g, dtype=torch.float64) * 0.5 + 0.2,
        }
        for n in (2, 0, 4)
    ]
    losses = criterion({**layers[-1], "aux_outputs": layers[:-1]}, targets, num_boxes=6.0)
    criterion.total(losses).backward()
    for suffix, layer in zip(("_0", "_1", ""), layers, strict=True):
        alone = criterion({k: v.detach() for k, v in layer.items()}, targets, num_boxes=6.0)
        for name in ("loss_ce", "loss_bbox", "loss_giou", "cardinality_error"):
            torch.testing.assert_close(losses[name + suffix], alone[name], rtol=1e-12, atol=0)
        assert all(layer[key].grad.abs().sum() > 0 for key in ("pred_logits", "pred_boxes"))
    assert "class_error" in losses and "class_error_0" not in losses


def test_training_runs_the_convolutions_channels_last_and_keeps_the_weights_as_they_were():
    """train.channels_last (the default) feeds NHWC pictures to the CNN: the same outputs and
    gradients to float rounding, and the weights, their gradients and so the checkpoints keep
    torch's usual layout."""
    from ddetr_cli.data import build_datasets, collate
    from ddetr_cli.runtime import Dist
    from ddetr_cli.train.parts import build_run_parts

    recipe = _recipe()
    assert recipe["train"]["channels_last"] is True
    model = build_run_parts(recipe, Dist(device=torch.device("cpu"))).model
    assert model.channels_last is True
    images, _ = collate([build_datasets(recipe).train[i] for i in range(2)])
    results = []
    for channels_last in (False, True):
        model.channels_last = channels_last
        model.zero_grad(set_to_none=True)
        out = model(images)
        (out["pred_logits"].sigmoid().sum() + out["pred_boxes"].sum()).backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((out["pred_logits"].detach(), grads))
    (logits, grads), (cl_logits, cl_grads) = results
    torch.testing.assert_close(cl_logits, logits, rtol=1e-4, atol=1e-5)
    for cl_grad, grad in zip(cl_grads, grads, strict=True):
        torch.testing.assert_close(cl_grad, grad, rtol=1e-3, atol=1e-4)
        assert cl_grad.is_contiguous()
    assert all(p.is_contiguous() for p in model.parameters())
