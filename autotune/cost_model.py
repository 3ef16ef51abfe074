"""Cost models: predict which configs of a task run fastest, from the trials measured so far.

The tuner measures a few candidates, updates the model with their times, and asks it to
rank the rest (as TVM's XGBoost cost model does). The model only has to order the configs
of one task, never to predict milliseconds, so it learns a ranking: `XGBoostCostModel`
trains XGBoost's pairwise ranking objective with one query group per task, on labels
best_time_in_task / time (1 for the task's fastest config, near 0 for slow ones, 0 for
failed ones). Those labels have no unit, so tasks of very different sizes and kinds train
one model together; the features (`features.py`) are shared by every kernel kind.

Scores from `predict` are only comparable within one call: higher means predicted faster.
Within one task they track log time closely, though (correlation -0.85 to -0.99 on the trials
of the shipped H100 model), so `predicted_speedup` turns a gap in scores into a ratio of
times, at a scale fitted on the model's own trials.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import xgboost as xgb

from .features import FEATURE_NAMES, feature_matrix
from .heuristics import KernelConfig
from .records import TuningTask

_ROOFLINE = FEATURE_NAMES.index("log2_roofline_us")


@runtime_checkable
class CostModel(Protocol):
    """What the tuner needs of a cost model."""

    def update(
        self, task: TuningTask, configs: Sequence[KernelConfig], times_ms: Sequence[float | None]
    ) -> None:
        """Learn from measured trials of `task`: `times_ms[i]` is `configs[i]`'s time, None if it failed."""

    def predict(self, task: TuningTask, configs: Sequence[KernelConfig]) -> np.ndarray:
        """One score per config, higher = predicted faster; comparable within this call only."""

    def save(self, path: str | Path) -> None:
        """Write the model into the directory `path` (created if missing)."""

    @classmethod
    def load(cls, path: str | Path) -> CostModel:
        """The model `save` wrote to `path`."""


DEFAULT_PARAMS: dict = {
    "objective": "rank:pairwise",
    # pairs drawn uniformly from each group, not only around the top-k: the model has to
    # order the whole candidate list, since the tuner samples from more than its top few
    "lambdarank_pair_method": "mean",
    "lambdarank_num_pair_per_sample": 8,
    "eta": 0.1,
    "max_depth": 6,
    "min_child_weight": 1.0,
    "subsample": 1.0,
    "colsample_bytree": 1.0,
    "tree_method": "hist",
    "seed": 0,
    # thousands of rows: threads buy nothing, and on a busy machine OpenMP's spinning threads
    # made a 0.4 s fit take 8-26 s (measured with 2 cores shared)
    "nthread": 1,
    "verbosity": 0,
}


class XGBoostCostModel:
    """XGBoost pairwise ranking over `features.features`, one query group per task key.

    Every `update` retrains from scratch on all trials seen so far (they number in the
    thousands at most; a fresh fit is cheaper than reasoning about incremental trees).
    Until the first update, `predict` ranks by the features' roofline estimate.
    """

    def __init__(
        self, params: dict | None = None, rounds: int = 200, *, sm_count: int = 132, smem_limit: int = 232448
    ) -> None:
        self.params = DEFAULT_PARAMS | (params or {})
        self.rounds = rounds
        self.sm_count, self.smem_limit = sm_count, smem_limit
        self._booster: xgb.Booster | None = None
        self._log_time_scale: float | None = None  # fitted on first use, dropped by every retraining
        # per task key, in first-seen order: its rows' features and times (NaN = failed)
        self._groups: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def trained(self) -> bool:
        """Whether predictions come from a trained booster rather than the roofline prior."""
        return self._booster is not None

    def _features(self, task: TuningTask, configs: Sequence[KernelConfig]) -> np.ndarray:
        return feature_matrix(task, configs, self.sm_count, self.smem_limit)

    def update(
        self, task: TuningTask, configs: Sequence[KernelConfig], times_ms: Sequence[float | None]
    ) -> None:
        """Add trials of `task` (`None` times are failures, labelled 0) and retrain on everything."""
        if len(configs) != len(times_ms):
            raise ValueError(f"{len(configs)} configs but {len(times_ms)} times")
        if not configs:
            return
        x = self._features(task, configs)
        t = np.array([math.nan if v is None else float(v) for v in times_ms], dtype=np.float64)
        if task.key in self._groups:
            old_x, old_t = self._groups[task.key]
            x, t = np.concatenate([old_x, x]), np.concatenate([old_t, t])
        self._groups[task.key] = (x, t)
        self._train()

    def _training_data(self) -> tuple[np.ndarray, np.ndarray, list[int]]:
        xs, labels, sizes = [], [], []
        for x, t in self._groups.values():
            ok = np.isfinite(t) & (t > 0)
            label = np.zeros(len(t))
            if ok.any():
                label[ok] = t[ok].min() / t[ok]
            xs.append(x)
            labels.append(label)
            sizes.append(len(t))
        return np.concatenate(xs), np.concatenate(labels), sizes

    def _train(self) -> None:
        x, y, sizes = self._training_data()
        data = xgb.DMatrix(x, label=y, group=sizes, feature_names=list(FEATURE_NAMES))
        self._booster = xgb.train(self.params, data, num_boost_round=self.rounds)
        self._log_time_scale = None

    def predict(self, task: TuningTask, configs: Sequence[KernelConfig]) -> np.ndarray:
        """Scores of `configs` on `task` (float64), higher = predicted faster.

        Untrained, the score is minus the log2 roofline time, so a fresh model already
        prefers big, well-shaped tiles that fill the GPU and fit shared memory.
        """
        if not configs:
            return np.zeros(0)
        x = self._features(task, configs)
        if self._booster is None:
            return -x[:, _ROOFLINE].astype(np.float64)
        return self._booster.predict(xgb.DMatrix(x, feature_names=list(FEATURE_NAMES))).astype(np.float64)

    def log_time_scale(self) -> float:
        """Natural-log units of time per unit of score, within one task.

        Untrained, a score is minus the log2 roofline time: the scale is ln 2 exactly. Trained,
        it is the least-squares slope of -log(time) on score over the model's own measured
        trials, each task's centred on its means (scores compare within a task only) and the
        tasks pooled; 0 (no gap means anything) when the trials cannot say.
        """
        if self._booster is None:
            return math.log(2.0)
        if self._log_time_scale is None:
            covariance = variance = 0.0
            for x, t in self._groups.values():
                ok = np.isfinite(t) & (t > 0)
                if ok.sum() < 2:
                    continue
                scores = self._booster.predict(xgb.DMatrix(x[ok], feature_names=list(FEATURE_NAMES)))
                s, log_t = scores - scores.mean(), np.log(t[ok]) - np.log(t[ok]).mean()
                covariance, variance = covariance - float(s @ log_t), variance + float(s @ s)
            self._log_time_scale = max(0.0, covariance / variance) if variance > 0 else 0.0
        return self._log_time_scale

    def predicted_speedup(
        self, task: TuningTask, baseline: KernelConfig, configs: Sequence[KernelConfig]
    ) -> float:
        """How many times faster than `baseline` the predicted-fastest of `configs` (and `baseline`)
        runs on `task`: exp(scale x the score gap), at least 1 (see `log_time_scale`)."""
        scores = self.predict(task, [baseline, *configs])
        return math.exp(self.log_time_scale() * float(scores.max() - scores[0]))

    def save(self, path: str | Path) -> None:
        """Write meta.json, the trials (data.npz) and, once trained, booster.json into `path`."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "params": self.params,
            "rounds": self.rounds,
            "sm_count": self.sm_count,
            "smem_limit": self.smem_limit,
            "feature_names": list(FEATURE_NAMES),
        }
        (path / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True))
        # one row list for all groups, each row tagged with its group's index into `keys`
        groups = list(self._groups.values())
        np.savez(
            path / "data.npz",
            x=np.concatenate([x for x, _ in groups] + [np.zeros((0, len(FEATURE_NAMES)), np.float32)]),
            times=np.concatenate([t for _, t in groups] + [np.zeros(0)]),
            group=np.concatenate(
                [np.full(len(t), i, np.int64) for i, (_, t) in enumerate(groups)] + [np.zeros(0, np.int64)]
            ),
            keys=np.array(list(self._groups), dtype=str),
        )
        booster = path / "booster.json"
        if self._booster is not None:
            self._booster.save_model(str(booster))
        elif booster.exists():
            booster.unlink()  # a stale booster of an earlier save would come back trained

    @classmethod
    def load(cls, path: str | Path) -> XGBoostCostModel:
        """The model `save` wrote: same predictions, and `update` goes on from the same trials."""
        path = Path(path)
        meta = json.loads((path / "meta.json").read_text())
        if meta["feature_names"] != list(FEATURE_NAMES):
            # rows of other features would be silently misread: retrain from the tuning database instead
            raise ValueError(f"{path} was saved with different features; it cannot be loaded by this version")
        model = cls(meta["params"], meta["rounds"], sm_count=meta["sm_count"], smem_limit=meta["smem_limit"])
        with np.load(path / "data.npz", allow_pickle=False) as data:
            x, times, group, keys = data["x"], data["times"], data["group"], data["keys"]
        for i, key in enumerate(keys.tolist()):
            rows = group == i
            model._groups[key] = (x[rows], times[rows])
        booster = path / "booster.json"
        if booster.exists():
            model._booster = xgb.Booster(params={"nthread": model.params["nthread"]}, model_file=str(booster))
        return model


class RandomCostModel:
    """Random scores: the baseline a learned model has to beat. `update` learns nothing."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self._rng = np.random.default_rng(seed)

    @property
    def trained(self) -> bool:
        """Always False: there is nothing to train."""
        return False

    def update(
        self, task: TuningTask, configs: Sequence[KernelConfig], times_ms: Sequence[float | None]
    ) -> None:
        """Ignore the trials."""

    def predict(self, task: TuningTask, configs: Sequence[KernelConfig]) -> np.ndarray:
        """Uniform random scores in [0, 1), from the model's own seeded stream."""
        return self._rng.random(len(configs))

    def save(self, path: str | Path) -> None:
        """Write the seed to `path`/meta.json."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / "meta.json").write_text(json.dumps({"seed": self.seed}))

    @classmethod
    def load(cls, path: str | Path) -> RandomCostModel:
        """A model with the saved seed (its stream restarts from the beginning)."""
        return cls(json.loads((Path(path) / "meta.json").read_text())["seed"])


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the mean of the ranks they span."""
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return ((ends - counts + 1 + ends) / 2.0)[inverse.reshape(-1)]


def spearman(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """Spearman rank correlation of two equally long finite sequences (ties averaged).

    0.0 when either side is constant (or has fewer than two values), where the correlation
    is undefined: such a ranking carries no order information.
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"spearman of sequences of lengths {x.size} and {y.size}")
    if x.size < 2:
        return 0.0
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denom if denom > 0 else 0.0
