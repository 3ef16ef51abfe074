"""Default configs from the shipped cost model: its top pick over a kernel's pruned space.

Where the tuning database has no record for a kernel, its config is the heuristic's
(`heuristics.default_config`). With `TILEFUSE_MODEL_CONFIGS=1` it is instead the config the
shipped cost model (`models/h100`, trained on the H100 evaluation's trials) ranks first among
the legal configs of the kernel's search space (`space.SearchSpace`, the space a tuning job
searches), measured nothing: one prediction per distinct kernel, a few milliseconds. The
heuristic stays where the model cannot be used (xgboost or the model missing, a space of one
config) and where the model's pick is the heuristic's own.

Off by default until measured on models: the issue that asked for it measured the model's
pick within 2.4% of the exhaustive best on four kernels of an H200, against heuristic defaults
1.01x-2.9x slower, but no whole model has run with it yet. The report's `config_source` says
`model` for a config chosen this way.
"""

from __future__ import annotations

import functools
import logging
import os

from .heuristics import KernelConfig
from .records import TuningTask

log = logging.getLogger("tilefuse")

MODEL_CONFIGS_ENV = "TILEFUSE_MODEL_CONFIGS"


def model_configs_enabled() -> bool:
    return os.environ.get(MODEL_CONFIGS_ENV, "0") == "1"


@functools.cache
def _shipped_model() -> object | None:
    """The shipped cost model, loaded once per process; None where it cannot be (said once)."""
    try:
        from .job import PRETRAINED, load_cost_model

        if not PRETRAINED.exists():
            raise FileNotFoundError(PRETRAINED)
        return load_cost_model(PRETRAINED)
    except Exception as e:  # noqa: BLE001  (no model: the heuristic serves)
        log.warning("tilefuse: %s=1 but the shipped cost model cannot be loaded (%s)", MODEL_CONFIGS_ENV, e)
        return None


_picks: dict[str, KernelConfig | None] = {}  # by task key: a model's identical layers are ranked once


def _top_pick(task: TuningTask) -> KernelConfig | None:
    from .space import DeviceLimits, SearchSpace

    if task.key in _picks:
        return _picks[task.key]
    model = _shipped_model()
    pick = None
    if model is not None:
        configs = SearchSpace(task, DeviceLimits.current()).configs()
        if len(configs) >= 2:
            pick = configs[int(model.predict(task, configs).argmax())]
    _picks[task.key] = pick
    return pick


def model_config(task: TuningTask) -> KernelConfig | None:
    """The shipped cost model's top pick for `task` when `TILEFUSE_MODEL_CONFIGS=1`, else None (the
    caller keeps its heuristic default). Never raises: a failure is logged and the heuristic serves."""
    if not model_configs_enabled():
        return None
    try:
        return _top_pick(task)
    except Exception as e:  # noqa: BLE001
        log.warning("tilefuse: the cost model could not rank %s's configs (%s)", task.key, e)
        return None
