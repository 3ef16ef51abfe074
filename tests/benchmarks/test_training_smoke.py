"""The training-step benchmark on the CPU: `--tiny`, eager and tilefuse, gradients against eager's."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tilefuse.benchmarks.training import main  # noqa: E402


def test_tiny_training_step_on_cpu_matches_eager_gradients(tmp_path, capsys):
    """The first step's loss and gradients against eager's; the timed steps end with no update by
    default (`--optimizer none`; the autocast test below runs AdamW's)."""
    out = tmp_path / "training.md"
    main(["--tiny", "--no-torch-compile", "--models", "gpt2", "--out", str(out)])
    report = out.read_text()
    assert "+ adamw update" not in report, report.splitlines()[:8]
    assert report in capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in report.splitlines()]
    rows = {r[1]: r for r in rows if r[0] == "gpt2"}
    assert list(rows) == ["eager", "tilefuse", "tilefuse compiled backward"]
    for name in ("tilefuse", "tilefuse compiled backward"):
        row = rows[name]
        assert "FAILED" not in row[9] and float(row[2]) > 0, row
        assert row[4] == "—", row  # no GPU time off the GPU
        assert float(row[6]) < 1e-5 and float(row[7]) < 1e-4, row  # loss, gradients against eager's
        # against float64: no further from it than eager's own float32 step (plus float32's rounding)
        assert float(row[8]) <= 2 * float(rows["eager"][8]) + 1e-6, (row, rows["eager"])
    assert "backward graph(s) compiled" in rows["tilefuse compiled backward"][9]
    assert "backward graph(s) compiled" not in rows["tilefuse"][9]


def test_tiny_autocast_training_step_with_adamw_on_cpu(tmp_path, capsys):
    """`--autocast --optimizer adamw`: float32 weights, the forward under `torch.autocast(bfloat16)`
    (on the CPU here), the timed steps ending with AdamW's update, which the header names: the
    compiled steps' first gradients are as close to float64's as eager's own mixed-precision step."""
    out = tmp_path / "training.md"
    main(
        [
            "--tiny",
            "--no-torch-compile",
            "--models",
            "gpt2",
            "--out",
            str(out),
            "--autocast",
            "--optimizer",
            "adamw",
        ]
    )
    report = out.read_text()
    assert "torch.autocast(bfloat16), float32 weights" in report, report.splitlines()[:8]
    assert "+ adamw update" in report, report.splitlines()[:8]
    assert report in capsys.readouterr().out
    rows = [[c.strip() for c in line.strip("|").split(" | ")] for line in report.splitlines()]
    rows = {r[1]: r for r in rows if r[0] == "gpt2"}
    for name in ("tilefuse", "tilefuse compiled backward"):
        row = rows[name]
        assert "FAILED" not in row[9] and float(row[2]) > 0, row
        assert float(row[6]) < 1e-2 and float(row[7]) < 5e-2, row  # bf16 rounding, not a wrong gradient
        assert float(row[8]) <= 2 * float(rows["eager"][8]) + 1e-3, (row, rows["eager"])
