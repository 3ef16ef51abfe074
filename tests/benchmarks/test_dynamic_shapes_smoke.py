"""The dynamic-shapes benchmark on the CPU: `--tiny`, eager and tilefuse, three ragged lengths."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from tilefuse.benchmarks.dynamic_shapes import main  # noqa: E402


def test_tiny_dynamic_shapes_run_matches_float64(tmp_path, capsys):
    out = tmp_path / "dynamic.md"
    main(["--tiny", "--no-torch-compile", "--lengths", "5,9,13", "--out", str(out)])
    report = out.read_text()
    assert report in capsys.readouterr().out
    rows = {
        cells[0]: cells
        for cells in ([c.strip() for c in line.strip("|").split(" | ")] for line in report.splitlines())
        if cells[0] in ("eager", "tilefuse")
    }  # fmt: skip
    assert list(rows) == ["eager", "tilefuse"]
    for cells in rows.values():
        assert all(float(c.split()[0]) > 0 for c in cells[1:4]), cells
        assert float(cells[7]) < 1e-5, cells  # against a float64 copy of the model
    # the first length's static graph, the dynamic graph (Dynamo sends every later call to it, the
    # first length's too), and each length's static compile, made when it is called back to back
    assert rows["tilefuse"][6] == "5", rows["tilefuse"]
