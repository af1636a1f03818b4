"""How a warning names a layer to a person: ``Sequential[1] (ReLU after Linear(64→128))``.

The engine's probes and gradient norms key layers by their ``named_modules`` /
``named_parameters`` path ("1", "fc1.weight", "encoder.layer.0.output.dense.weight"),
which says little to someone who did not write the model. A label names the
model class, the path in the way it is written in code (``[i]`` for an index in
a container, ``.name`` for an attribute), and for an activation the layer that
feeds it. Duck-typed: it reads class names and the usual shape attributes
(``in_features``, ``out_channels``, ``kernel_size`` …), never a forward pass.
"""
from __future__ import annotations

_WEIGHTED = ("Linear", "Conv", "Embedding", "Bilinear", "RNN", "GRU", "LSTM", "Conv1D")


def path_label(root_name: str, path: str) -> str:
    """``Sequential`` + ``"0.2"`` -> ``Sequential[0][2]``; ``Net`` + ``"fc1"`` -> ``Net.fc1``."""
    out = root_name
    for part in path.split(".") if path else []:
        out += f"[{part}]" if part.isdigit() else f".{part}"
    return out


def describe(module) -> str:
    """``Linear(64→128)``, ``Conv2d(1→8, 3x3)``, ``Embedding(50, 32)``, else the class name."""
    kind = type(module).__name__
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return f"{kind}({module.in_features}→{module.out_features})"
    if hasattr(module, "in_channels") and hasattr(module, "out_channels"):
        k = getattr(module, "kernel_size", None)
        ks = "x".join(str(v) for v in k) if isinstance(k, tuple) else (str(k) if k is not None else "")
        return f"{kind}({module.in_channels}→{module.out_channels}" + (f", {ks}" if ks else "") + ")"
    if hasattr(module, "num_embeddings") and hasattr(module, "embedding_dim"):
        return f"{kind}({module.num_embeddings}, {module.embedding_dim})"
    if hasattr(module, "input_size") and hasattr(module, "hidden_size"):
        return f"{kind}({module.input_size}→{module.hidden_size})"
    return kind


def _is_weighted(module) -> bool:
    kind = type(module).__name__
    return any(kind.startswith(w) or kind == w for w in _WEIGHTED)


def module_labels(model) -> dict:
    """``{module path: label}`` for every leaf module of ``model`` (and ``"": the model``).

    An activation or other weightless layer is described by the weighted layer before it
    in registration order (the usual order of a forward pass): ``ReLU after Linear(64→128)``."""
    root = type(model).__name__
    labels = {"": root}
    previous = None
    for path, module in model.named_modules():
        if not path or next(iter(module.children()), None) is not None:
            continue  # the root, and containers: their leaves are labelled
        what = describe(module)
        if not _is_weighted(module) and previous is not None:
            what = f"{type(module).__name__} after {describe(previous)}"
        labels[path] = f"{path_label(root, path)} ({what})"
        if _is_weighted(module):
            previous = module
    return labels


def parameter_label(model, name: str) -> str:
    """A parameter's label: ``Sequential[0] (Linear(20→64))`` for ``"0.weight"``."""
    path = name.rsplit(".", 1)[0] if "." in name else ""
    modules = dict(model.named_modules())
    module = modules.get(path)
    if module is None:
        return name
    return f"{path_label(type(model).__name__, path)} ({describe(module)})" if path else type(model).__name__


def last_leaf(model):
    """``(path, module)`` of the last leaf module in registration order, or ``("", None)``."""
    found = ("", None)
    for path, module in model.named_modules():
        if path and next(iter(module.children()), None) is None:
            found = (path, module)
    return found
