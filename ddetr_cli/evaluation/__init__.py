"""Scoring detections: COCO box AP (``coco``), the ``ddetr evaluate`` reports (``evaluate``) and
precision, recall, F1 and the confusion matrix at one score threshold (``thresholds``)."""
