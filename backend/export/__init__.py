"""Export a project's masks as a training set (COCO, YOLO segmentation, PNG masks): python -m backend export."""
