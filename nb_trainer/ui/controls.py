"""ipywidgets controls built from ``TrainConfig``'s field specs.

One widget per field, keyed by the field's name; the ranges come from
:data:`nb_trainer.config.FIELDS`, so the sliders, the magics and the engine
agree. Log-scale fields with an "off" value use a ``SelectionSlider`` whose
first position is "off".
"""
from __future__ import annotations

import math

import ipywidgets as W

from ..config import FIELDS, OPTIMIZERS, PRECISIONS, SCHEDULES, TrainConfig

_STYLE = {"description_width": "110px"}
_LAYOUT = {"width": "340px"}


def log_positions(low: float, high: float, per_decade: int = 3) -> list[float]:
    """1, 2, 5 (per_decade=3) style positions from ``low`` to ``high``."""
    mantissas = {1: (1,), 2: (1, 3), 3: (1, 2, 5), 4: (1, 2, 3, 5)}[per_decade]
    out = []
    for exp in range(math.floor(math.log10(low)) - 1, math.ceil(math.log10(high)) + 1):
        for m in mantissas:
            v = float(f"{m}e{exp}")
            if low * (1 - 1e-9) <= v <= high * (1 + 1e-9):
                out.append(v)
    return out


def _fmt(v: float) -> str:
    return f"{v:.0e}".replace("e-0", "e-").replace("e+0", "e") if v < 0.01 or v >= 1000 else f"{v:g}"


def _with_value(options: list, value) -> list:
    """``options`` plus ``value`` if it is not among them (so any config can be shown)."""
    values = [v for _, v in options]
    if value in values:
        return options
    merged = options + [(_fmt(value) if isinstance(value, float) else str(value), value)]
    return sorted(merged, key=lambda kv: (kv[1] != 0 and kv[1] is not None, kv[1] or 0))


def _off_log_slider(name: str, value: float) -> W.SelectionSlider:
    spec = FIELDS[name]
    options = [("off", 0.0)] + [(_fmt(v), v) for v in log_positions(spec.slider_low, spec.slider_high)]
    return W.SelectionSlider(options=_with_value(options, value), value=value, description=spec.label,
                             continuous_update=False, style=_STYLE, layout=_LAYOUT, tooltip=spec.help)


def build_controls(config: TrainConfig, has_dropout: bool, model_dropout: float | None,
                   cuda: bool = False) -> dict:
    """``{field name: widget}`` showing ``config``. ``cuda``: the Trainer's device is a GPU
    (float16 precision is offered only there)."""
    c: dict[str, W.Widget] = {}
    spec = FIELDS["lr"]
    c["lr"] = W.FloatLogSlider(value=config.lr, base=10, min=math.log10(spec.slider_low),
                               max=math.log10(spec.slider_high), step=0.05, description=spec.label,
                               readout_format=".1e", continuous_update=False, style=_STYLE,
                               layout=_LAYOUT, tooltip=spec.help)
    c["optimizer"] = W.Dropdown(options=list(OPTIMIZERS), value=config.optimizer,
                                description="optimizer", style=_STYLE, layout=_LAYOUT,
                                tooltip=FIELDS["optimizer"].help)
    spec = FIELDS["momentum"]
    c["momentum"] = W.FloatSlider(value=config.momentum, min=spec.slider_low, max=spec.slider_high,
                                  step=0.01, description=spec.label, continuous_update=False,
                                  style=_STYLE, layout=_LAYOUT, tooltip=spec.help)
    c["weight_decay"] = _off_log_slider("weight_decay", config.weight_decay)
    c["l1"] = _off_log_slider("l1", config.l1)
    spec = FIELDS["dropout"]
    shown = config.dropout if config.dropout is not None else (model_dropout or 0.0)
    c["dropout"] = W.FloatSlider(value=shown, min=spec.slider_low, max=spec.slider_high, step=0.05,
                                 description=spec.label, continuous_update=False, style=_STYLE,
                                 layout=_LAYOUT, disabled=not has_dropout,
                                 tooltip=spec.help if has_dropout else
                                 "the model has no nn.Dropout layer: add one to use dropout")
    spec = FIELDS["batch_size"]
    sizes = [(str(1 << k), 1 << k) for k in range(0, 13) if spec.slider_low <= (1 << k) <= spec.slider_high]
    c["batch_size"] = W.SelectionSlider(options=_with_value(sizes, config.batch_size), value=config.batch_size,
                                        description=spec.label, continuous_update=False, style=_STYLE,
                                        layout=_LAYOUT, tooltip=spec.help)
    spec = FIELDS["epochs"]
    c["epochs"] = W.IntSlider(value=config.epochs, min=spec.slider_low,
                              max=max(int(spec.slider_high), config.epochs), description=spec.label,
                              continuous_update=False, style=_STYLE, layout=_LAYOUT, tooltip=spec.help)
    c["grad_clip"] = _off_log_slider("grad_clip", config.grad_clip)
    spec = FIELDS["patience"]
    c["patience"] = W.IntSlider(value=config.patience, min=0, max=max(int(spec.slider_high), config.patience),
                                description="patience", continuous_update=False, style=_STYLE,
                                layout=_LAYOUT, tooltip=spec.help)
    c["seed"] = W.BoundedIntText(value=config.seed, min=0, max=2**31 - 1, description="seed",
                                 style=_STYLE, layout=_LAYOUT, tooltip=FIELDS["seed"].help)
    c["schedule"] = W.Dropdown(options=list(SCHEDULES), value=config.schedule, description="lr schedule",
                               style=_STYLE, layout=_LAYOUT, tooltip=FIELDS["schedule"].help)
    spec = FIELDS["warmup"]
    c["warmup"] = W.FloatSlider(value=config.warmup, min=spec.slider_low, max=spec.slider_high, step=0.05,
                                description=spec.label, continuous_update=False, style=_STYLE, layout=_LAYOUT,
                                tooltip=spec.help)
    spec = FIELDS["accumulate"]
    steps = [(str(1 << k), 1 << k) for k in range(0, 7)]
    c["accumulate"] = W.SelectionSlider(options=_with_value(steps, config.accumulate), value=config.accumulate,
                                        description=spec.label, continuous_update=False, style=_STYLE,
                                        layout=_LAYOUT, tooltip=spec.help)
    precisions = [p for p in PRECISIONS if cuda or p != "16" or config.precision == "16"]
    c["precision"] = W.Dropdown(options=precisions, value=config.precision, description="precision",
                                style=_STYLE, layout=_LAYOUT,
                                tooltip=FIELDS["precision"].help + ("" if cuda else " (no GPU here: 16 is not offered)"))
    for name, w in c.items():
        w.add_class(f"nbt-{name.replace('_', '-')}")
    return c


def show_value(widget, value) -> None:
    """Put ``value`` on ``widget``, adding it to a selection slider's options when missing."""
    if isinstance(widget, W.SelectionSlider):
        options = [(lbl, v) for lbl, v in widget.options] if widget.options and isinstance(widget.options[0], tuple) \
            else [(str(v), v) for v in widget.options]
        new = _with_value(options, value)
        if len(new) != len(options):
            widget.options = new
    elif isinstance(widget, (W.IntSlider, W.FloatSlider)) and value is not None:
        if value > widget.max:
            widget.max = value
    if value is None:
        return
    widget.value = value
