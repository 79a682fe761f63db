"""ONNX: writing the detector as one ONNX file (``writer``), checking it against PyTorch
(``check``) and running an exported file with onnxruntime (``runtime``).

The names below are imported on first use: reading an ``.onnx`` ``--weights`` needs only
``runtime``."""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    "ExportReport": "ddetr_cli.export.writer",
    "export_onnx": "ddetr_cli.export.writer",
    "CheckResult": "ddetr_cli.export.check",
    "check_onnx": "ddetr_cli.export.check",
    "OnnxDetector": "ddetr_cli.export.runtime",
    "load_onnx_model": "ddetr_cli.export.runtime",
    "ort_session": "ddetr_cli.export.runtime",
    "read_metadata": "ddetr_cli.export.runtime",
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
