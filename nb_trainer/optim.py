"""The optimizer a config names, live changes to it, and the model's dropout rate."""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .config import TrainConfig

_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)


def set_dropout(model: nn.Module, p: Optional[float], defaults: dict) -> None:
    """Set ``p`` of every dropout layer (``None``: back to the model's own)."""
    for name, m in model.named_modules():
        if isinstance(m, _DROPOUT):
            m.p = defaults.get(name, m.p) if p is None else p


def dropout_defaults(model: nn.Module) -> dict:
    return {name: m.p for name, m in model.named_modules() if isinstance(m, _DROPOUT)}


def build_optimizer(config: TrainConfig, params) -> torch.optim.Optimizer:
    """The optimizer a config names. ``momentum`` is SGD's momentum and Adam's beta1."""
    name, lr, wd = config.optimizer, config.lr, config.weight_decay
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=wd)
    if name == "momentum":
        return torch.optim.SGD(params, lr=lr, momentum=config.momentum, weight_decay=wd)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=(config.momentum, 0.999), weight_decay=wd)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=wd)
    raise ValueError(f"optimizer={name!r}")  # unreachable: TrainConfig validated it


def apply_hyper(optimizer: torch.optim.Optimizer, config: TrainConfig) -> None:
    """Put a changed config's live values into a running optimizer."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr
        group["weight_decay"] = config.weight_decay
        if "betas" in group:
            group["betas"] = (config.momentum, group["betas"][1])
        elif config.optimizer == "momentum":
            group["momentum"] = config.momentum
