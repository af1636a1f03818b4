"""Sweeps: many configs of one Trainer trained in parallel on Ray Tune, streamed back as runs.

>>> sw = t.sweep({"lr": nbt.loguniform(1e-4, 1e-1), "weight_decay": [0, 1e-4, 1e-3]}, trials=12, parallel=2)
>>> sw.wait().best

Layout: :mod:`.space` (the search-space helpers and their checks; no Ray), :mod:`.cluster`
(connecting to Ray, a local one safely), :mod:`.trial` (what runs on a worker),
:mod:`.control` (stop requests to running trials), :mod:`.driver` (Tune's callback and
stopper), :mod:`.sweep` (the :class:`Sweep` object). Ray is imported only when a sweep
starts, so this package imports without it.
"""
from __future__ import annotations

import numbers
from typing import Any, Mapping, Optional

from .space import Choice, Domain, LogUniform, Space, Uniform, choice, loguniform, parse_space, uniform

__all__ = ["loguniform", "uniform", "choice", "start", "shutdown", "Domain", "LogUniform", "Uniform", "Choice",
           "Space"]


def start(trainer, space: Mapping, trials: Optional[int] = None, parallel: Optional[int] = None,
          scheduler: Any = "asha", address: Optional[str] = None, **config: Any):
    """Check a sweep's arguments in the caller's thread, then start it (see :meth:`Trainer.sweep`)."""
    from ..config import check_names
    from .cluster import require_ray
    from .sweep import SCHEDULERS, Sweep
    check_names(config)
    base = trainer.config(**config)
    parsed, base = parse_space(space, base)
    num_samples = parsed.trials_for(trials)
    if parallel is not None and (isinstance(parallel, bool) or not isinstance(parallel, numbers.Integral)
                                 or parallel < 1):
        raise ValueError(f"parallel={parallel!r} is not accepted: parallel must be an integer >= 1 "
                         "(or None: as many trials at once as the cluster has CPUs)")
    if isinstance(scheduler, str):
        if scheduler.lower() not in SCHEDULERS:
            raise ValueError(f"scheduler={scheduler!r} is not accepted: use 'asha' (stop weak trials early) or "
                             "'fifo' (every trial to its last epoch), or a ray.tune scheduler")
        scheduler = scheduler.lower()
    if address is not None and not isinstance(address, str):
        raise ValueError(f"address={address!r} is not accepted: None (a local Ray), 'auto' or 'ray://host:port'")
    require_ray()
    return Sweep(trainer, parsed, base, num_samples, None if parallel is None else int(parallel), scheduler,
                 address).start()


def shutdown() -> bool:
    """Shut down the local Ray nb_trainer started for sweeps (see :func:`.cluster.shutdown`)."""
    from .cluster import shutdown as _shutdown
    return _shutdown()
