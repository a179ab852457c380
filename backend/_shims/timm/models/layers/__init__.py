"""DropPath, to_2tuple and trunc_normal_ as timm defines them."""

from __future__ import annotations

import collections.abc

import torch
from torch import nn


def to_2tuple(value):
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, str):
        return tuple(value)
    return (value, value)


def trunc_normal_(tensor: torch.Tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0, b: float = 2.0):
    return nn.init.trunc_normal_(tensor, mean=mean, std=std, a=a, b=b)


class DropPath(nn.Module):
    """Stochastic depth per sample (identity at inference)."""

    def __init__(self, drop_prob: float = 0.0, scale_by_keep: bool = True):
        super().__init__()
        self.drop_prob = drop_prob
        self.scale_by_keep = scale_by_keep

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        if self.scale_by_keep and keep > 0:
            mask.div_(keep)
        return x * mask
