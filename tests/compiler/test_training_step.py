"""A whole training step under `tilefuse.compile`: forward, `loss.backward()` and the optimizer's step
in the compiled function. The backward graph is compiled lazily inside `backward()`, with Dynamo's
frame hook still on for the user's frame; tilefuse's compile-start callback was once traced there
and re-entered Dynamo's callback lock, hanging the process. Run in a child with a timeout, so a hang
fails the test instead of the suite."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

STEP = """
import json, os, sys
import torch
import tilefuse

os.environ["TILEFUSE_TRAINING"] = sys.argv[1]
torch.manual_seed(0)


def make():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 13))


eager_model, compiled_model = make(), make()
eager_opt = torch.optim.AdamW(eager_model.parameters(), lr=1e-2)
compiled_opt = torch.optim.AdamW(compiled_model.parameters(), lr=1e-2)


def step(model, opt, x, y):
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss


compiled_step = tilefuse.compile(step)
losses = []
for i in range(3):
    x, y = torch.randn(7, 24), torch.randint(0, 13, (7,))  # 7 rows: ragged for every tile
    want = step(eager_model, eager_opt, x, y)
    got = compiled_step(compiled_model, compiled_opt, x, y)
    losses.append([want.item(), got.item()])
drift = max((a - b).abs().max().item() for a, b in zip(eager_model.parameters(), compiled_model.parameters()))
kinds = [r["kind"] for r in compiled_step.tilefuse_reports]
print(json.dumps({"losses": losses, "drift": drift, "kinds": kinds}))
"""


def _run(tmp_path, training: str) -> dict:
    script = tmp_path / "step.py"
    script.write_text(textwrap.dedent(STEP))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run(
        [sys.executable, str(script), training], capture_output=True, text=True, env=env, timeout=240
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_compiled_step_that_calls_backward_and_the_optimizer_matches_eager(tmp_path):
    for training in ("compile", "pytorch"):
        result = _run(tmp_path, training)
        for want, got in result["losses"]:
            assert abs(want - got) <= 1e-5 * max(1.0, abs(want)), result
        assert result["drift"] < 1e-5, result
        assert "forward" in result["kinds"], result  # the forward graph was compiled by tilefuse
