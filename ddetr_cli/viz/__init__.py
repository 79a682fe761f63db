"""Pictures: drawing boxes and labels (``draw``), matplotlib charts (``plots``), and one module per
view of ``ddetr visualize``: ``attention``, ``predictions``, ``dataset``, ``curves``."""
