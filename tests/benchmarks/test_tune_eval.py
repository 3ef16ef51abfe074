"""The tuning evaluation's report phase on synthetic measurements (the measure phase needs a GPU)."""

from __future__ import annotations

import json

from tilefuse.autotune.database import Database
from tilefuse.autotune.search import ExhaustiveSearch, tune_task
from tilefuse.autotune.space import SearchSpace
from tilefuse.autotune.testing import NullBuilder, SyntheticRunner, gemm_task
from tilefuse.benchmarks import tune_eval


def test_report_replays_searches_on_measured_tables(tmp_path, capsys):
    db_path = tmp_path / "eval.db"
    tasks = [gemm_task(*s) for s in ((4096, 4096, 4096), (1024, 8192, 8192), (8192, 1024, 4096))]
    with Database(db_path) as db:
        for task in tasks:
            space = SearchSpace(task)
            tune_task(
                task, space=space, strategy=ExhaustiveSearch(), runner=SyntheticRunner(), builder=NullBuilder(),
                database=db, device="gpu", versions="v", budget=len(space),
            )  # fmt: skip
    out = tmp_path / "report.json"
    tune_eval.main(["report", "--db", str(db_path), "--report-json", str(out), "--autotune-json", "none.json", "--seeds", "1"])
    rows = json.loads(out.read_text())
    assert sorted(r["kernel"] for r in rows) == sorted(t.name for t in tasks)
    for r in rows:
        assert r["top5"] >= 1.0 and r["transfer_at10"] >= 1.0 and -1 <= r["spearman"] <= 1
        # on the synthetic cost, a model trained on the other two shapes ranks the third well
        assert r["spearman"] > 0.5 and r["transfer_at10"] < 1.10
    table = capsys.readouterr().out
    assert "| gemm 4096x4096x4096 |" in table and "device gpu; v" in table
