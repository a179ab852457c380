"""torchvision.ops.roi_align in plain PyTorch (same sampling as torchvision's kernel), for SAM 3's exemplar boxes."""

from __future__ import annotations

import math

import torch


def _bilinear(feature: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
    """feature (CxHxW) sampled at every (y, x) of the grid ys x xs, torchvision's edge rules: CxNxM."""
    height, width = feature.shape[-2:]
    inside = ((ys >= -1) & (ys <= height))[:, None] & ((xs >= -1) & (xs <= width))[None, :]

    def corners(values: torch.Tensor, size: int):
        values = values.clamp(min=0)
        low = values.floor().long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, torch.full_like(low, size - 1), low)
        high = torch.where(at_edge, low, low + 1)
        values = torch.where(at_edge, low.to(values.dtype), values)
        weight_high = values - low.to(values.dtype)
        return low, high, 1 - weight_high, weight_high

    y_low, y_high, wy_low, wy_high = corners(ys, height)
    x_low, x_high, wx_low, wx_high = corners(xs, width)
    rows_low, rows_high = feature[:, y_low], feature[:, y_high]
    value = (wy_low[:, None] * wx_low[None, :] * rows_low[:, :, x_low]
             + wy_low[:, None] * wx_high[None, :] * rows_low[:, :, x_high]
             + wy_high[:, None] * wx_low[None, :] * rows_high[:, :, x_low]
             + wy_high[:, None] * wx_high[None, :] * rows_high[:, :, x_high])
    return value * inside


def roi_align(input: torch.Tensor, boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1,
              aligned: bool = False) -> torch.Tensor:
    """Average of bilinear samples in each output bin of each box (boxes: a list of Kx4 XYXY per image, or a
    Kx5 tensor whose first column is the image index). Returns Kx C x out_h x out_w."""
    out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else tuple(output_size)
    if isinstance(boxes, torch.Tensor):
        rois = [(int(row[0]), row[1:]) for row in boxes]
    else:
        rois = [(index, box) for index, image_boxes in enumerate(boxes) for box in image_boxes]
    offset = 0.5 if aligned else 0.0
    pooled = []
    for index, box in rois:
        x0, y0, x1, y1 = (float(v) * spatial_scale - offset for v in box)
        roi_w, roi_h = x1 - x0, y1 - y0
        if not aligned:
            roi_w, roi_h = max(roi_w, 1.0), max(roi_h, 1.0)
        bin_h, bin_w = roi_h / out_h, roi_w / out_w
        grid_h = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_h / out_h)
        grid_w = sampling_ratio if sampling_ratio > 0 else math.ceil(roi_w / out_w)
        dtype, device = input.dtype, input.device
        steps_h = (torch.arange(grid_h, dtype=dtype, device=device) + 0.5) * bin_h / grid_h
        steps_w = (torch.arange(grid_w, dtype=dtype, device=device) + 0.5) * bin_w / grid_w
        ys = (y0 + torch.arange(out_h, dtype=dtype, device=device)[:, None] * bin_h + steps_h[None, :]).reshape(-1)
        xs = (x0 + torch.arange(out_w, dtype=dtype, device=device)[:, None] * bin_w + steps_w[None, :]).reshape(-1)
        samples = _bilinear(input[index], ys, xs)  # C x (out_h*grid_h) x (out_w*grid_w)
        channels = samples.shape[0]
        samples = samples.reshape(channels, out_h, grid_h, out_w, grid_w)
        pooled.append(samples.sum(dim=(2, 4)) / max(grid_h * grid_w, 1))
    if not pooled:
        return input.new_zeros((0, input.shape[1], out_h, out_w))
    return torch.stack(pooled)
