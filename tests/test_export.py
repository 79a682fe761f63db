"""`ddetr export`: ONNX graphs that match PyTorch at sizes and batches never seen at export."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

import onnx  # noqa: E402

from ddetr_cli.errors import DdetrError  # noqa: E402
from ddetr_cli.export.check import check_onnx, match_detections  # noqa: E402
from ddetr_cli.export.runtime import ort_session, read_metadata, require_export_extra  # noqa: E402
from ddetr_cli.export.writer import export_onnx  # noqa: E402
from ddetr_cli.model import build_model  # noqa: E402
from ddetr_cli.model.postprocess import batched_detections  # noqa: E402
from ddetr_cli.model.protocol import Detector  # noqa: E402
from ddetr_cli.ops import ms_deform_attn  # noqa: E402
from ddetr_cli.ops.onnx import translation_table  # noqa: E402
from ddetr_cli.recipe import load_recipe  # noqa: E402

# Small enough to export in seconds; 3 levels, 8 heads, like the shapes demo.
TINY = [
    "model.hidden_dim=32",
    "model.dim_feedforward=32",
    "model.num_queries=12",
    "model.enc_layers=1",
    "model.dec_layers=2",
]
STANDARD_DOMAINS = {"", "ai.onnx"}


def _model(**flags: bool):
    overrides = [*TINY, *(f"model.{k}={str(v).lower()}" for k, v in flags.items())]
    recipe = load_recipe("shapes", overrides)  # the packaged recipe
    torch.manual_seed(0)
    model = build_model(recipe).eval()
    # Sharper, query-dependent attention than the initialisation's uniform weights.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "attention_weights" in name or "sampling_offsets.weight" in name:
                p.normal_(0, 0.2)
    return model, recipe


def _ops(model: onnx.ModelProto) -> set[tuple[str, str]]:
    found = set()
    graphs = [model.graph, *(f for f in model.functions)]
    for graph in graphs:
        for node in graph.node:
            found.add((node.domain, node.op_type))
    return found


@pytest.fixture(scope="module")
def two_stage_export(tmp_path_factory):
    model, recipe = _model(with_box_refine=True, two_stage=True)
    path = tmp_path_factory.mktemp("onnx") / "two_stage.onnx"
    report = export_onnx(model, recipe, path, image_size=(96, 128), batch_size=1)
    return model, recipe, path, report


def test_two_stage_matches_pytorch_at_unseen_sizes(two_stage_export):
    model, _, path, report = two_stage_export
    assert report.check is not None and report.check.ok, report.check.line()
    assert report.check.batch_size != 1 and report.check.image_size != (96, 128)
    for size, batch in (((64, 200), 1), ((161, 77), 4)):
        result = check_onnx(path, model, size, batch)
        assert result.ok, result.line()  # logits, boxes and the top-k detections


def test_graph_is_standard_onnx_with_metadata(two_stage_export):
    _, recipe, path, report = two_stage_export
    proto = onnx.load(str(path))
    assert {domain for domain, _ in _ops(proto)} <= STANDARD_DOMAINS
    ops = {op for _, op in _ops(proto)}
    assert "GridSample" in ops  # the default sampler
    assert [i.name for i in proto.graph.input] == ["images"]
    assert [o.name for o in proto.graph.output] == ["pred_logits", "pred_boxes"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param != "" for d in dims] == [True, False, True, True]
    meta = read_metadata(path)
    assert json.loads(meta["class_names"]) == ["circle", "rectangle", "triangle"]
    assert json.loads(meta["recipe"]) == json.loads(json.dumps(recipe))
    assert meta["static"] == "false" and report.outputs == ["pred_logits", "pred_boxes"]


def test_onnx_model_runs_like_pytorch(two_stage_export):
    from ddetr_cli.weights import load_model

    model, recipe, path, _ = two_stage_export
    onnx_model, onnx_recipe = load_model(path, overrides=["data.eval_min_size=96"])
    assert onnx_recipe["model"] == recipe["model"] and onnx_recipe["data"]["eval_min_size"] == 96
    assert onnx_model.eval().to("cpu").optimize_for_inference() is onnx_model
    assert isinstance(onnx_model, Detector) and isinstance(model, Detector)
    assert onnx_model.fixed_runtime() == (
        "onnxruntime",
        "the exported graph (CPUExecutionProvider)",
    )
    assert model.fixed_runtime() is None
    g = torch.Generator().manual_seed(3)
    pictures = [torch.randn(3, *s, generator=g) for s in ((96, 128), (80, 112), (96, 128))]
    out = onnx_model(pictures)
    assert out["pred_logits"].shape == (3, 12, 3)
    with torch.no_grad():
        for i, picture in enumerate(pictures):
            ref = model([picture])  # alone: no padding
            torch.testing.assert_close(
                out["pred_logits"][i], ref["pred_logits"][0], atol=1e-4, rtol=0
            )
            torch.testing.assert_close(
                out["pred_boxes"][i], ref["pred_boxes"][0], atol=1e-5, rtol=0
            )


def test_bench_times_an_onnx_file_in_onnxruntime(two_stage_export):
    """bench -w model.onnx: one onnxruntime row, no FLOPs or parameters (they belong to the
    source weights), and only what the file can do (fp32, no torch.compile)."""
    from ddetr_cli.bench.model import BenchOptions, run_bench
    from ddetr_cli.errors import UsageError
    from ddetr_cli.weights import load_model

    _, _, path, _ = two_stage_export
    onnx_model, recipe = load_model(path)
    options = BenchOptions(flops=True, fps=False, image_size=(96, 128), warmup=0, iters=1)
    report = run_bench(onnx_model, recipe, str(path), options)
    assert report["params"] is None and report["flops"] is None
    assert [r["backend"] for r in report["speed"]["results"]] == ["onnxruntime"]
    assert report["speed"]["results"][0]["fps"] > 0
    with pytest.raises(UsageError, match="fp32 and no --compile"):
        run_bench(onnx_model, recipe, str(path), BenchOptions(dtypes=["bf16"], iters=1))


def test_plain_model_exports(tmp_path):
    model, recipe = _model(with_box_refine=False, two_stage=False)
    path = tmp_path / "plain.onnx"
    report = export_onnx(model, recipe, path, image_size=(64, 96), batch_size=2, sampler="gather")
    assert report.check is not None and report.check.ok, report.check.line()
    ops = {op for _, op in _ops(onnx.load(str(path)))}
    assert "Gather" in ops and "GridSample" not in ops
    assert report.check.batch_size == 3


@pytest.fixture(scope="module")
def postprocess_export(tmp_path_factory):
    model, recipe = _model(with_box_refine=True, two_stage=False)
    path = tmp_path_factory.mktemp("onnx") / "static.onnx"
    report = export_onnx(
        model, recipe, path, image_size=(64, 80), batch_size=2, static=True, postprocess=True
    )
    return model, path, report


def test_static_refine_with_postprocess(postprocess_export):
    model, path, report = postprocess_export
    assert report.check is not None and report.check.ok, report.check.line()
    proto = onnx.load(str(path))
    assert [o.name for o in proto.graph.output] == ["scores", "labels", "boxes"]
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3, 64, 80]
    images = torch.randn(2, 3, 64, 80, generator=torch.Generator().manual_seed(5))
    scores, labels, boxes = ort_session(path).run(None, {"images": images.numpy()})
    with torch.no_grad():
        ref = model(images)
    from ddetr_cli.model import post_process

    official = post_process(ref, torch.tensor([[64, 80], [64, 80]]), num_detections=100)
    ref_scores, ref_labels, ref_boxes = batched_detections(
        ref["pred_logits"], ref["pred_boxes"], 64, 80
    )
    for b in range(2):
        torch.testing.assert_close(ref_boxes[b], official[b]["boxes"], atol=1e-4, rtol=0)
        assert torch.equal(ref_labels[b], official[b]["labels"])
    torch.testing.assert_close(torch.from_numpy(scores), ref_scores, atol=1e-5, rtol=0)
    assert torch.equal(torch.from_numpy(labels), ref_labels)
    torch.testing.assert_close(torch.from_numpy(boxes), ref_boxes, atol=1e-3, rtol=0)
    assert read_metadata(path)["postprocess"] == "true"


class _AttentionOnly(torch.nn.Module):
    def forward(self, value, shapes_source, locations, weights):
        levels = [(s.shape[-2], s.shape[-1]) for s in shapes_source]
        spatial = torch.as_tensor(levels, dtype=torch.long)
        start = torch.cat((spatial.new_zeros(1), spatial.prod(1).cumsum(0)[:-1]))
        return ms_deform_attn(value, spatial, start, locations, weights, backend="reference")


@pytest.mark.parametrize("sampler", ["gather", "gridsample"])
def test_translation_matches_reference_sampling(tmp_path, sampler):
    """Both translations against the reference, locations reaching outside the map (zero
    padding), static shapes (the op alone)."""
    g = torch.Generator().manual_seed(0)
    n, lq, m, d, p = 2, 7, 2, 4, 3
    shapes = [(5, 6), (3, 4)]
    s = sum(h * w for h, w in shapes)
    value = torch.randn(n, s, m, d, generator=g)
    locations = torch.rand(n, lq, m, len(shapes), p, 2, generator=g) * 1.4 - 0.2
    weights = torch.rand(n, lq, m, len(shapes), p, generator=g)
    sources = [torch.zeros(1, h, w) for h, w in shapes]
    module = _AttentionOnly().eval()
    program = torch.onnx.export(
        module,
        (value, sources, locations, weights),
        dynamo=True,
        custom_translation_table=translation_table(sampler),
        opset_version=18,
    )
    path = tmp_path / f"{sampler}.onnx"
    program.save(str(path))
    proto = onnx.load(str(path))
    assert {domain for domain, _ in _ops(proto)} <= STANDARD_DOMAINS
    assert ("GridSample" in {op for _, op in _ops(proto)}) == (sampler == "gridsample")
    session = ort_session(path)
    feeds = dict(
        zip(
            [i.name for i in session.get_inputs()],
            [value.numpy(), *[t.numpy() for t in sources], locations.numpy(), weights.numpy()],
            strict=True,
        )
    )
    (out,) = session.run(None, feeds)
    ref = module(value, sources, locations, weights)
    torch.testing.assert_close(torch.from_numpy(out), ref, atol=1e-5, rtol=0)


def test_missing_extra_is_one_line(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails as if not installed
    with pytest.raises(DdetrError) as info:
        require_export_extra()
    message = str(info.value)
    assert "\n" not in message
    assert "onnxruntime" in message and "ddetr-cli[export]" in message


class _Tampered:
    """An onnxruntime session whose outputs ``change`` edits in place: a wrong export."""

    def __init__(self, session, change):
        self.session, self.change = session, change

    def run(self, names, feeds):
        outputs = [o.copy() for o in self.session.run(names, feeds)]
        self.change(outputs)
        return outputs


def _tamper(monkeypatch, change):
    import ddetr_cli.export.check as check

    real = check.ort_session
    monkeypatch.setattr(check, "ort_session", lambda path: _Tampered(real(path), change))


def test_the_check_fails_on_a_wrong_box(two_stage_export, monkeypatch):
    model, _, path, _ = two_stage_export

    def shift(outputs):
        outputs[1][0, 3, 2] += 0.01  # one box's width, by 1% of the picture

    _tamper(monkeypatch, shift)
    result = check_onnx(path, model)
    assert result.max_logits_diff <= 1e-4 and result.same_topk  # the rest is right
    assert result.max_boxes_diff == pytest.approx(0.01, abs=1e-4)
    assert not result.ok and result.line().startswith("check FAILED")


@pytest.mark.parametrize("wrong", ["box", "label"])
def test_the_postprocessed_check_fails_on_a_wrong_box_or_label(
    postprocess_export, monkeypatch, wrong
):
    model, path, _ = postprocess_export

    def spoil(outputs):
        scores, labels, boxes = outputs
        if wrong == "box":
            boxes[1, 0, 3] += 4.0  # the best detection's bottom edge, 4 of 80 pixels lower
        else:
            labels[1, 0] = (labels[1, 0] + 1) % 3  # the best detection, another class

    _tamper(monkeypatch, spoil)
    result = check_onnx(path, model)
    assert result.max_logits_diff <= 1e-4  # the scores agree
    if wrong == "box":
        assert result.max_boxes_diff == pytest.approx(4.0 / 80, abs=1e-4) and result.same_topk
    else:
        assert result.topk_mismatches == 1 and not result.same_topk
    assert not result.ok


def test_near_equal_scores_may_swap_places_but_not_labels():
    """Two (query, class) pairs with the same score: the export may list them in either order.
    A label or box that belongs to no pair of that score is a mismatch."""
    logits = torch.tensor([[[0.0, 2.0], [2.0, -1.0], [-3.0, -3.0]]])  # queries x classes
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.6, 0.6, 0.2, 0.2], [0.5, 0.5, 0.5, 0.5]]])
    scores, labels, xyxy = batched_detections(logits, boxes, 100, 100, 3)
    swapped = (scores, labels[:, [1, 0, 2]], xyxy[:, [1, 0, 2]])
    assert match_detections(swapped, logits, boxes, (100, 100)) == (0.0, 0)
    assert labels.tolist() == [[1, 0, 0]] and scores[0, 0] == scores[0, 1]
    relabelled = (scores, torch.tensor([[1, 0, 1]]), xyxy)  # no class-1 pair scores 0.5
    assert match_detections(relabelled, logits, boxes, (100, 100)) == (0.0, 1)
    # Class 0 does have a pair of the first detection's score, but its box is elsewhere.
    relabelled = (scores, torch.tensor([[0, 0, 0]]), xyxy)
    assert match_detections(relabelled, logits, boxes, (100, 100))[0] == pytest.approx(0.45)
    moved = xyxy.clone()
    moved[0, 2] += 3.0  # the third detection, 3 pixels off
    assert match_detections((scores, labels, moved), logits, boxes, (100, 100)) == (
        pytest.approx(0.03),
        0,
    )
