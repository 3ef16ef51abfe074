"""Whole-model tuning (issue 16 item 3): one trial budget split by expected gain, the model's time
before and after. The split is tested as the pure function it is; the job on a small model
compiled on CPU, measured by the synthetic runner and timed by an injected timer."""

from __future__ import annotations

import functools
import random
import re
import textwrap

import pytest
import torch

import tilefuse
from tilefuse.autotune import job
from tilefuse.autotune.cost_model import XGBoostCostModel
from tilefuse.autotune.database import DB_ENV, Database, device_name, versions
from tilefuse.autotune.features import roofline_us
from tilefuse.autotune.job import (
    FLOOR_TRIALS,
    BudgetTooSmall,
    GainEstimate,
    estimate_gains,
    load_cost_model,
    predicted_shares,
    split_budget,
)
from tilefuse.autotune.space import DeviceLimits, SearchSpace
from tilefuse.autotune.testing import NullBuilder, SyntheticRunner, gemm_task
from tilefuse.compiler import group_selection, runtime, tuning
from tilefuse.compiler.cli import main as cli_main


@pytest.fixture(autouse=True)
def _own_database(tmp_path, monkeypatch):
    """A job given `database=` makes it `$TILEFUSE_TUNING_DB`: restored after each test."""
    monkeypatch.setenv(DB_ENV, str(tmp_path / "unused.db"))


def _tasks(n: int) -> list:
    return [gemm_task(64 * (i + 1), 64, 64, key=f"k{i}") for i in range(n)]


def _random_case(rng: random.Random, n: int, room: tuple[int, int] = (400, 800)):
    tasks = _tasks(n)
    launches = {t.key: rng.randint(1, 4) for t in tasks}
    estimates = {
        t.key: GainEstimate(rng.uniform(1, 100), rng.uniform(1, 3), rng.randint(*room)) for t in tasks
    }
    return tasks, launches, estimates


def _weight(key: str, tasks, launches, estimates) -> float:
    return predicted_shares(tasks, launches, estimates)[key] * estimates[key].speedup


def test_the_split_spends_the_total_with_a_floor_each_and_more_where_more_is_expected():
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 8)
        tasks, launches, estimates = _random_case(rng, n)
        total = rng.randint(FLOOR_TRIALS * n, 300)
        trials = split_budget(tasks, launches, estimates, total)
        assert sum(trials.values()) == total and set(trials) == {t.key for t in tasks}
        assert min(trials.values()) >= FLOOR_TRIALS
        for a in tasks:
            for b in tasks:
                if _weight(a.key, tasks, launches, estimates) > _weight(b.key, tasks, launches, estimates):
                    assert trials[a.key] >= trials[b.key]


def test_the_split_follows_share_times_gain():
    tasks = _tasks(3)
    # the same default time: shares go by launches (1:2:1), gains are 1x, 1x and 3x: weights 1:2:3
    estimates = {t.key: GainEstimate(10.0, speedup, 1000) for t, speedup in zip(tasks, (1.0, 1.0, 3.0))}
    launches = {"k0": 1, "k1": 2, "k2": 1}
    trials = split_budget(tasks, launches, estimates, 4 * 3 + 60)
    assert trials == {"k0": 4 + 10, "k1": 4 + 20, "k2": 4 + 30}


def test_the_split_is_deterministic():
    tasks, launches, estimates = _random_case(random.Random(1), 6)
    first = split_budget(tasks, launches, estimates, 97)
    # mappings in another order, equal weights (ties): the same answer every time
    shuffled = dict(reversed(list(estimates.items())))
    assert split_budget(tasks, dict(reversed(list(launches.items()))), shuffled, 97) == first
    same = {t.key: GainEstimate(5.0, 2.0, 100) for t in tasks}
    ties = split_budget(tasks, {}, same, 4 * 6 + 3)
    assert ties == split_budget(tasks, {}, same, 4 * 6 + 3)
    assert [ties[t.key] for t in tasks] == [5, 5, 5, 4, 4, 4]  # a tie goes to the earlier task


def test_a_task_gets_no_more_trials_than_its_space_and_the_rest_goes_elsewhere():
    tasks = _tasks(3)
    estimates = {
        "k0": GainEstimate(100.0, 3.0, 6),
        "k1": GainEstimate(1.0, 1.0, 500),
        "k2": GainEstimate(1.0, 1.0, 2),
    }
    trials = split_budget(tasks, {}, estimates, 50)
    assert trials == {"k0": 6, "k1": 42, "k2": 2}
    # more than every space holds: each space whole, the rest unused
    assert split_budget(tasks, {}, estimates, 1000) == {"k0": 6, "k1": 500, "k2": 2}


def test_a_total_below_the_floors_lowers_them_and_below_one_each_is_refused():
    tasks, launches, estimates = _random_case(random.Random(2), 5)
    trials = split_budget(tasks, launches, estimates, 12)  # under 4 x 5: 2 each, 2 by gain
    assert sum(trials.values()) == 12 and min(trials.values()) == 2
    assert split_budget(tasks, launches, estimates, 5) == {t.key: 1 for t in tasks}
    with pytest.raises(
        BudgetTooSmall, match=r"total budget of 4 trial\(s\) cannot measure .* 5 kernels: give at least 5"
    ):
        split_budget(tasks, launches, estimates, 4)


def test_estimates_come_from_the_roofline_and_the_cost_model():
    big, small = gemm_task(4096, 4096, 4096), gemm_task(64, 64, 64)
    limits = DeviceLimits()
    fresh = estimate_gains([big, small], limits, XGBoostCostModel())
    space = SearchSpace(big, limits)
    default = space.untuned()
    # untrained, a score is -log2(roofline): the predicted gain is the roofline's own ratio
    best = min(roofline_us(big, c) for c in [default, *space.configs()])
    assert fresh[big.key].default_us == roofline_us(big, default)
    assert fresh[big.key].speedup == pytest.approx(roofline_us(big, default) / best, rel=1e-4)
    assert fresh[big.key].space_size == len(space)
    shipped = load_cost_model()
    assert shipped.trained and shipped.log_time_scale() > 0  # fitted on the model's own trials
    estimates = estimate_gains([big, small], limits, shipped)
    assert all(e.speedup >= 1 for e in estimates.values())
    assert predicted_shares([big, small], {}, estimates)[big.key] > 0.9


def _model(x, w1, w2, w3):
    h = torch.relu(x @ w1)
    h = torch.relu(h @ w2)  # the kernel of the line above again: one task launched twice
    return torch.softmax(h @ w3, dim=-1)


def _inputs():
    return torch.randn(24, 40), torch.randn(40, 40), torch.randn(40, 40), torch.randn(40, 24)


def synthetic_runner(device_index: int | None = None) -> SyntheticRunner:
    return SyntheticRunner()


@pytest.fixture
def fakes(monkeypatch) -> dict:
    """A job's options for the synthetic runner, which needs nothing built: the local executor gets a
    `NullBuilder`, and no build processes start (seconds each)."""
    monkeypatch.setattr(job, "LocalBuilder", lambda build_fn: NullBuilder())
    return dict(strategy="random", make_runner=synthetic_runner)


def test_a_model_job_spends_its_total_budget_and_reports_the_model_before_and_after(
    tmp_path, capsys, monkeypatch, fakes
):
    compiles = []

    def recording_compile(fn):
        compiles.append(tuning_compile(fn))
        return compiles[-1]

    tuning_compile = tuning.tilefuse_compile
    monkeypatch.setattr(tuning, "tilefuse_compile", recording_compile)
    times = iter([2.0, 1.6])
    db = tmp_path / "model.db"

    def timer(run) -> float:
        run()
        return next(times)

    summary = tilefuse.tune(_model, _inputs(), total_budget=20, database=db, timer=timer, **fakes)
    err = capsys.readouterr().err
    # the split, printed before the first trial
    assert "| kernel | kind | launches | predicted share | predicted gain | trials |" in err
    first_trial = re.search(r"\] \d+/\d+ best", err).start()
    assert err.index("budget: 20 trials over 2 kernels, at least 4 each") < first_trial
    split = summary.split
    assert sorted(split.launches.values()) == [1, 2]
    assert sum(split.trials.values()) == 20 and min(split.trials.values()) >= FLOOR_TRIALS
    assert {r.task.key: len(r.trials) for r in summary.results} == split.trials  # exactly the total
    with Database(db) as database:
        assert sum(len(database.records(k, device_name(), versions())) for k in split.trials) == 20
    table = summary.table()
    assert "model end to end, before tuning (default configs): 2 ms" in table
    assert "model end to end, after tuning (tuned configs): 1.6 ms (1.25x)" in table
    # two compiles: the one that found the kernels is timed as "before"; "after" reads the database
    sources = [{g["config_source"] for g in _groups(c)} for c in compiles]
    assert sources == [{"default"}, {"tuned"}]
    # a second job over the same database resumes (no trial left), its "before" still the defaults
    compiles.clear()
    times = iter([1.6, 1.6])
    again = tilefuse.tune(
        _model, _inputs(), total_budget=20, database=db, timer=timer, progress=False, **fakes
    )
    assert sum(len(r.trials) for r in again.results) == 0 and sum(r.resumed for r in again.results) == 20
    assert [{g["config_source"] for g in _groups(c)} for c in compiles] == [{"default"}, {"tuned"}]


def _groups(compiled) -> list[dict]:
    return [
        g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"] if g["task_key"]
    ]


def test_the_selection_after_tuning_is_measured_in_the_job_recorded_and_listed(tmp_path, monkeypatch, fakes):
    """The after-compile measures each group's tuned kernel against its library paths (the GPU and its
    clock faked: the library GEMM with the epilogue as one kernel, the split path, wins), lists the choices in the summary and leaves them in the job's
    database, where a later compile finds them without measuring."""
    monkeypatch.setattr(runtime, "group_selection_enabled", lambda device: True)

    def split_wins(kind, run, device):
        run()
        return 2.0 if kind == "kernel" else 1.0

    monkeypatch.setattr(group_selection, "default_clock", split_wins)

    def timer(run) -> float:
        run()
        return 1.0

    summary = tilefuse.tune(
        _model, _inputs(), budget=2, database=tmp_path / "db", timer=timer, progress=False, **fakes
    )
    # one row per tuned GEMM kernel: the two identical layers share one measured choice
    assert sorted(c["groups"] for c in summary.choices) == [1, 2]
    assert all(c["chosen"] == "split" and (c["kernel_ms"], c["split_ms"]) == (2, 1) for c in summary.choices)
    assert {c["task"] for c in summary.choices} == {r.task.name for r in summary.results}
    table = summary.table()
    assert "selection after tuning (each group's tuned kernel against its library paths):" in table
    assert table.count("| split | 2 | 1 | this job |") == 2  # chosen, kernel ms, split ms, measured now

    def no_clock(kind, run, device):
        raise AssertionError("a compile after the job measured again")

    monkeypatch.setattr(group_selection, "default_clock", no_clock)
    torch._dynamo.reset()
    compiled = tilefuse.compile(_model)
    inputs = _inputs()
    with torch.no_grad():
        torch.testing.assert_close(compiled(*inputs), _model(*inputs), rtol=1e-4, atol=1e-4)
    later = tuning.selection_choices(compiled)
    assert later and all(c["chosen"] == "split" and c["from"] == "database" for c in later)


def test_identical_choices_are_one_row_even_where_their_notes_name_the_group():
    def partition(group: str) -> dict:
        choice = {"group": group, "chosen": "kernel", "kernel_ms": 0.01, "split_ms": 0.2,
                  "library_not_built": f"{group}: its split path stands for it"}  # fmt: skip
        return {"groups": [{"name": group, "task_key": "gemm_0123"}], "group_selection": [choice]}

    class Compiled:
        tilefuse_reports = [{"partitions": [partition("k1"), partition("k7")]}]

    (row,) = tuning.selection_choices(Compiled())
    assert row["groups"] == 2 and row["task"] == "gemm_0123" and row["split_ms"] == 0.2


def test_without_a_gpu_or_a_timer_the_model_is_not_measured(tmp_path, fakes):
    summary = tilefuse.tune(_model, _inputs(), budget=2, database=tmp_path / "db", progress=False, **fakes)
    assert summary.split is None and [len(r.trials) for r in summary.results] == [2, 2]
    assert (
        summary.before_ms is None
        and "before tuning (default configs): not measured (no GPU)" in summary.table()
    )
    assert summary.choices is None and "library paths): not measured (no GPU)" in summary.table()


def test_the_cli_takes_a_total_budget(tmp_path, capsys, monkeypatch, fakes):
    script = tmp_path / "model.py"
    script.write_text(
        textwrap.dedent(
            """
            import torch

            def tune_target():
                x, w1, w2 = torch.randn(16, 32), torch.randn(32, 32), torch.randn(32, 8)
                return (lambda x, w1, w2: torch.tanh(x @ w1) @ w2), (x, w1, w2)
            """
        )
    )
    monkeypatch.setattr(tuning, "tune_tasks", functools.partial(job.tune_tasks, make_runner=synthetic_runner))
    db = tmp_path / "cli.db"
    assert (
        cli_main(["tune", str(script), "--budget-total", "9", "--strategy", "random", "--db", str(db)]) == 0
    )
    out = capsys.readouterr()
    assert "budget: 9 trials over 2 kernels" in out.err and "| gemm |" in out.out
    assert "after tuning (tuned configs): not measured (no GPU)" in out.out
    with Database(db) as database:
        assert len(database) == 9
    assert cli_main(["tune", str(script), "--budget-total", "1", "--db", str(db)]) == 1
    assert "give at least 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli_main(["tune", str(script), "--budget", "3", "--budget-total", "9"])
