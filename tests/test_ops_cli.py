"""`ddetr ops info` and `ddetr ops build`."""

from __future__ import annotations

from typer.testing import CliRunner

from ddetr_cli.cli import app
from ddetr_cli.ops import backends


def test_ops_info_names_the_backend_and_why(monkeypatch):
    monkeypatch.setenv("DDETR_DISABLE_KERNEL", "1")
    backends.clear_cache()
    try:
        result = CliRunner().invoke(app, ["ops", "info"], terminal_width=200)
    finally:
        backends.clear_cache()
    assert result.exit_code == 0, result.output
    assert "reference" in result.output
    assert "disabled by DDETR_DISABLE_KERNEL=1" in result.output


def test_ops_build_rejects_an_unknown_device_in_one_line():
    result = CliRunner().invoke(app, ["ops", "build", "--device", "tpu"])
    assert result.exit_code == 2  # a usage error, as in every command
    assert result.output.strip() == "error: --device tpu: expected cpu or cuda"


def test_ops_build_reports_the_cpu_kernel(tmp_path, monkeypatch):
    from ddetr_cli.ops import build

    result = CliRunner().invoke(app, ["ops", "build", "--device", "cpu"], terminal_width=300)
    if result.exit_code != 0:  # no compiler here: the failure must still be one clear line
        assert result.output.startswith("error: kernel build failed: cpu:"), result.output
        return
    assert f"cpu kernel: {build.build_info()['cpu']['cache_dir']} (compiled" in result.output
