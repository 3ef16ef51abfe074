"""Default configs from the shipped cost model (`TILEFUSE_MODEL_CONFIGS=1`): the model's top pick
over each kernel's search space, checked against eager on ragged shapes under the interpreter."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import tilefuse
from tilefuse.autotune import model_defaults
from tilefuse.autotune.space import DeviceLimits, SearchSpace
from tilefuse.autotune.tasks import registered_task

pytest.importorskip("xgboost")


def _block(x, w, b, r):
    h = F.gelu(F.linear(x, w, b)) + r
    return torch.softmax(h, -1), F.layer_norm(h, (h.shape[-1],))


def _groups(compiled) -> list[dict]:
    return [g for r in compiled.tilefuse_reports for p in r["partitions"] for g in p["groups"]]


@pytest.fixture
def _fresh_picks(monkeypatch):
    monkeypatch.setattr(model_defaults, "_picks", {})


@pytest.mark.parametrize("m", [1, 77])
def test_the_models_top_pick_is_each_kernels_config_and_matches_eager(monkeypatch, _fresh_picks, m):
    """Every kernel without a tuned record takes the configuration the shipped model ranks first among
    its legal ones (the report says `model`), and the results are eager's (77 and 136 divide no tile)."""
    monkeypatch.setenv(model_defaults.MODEL_CONFIGS_ENV, "1")
    monkeypatch.setenv("TILEFUSE_TUNED", "0")
    args = (torch.randn(m, 96), torch.randn(136, 96), torch.randn(136), torch.randn(m, 136))
    compiled = tilefuse.compile(_block)
    with torch.no_grad():
        got = compiled(*args)
    for g, w in zip(got, _block(*args)):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    groups = [g for g in _groups(compiled) if g.get("config")]
    assert groups and {g["config_source"] for g in groups} == {"model"}
    model = model_defaults._shipped_model()
    for g in groups:
        task = registered_task(g["task_key"])
        configs = SearchSpace(task, DeviceLimits.current()).configs()
        pick = configs[int(model.predict(task, configs).argmax())]
        if g["kind"] != "pointwise":  # (the interpreter widens a pointwise block: its config is shown so)
            assert g["config"] == model_defaults._top_pick(task).key() == pick.key()


def test_off_by_default_and_the_heuristic_serves_without_a_model(monkeypatch, _fresh_picks):
    monkeypatch.delenv(model_defaults.MODEL_CONFIGS_ENV, raising=False)
    args = (torch.randn(9, 96), torch.randn(136, 96), torch.randn(136), torch.randn(9, 136))
    compiled = tilefuse.compile(_block)
    compiled(*args)
    assert {g["config_source"] for g in _groups(compiled) if g.get("config")} == {"default"}
    monkeypatch.setenv(model_defaults.MODEL_CONFIGS_ENV, "1")
    monkeypatch.setattr(model_defaults, "_shipped_model", lambda: None)  # xgboost or the model missing
    torch._dynamo.reset()
    compiled = tilefuse.compile(_block)
    with torch.no_grad():
        got = compiled(*args)
    torch.testing.assert_close(got[0], _block(*args)[0], rtol=1e-4, atol=1e-4)
    assert {g["config_source"] for g in _groups(compiled) if g.get("config")} == {"default"}
