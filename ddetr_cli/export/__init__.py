"""ONNX: writing the detector as one ONNX file (``writer``), checking it against PyTorch
(``check``) and running an exported file with onnxruntime (``runtime``), each loaded on first
use: an ``.onnx`` ``--weights`` needs only ``runtime``."""

from ddetr_cli.lazy import lazy_getattr

_EXPORTS = {
    **dict.fromkeys(("ExportReport", "export_onnx"), "ddetr_cli.export.writer"),
    **dict.fromkeys(("CheckResult", "check_onnx"), "ddetr_cli.export.check"),
    **dict.fromkeys(
        ("OnnxDetector", "load_onnx_model", "ort_session", "read_metadata"),
        "ddetr_cli.export.runtime",
    ),
}

__all__ = list(_EXPORTS)

__getattr__ = lazy_getattr(__name__, _EXPORTS)
