"""Running a model on pictures: ``predict`` (detections as COCO results and drawn pictures)."""
