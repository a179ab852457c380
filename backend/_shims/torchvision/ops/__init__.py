from .boxes import batched_nms, box_area, nms
from .roi_align import roi_align

__all__ = ["batched_nms", "box_area", "nms", "roi_align"]
