"""`ddetr bench op`: the attention op alone, each backend side by side, against the memory floor."""

from __future__ import annotations

import json

import torch
from typer.testing import CliRunner

from ddetr_cli.bench.op import floor_bytes, make_inputs, op_errors
from ddetr_cli.cli import app


def test_floor_counts_each_input_and_output_once():
    inputs = make_inputs("decoder", 2, torch.float32, torch.device("cpu"))
    value, _, _, loc, weights = inputs
    s = value.shape[1]
    out = 2 * 300 * 8 * 32 * 4
    forward = (2 * s * 256 + 2 * 300 * 8 * 4 * 4 * 2 + 2 * 300 * 8 * 4 * 4) * 4 + out
    assert floor_bytes(inputs, backward=False) == forward
    assert floor_bytes(inputs, backward=True) == 2 * forward
    assert loc.shape == (2, 300, 8, 4, 4, 2) and weights.shape == (2, 300, 8, 4, 4)
    torch.testing.assert_close(weights.sum((-1, -2)), torch.ones(2, 300, 8))


def test_encoder_has_a_query_per_pixel_of_an_800x1333_picture():
    value, shapes, starts, loc, _ = make_inputs("encoder", 1, torch.float32, torch.device("cpu"))
    assert value.shape == (1, 22223, 8, 32) and loc.shape[1] == 22223
    assert shapes.tolist() == [[100, 167], [50, 84], [25, 42], [13, 21]]
    assert starts.tolist() == [0, 16700, 20900, 21950]


def test_half_inputs_have_float32_locations_as_the_model_gives_them():
    value, _, _, loc, weights = make_inputs("decoder", 1, torch.bfloat16, torch.device("cpu"))
    assert (value.dtype, loc.dtype, weights.dtype) == (torch.bfloat16,) + (torch.float32,) * 2
    bf16 = floor_bytes((value, None, None, loc, weights), backward=False)
    fp32 = floor_bytes(make_inputs("decoder", 1, torch.float32, torch.device("cpu")), False)
    assert fp32 - bf16 == (value.numel() + 300 * 8 * 32) * 2  # value and output in 2 bytes


def test_op_errors_against_float64():
    """fp32 is float32-accurate; bf16 rounds the result and value's gradient once (about 2^-8 of
    the largest), while the locations' and weights' gradients stay float32-accurate."""
    fp32 = op_errors("decoder", 1, torch.float32, torch.device("cpu"), backend="reference")
    bf16 = op_errors("decoder", 1, torch.bfloat16, torch.device("cpu"), backend="reference")
    keys = ["out", "grad_value", "grad_loc", "grad_attn"]
    assert list(fp32) == list(bf16) == keys
    assert all(fp32[k]["rel"] < 1e-5 and fp32[k]["norm"] < 1e-5 for k in keys), fp32
    assert all(1e-4 < bf16[k]["rel"] < 2**-7 for k in keys[:2]), bf16
    assert all(bf16[k]["rel"] < 1e-5 for k in keys[2:]), bf16


def test_cli_writes_a_row_per_backend_and_pass(tmp_path):
    out = tmp_path / "op.json"
    args = ["bench", "op", "--part", "decoder", "-b", "1", "--repeats", "1", "--json", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    rows = report["results"]
    backends = {row["backend"] for row in rows}
    assert "reference" in backends
    assert {row["pass"] for row in rows} == {"fwd", "fwd+bwd"}
    assert len(rows) == 2 * len(backends)
    for row in rows:
        assert row["ms"] > 0 and row["floor_ms"] > 0 and row["gbytes_per_s"] > 0
        assert row["speedup"] == 1.0 if row["backend"] == "reference" else row["speedup"] > 0
    assert report["copy_bandwidth_gb_s"] > 0 and report["command"].startswith("ddetr ")


def test_cli_rejects_a_bad_part_in_one_line():
    result = CliRunner().invoke(app, ["bench", "op", "--part", "middle"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --part: expected encoder or decoder, got middle"
