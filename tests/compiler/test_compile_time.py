"""Compile time: identical kernels compiled once, the precompile pool, timings in the report, cache hits."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

import tilefuse
import tilefuse.backends.triton as triton_backend
from helpers import compile_and_compare, fusion_groups
from tilefuse.backends.triton import precompile
from tilefuse.compiler import artifact_cache, codegen
from tilefuse.ir import tile
from tilefuse.ir.module import IRError
from tilefuse.passes import lower_to_tile

BLOCK = """
import torch


class Block(torch.nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.norm = torch.nn.LayerNorm(dim)
        self.up = torch.nn.Linear(dim, 2 * dim)
        self.down = torch.nn.Linear(2 * dim, dim)

    def forward(self, x):
        return x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))


def model(blocks, dim=16):
    torch.manual_seed(0)
    return torch.nn.Sequential(*[Block(dim) for _ in range(blocks)]).eval()
"""


@pytest.fixture
def blocks(tmp_path, monkeypatch):
    """The module above, importable here and in a subprocess (from tmp_path)."""
    (tmp_path / "tf_blocks.py").write_text(BLOCK)
    monkeypatch.syspath_prepend(str(tmp_path))
    import tf_blocks

    yield tf_blocks
    sys.modules.pop("tf_blocks", None)


def _count_loads(monkeypatch) -> list[str]:
    """Every Triton source loaded from now on (the process's loaded kernels forgotten first)."""
    monkeypatch.setattr(codegen, "_launchers", {})
    loaded: list[str] = []
    real = triton_backend.load

    def counting(source, name, *args, **kwargs):
        loaded.append(source)
        return real(source, name, *args, **kwargs)

    monkeypatch.setattr(triton_backend, "load", counting)
    return loaded


def test_identical_blocks_compile_each_distinct_kernel_once(blocks, monkeypatch):
    # the first and last blocks may fuse differently (a residual add joins the next block's norm),
    # the ones between are alike: five blocks have the kernels of three, no new ones
    x = torch.randn(2, 4, 16)
    three = compile_and_compare(blocks.model(3), x, rtol=1e-4, atol=1e-4)
    loaded = _count_loads(monkeypatch)
    five = compile_and_compare(blocks.model(5), x, rtol=1e-4, atol=1e-4)
    (k3,), (k5,) = [r["kernels"] for r in three], [r["kernels"] for r in five]
    assert k5["total"] > k3["total"] > k3["distinct"] and k5["distinct"] == k3["distinct"], (k3, k5)
    assert len(loaded) == len(set(loaded)) == k5["distinct"]
    # twin groups (one per block) name the same Triton function: Triton compiles it once
    groups = [g for g in fusion_groups(five) if g["kernel"]]
    assert len({g["triton_function"] for g in groups}) == k5["distinct"]
    assert len({g["kernel"] for g in groups}) == k5["total"]


def test_identical_blocks_are_lowered_once_and_each_copy_is_its_own_lowering(blocks, monkeypatch, tmp_path):
    """A group structurally identical to one lowered before (one per block) gets a copy of that kernel
    reading its own tensors: five blocks take the lowerings of three. With `TILEFUSE_CHECK_REUSE=1`
    each copy is also lowered afresh and must be the same kernel (its arguments named after its own
    block's parameters), inputs and problem; the compiled model matches eager either way."""
    monkeypatch.delenv(lower_to_tile.REUSE_CHECK_ENV, raising=False)
    monkeypatch.setenv("TILEFUSE_CACHE", "0")  # every compile lowers (another test may have cached these)
    lowerings: list[str] = []
    real = lower_to_tile.lower_group

    def counting(group, *args, **kwargs):
        lowerings.append(group.name)
        return real(group, *args, **kwargs)

    monkeypatch.setattr(lower_to_tile, "lower_group", counting)
    x = torch.randn(2, 4, 16)
    compile_and_compare(blocks.model(3), x, rtol=1e-4, atol=1e-4)
    three, lowerings[:] = len(lowerings), []
    five = compile_and_compare(blocks.model(5), x, rtol=1e-4, atol=1e-4, dump=tmp_path / "dump")
    assert len(lowerings) == three < len([g for g in fusion_groups(five) if g["kernel"]])
    (tile_ir,) = (tmp_path / "dump").glob("*/tile.mlir")
    assert all(f"%v{i}_up_weight: tensor<32x16xf32>" in tile_ir.read_text() for i in range(5))
    monkeypatch.setenv(lower_to_tile.REUSE_CHECK_ENV, "1")
    compile_and_compare(blocks.model(5), x, rtol=1e-4, atol=1e-4)


def test_blocks_that_differ_in_a_constant_are_not_lowered_as_one(blocks):
    """The signature of a group holds its constants: a LayerNorm's eps (in the norm's map) differing
    between two blocks gives two kernels, each with its own eps, not one kernel twice."""
    model = blocks.model(2)
    model[1].norm.eps = 0.5
    x = torch.randn(2, 4, 16)
    reports = compile_and_compare(model, x, rtol=1e-4, atol=1e-4)
    rows = [g for g in fusion_groups(reports) if g["kernel"] and g["kind"] == "row"]
    assert len({g["triton_function"] for g in rows}) == len(rows) == 2, rows


def test_report_says_where_compile_time_went(blocks, tmp_path):
    dump = tmp_path / "dump"
    compiled = tilefuse.compile(blocks.model(2), dump=dump)
    with torch.no_grad():
        compiled(torch.randn(2, 4, 16))
    (report,) = compiled.tilefuse_reports
    seconds = report["compile_seconds"]
    stages = (
        "partition", "import", "canonicalize", "norm-prologue", "merge-projections", "split-reduction",
        "kmajor-f32-weights", "form-fusion-groups",
    )  # fmt: skip
    assert set(seconds["passes"]) == {*stages, "lower"}
    assert seconds["capture"] > 0 and seconds["codegen"] > 0 and seconds["triton_compile"] == 0  # interpreter
    parts = seconds["capture"] + sum(seconds["passes"].values()) + seconds["codegen"] + seconds["other"]
    assert all(v >= 0 for v in [*seconds["passes"].values(), seconds["other"]])
    assert parts == pytest.approx(seconds["total"], abs=1e-3)
    index = json.loads((dump / "index.json").read_text())["graphs"][0]
    assert index["compile_seconds"] == seconds and index["kernels"] == report["kernels"]
    assert f"kernels {report['kernels']['total']} ({report['kernels']['distinct']} distinct)" in (
        dump / "index.txt"
    ).read_text()
    kernel = next(g for g in fusion_groups([report]) if g["kernel"])
    text = (dump / report["dir"] / "kernels" / f"{kernel['kernel']}.py").read_text()
    assert text.startswith(f"# group kernel {kernel['kernel']}: Triton function {kernel['triton_function']}")


FAKE_COMPILE = """
import os, time

def compile(job):
    if job.function == "fails":
        raise RuntimeError("too much shared memory")
    if job.function == "crashes":
        os._exit(3)
    if job.function == "hangs":
        time.sleep(60)
    with open(os.environ["FAKE_COMPILE_LOG"], "a") as log:
        log.write(f"{job.function} {job.constexprs} {os.getpid()}\\n")
"""


@pytest.fixture
def fake_compile(tmp_path, monkeypatch) -> Path:
    """A compile function for the workers that logs each job (function, constexprs, pid)."""
    (tmp_path / "tf_fake_compile.py").write_text(FAKE_COMPILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    log = tmp_path / "compiled.log"
    monkeypatch.setenv("FAKE_COMPILE_LOG", str(log))
    return log


def _job(path: Path, function: str) -> precompile.CompileJob:
    return precompile.CompileJob(str(path), function, ((4, 8),), ("float32",), (("BLOCK", 64),), 4, 2)


def test_precompile_pool_survives_failing_crashing_and_hanging_jobs(fake_compile, tmp_path):
    source = tmp_path / "kernel.py"
    source.write_text("# a kernel\n")
    jobs = [_job(source, f"k{i}") for i in range(4)] + [_job(source, n) for n in ("fails", "crashes", "hangs")]
    result = precompile.precompile(
        jobs, "gpu", workers=3, timeout_s=3, marker_dir=tmp_path / "markers", compile_fn="tf_fake_compile:compile"
    )
    assert result.workers == 3 and result.error is None
    assert result.failed[4] == "RuntimeError: too much shared memory"
    assert "exited with code 3" in result.failed[5] and "timed out" in result.failed[6]
    compiled = [line.split()[0] for line in fake_compile.read_text().splitlines()]
    # a crash loses the rest of its worker's share, never the other workers' jobs
    assert set(compiled) <= {"k0", "k1", "k2", "k3"} and result.compiled == len(compiled) >= 2
    again = precompile.precompile(jobs[:4], "gpu", workers=3, marker_dir=tmp_path / "markers", min_jobs=1,
                                  compile_fn="tf_fake_compile:compile")  # fmt: skip
    assert again.already == len(compiled) and again.compiled == 4 - len(compiled)  # remembered ones skipped


def test_precompile_without_workers_or_with_a_broken_worker_never_raises(tmp_path):
    jobs = [_job(tmp_path / "missing.py", f"k{i}") for i in range(4)]
    assert precompile.precompile(jobs, "gpu", workers=0).workers == 0
    broken = precompile.precompile(jobs, "gpu", workers=2, compile_fn="no_such_module:compile", timeout_s=30)
    assert broken.compiled == 0 and sorted(broken.failed) == [0, 1, 2, 3]


def test_codegen_precompiles_each_distinct_kernel_once_on_a_gpu(blocks, fake_compile, monkeypatch, tmp_path):
    """With TILEFUSE_COMPILE_WORKERS, codegen hands each distinct (kernel, config) to the worker pool
    once (GPU faked, compile faked)."""
    monkeypatch.setattr(codegen, "_gpu_capability", lambda target: 90)
    monkeypatch.setenv(precompile.WORKERS_ENV, "2")  # worker processes instead of the default threads
    calls = []
    real = precompile.precompile

    def with_fake(jobs, target, **kwargs):
        calls.append((jobs, target))
        kwargs |= {"compile_fn": "tf_fake_compile:compile", "workers": 2, "min_jobs": 1}
        return real(jobs, target, **kwargs)

    monkeypatch.setattr(precompile, "precompile", with_fake)
    reports = compile_and_compare(blocks.model(3), torch.randn(2, 4, 16), rtol=1e-4, atol=1e-4)
    ((jobs, target),) = calls
    (report,) = reports
    assert "sm90" in target and len(jobs) == report["kernels"]["distinct"]
    functions = {g["triton_function"] for g in fusion_groups(reports) if g["kernel"]}
    assert {job.function for job in jobs} == functions and all(Path(job.path).is_file() for job in jobs)
    logged = fake_compile.read_text().splitlines()
    assert sorted(line.split()[0] for line in logged) == sorted(job.function for job in jobs)
    assert len({line.split()[-1] for line in logged}) == 2  # two worker processes
    assert report["compile_seconds"]["triton_compile"] > 0
    precompiled = report["kernels"]["precompiled"]
    assert precompiled["compiled"] == len(jobs) and precompiled["workers"] == 2 and not precompiled["failed"]


CACHE_HIT = """
import json, sys, time
import torch, tilefuse
import tf_blocks

model = tf_blocks.model(2)
x = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(1))
compiled = tilefuse.compile(model)
with torch.no_grad():
    out = compiled(x)
    expected = model(x)
(report,) = compiled.tilefuse_reports
print(json.dumps({"cache": report["cache"], "seconds": report["compile_seconds"],
                  "error": (out - expected).abs().max().item()}))
"""


def test_cache_hit_in_a_new_process_is_fast_and_matches_eager(blocks, tmp_path, monkeypatch):
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "cache"))
    artifact_cache._code_fingerprint.cache_clear()  # the sources as the new process will hash them
    compiled = tilefuse.compile(blocks.model(2))
    with torch.no_grad():
        compiled(torch.randn(2, 4, 16))
    assert compiled.tilefuse_reports[0]["cache"] == "miss"
    script = tmp_path / "hit.py"
    script.write_text(textwrap.dedent(CACHE_HIT))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    seconds = result["seconds"]
    assert result["cache"] == "hit" and result["error"] < 1e-4
    tilefuse_s = seconds["total"] - seconds["capture"]
    assert tilefuse_s < 0.5, seconds


def test_a_group_whose_kernel_failed_to_generate_runs_op_by_op_on_a_cache_hit_too(blocks, tmp_path, monkeypatch):
    """A kernel that does not verify (a lowering bug) leaves its group to the reference
    interpreter. The cache entry once kept the kernel's declaration: on a hit its empty body
    verified, and it ran as a kernel that wrote nothing (garbage out, no error)."""
    monkeypatch.setenv("TILEFUSE_CACHE_DIR", str(tmp_path / "cache"))
    real = codegen.verify

    def gemms_do_not_verify(op, *args, **kwargs):
        if isinstance(op, tile.KernelOp) and op.kind.data == "gemm" and len(op.body.block.ops) > 1:
            raise IRError("a gemm kernel that does not verify")
        return real(op, *args, **kwargs)

    monkeypatch.setattr(codegen, "verify", gemms_do_not_verify)
    x = torch.randn(2, 4, 16)
    for cache in ("miss", "hit"):
        torch._dynamo.reset()
        reports = compile_and_compare(blocks.model(1), x, rtol=1e-4, atol=1e-4)
        assert reports[0]["cache"] == cache
        gemms = [g for g in fusion_groups(reports) if g["kind"] == "gemm"]
        assert gemms and all(g["kernel"] is None and "does not verify" in g["not_a_kernel_because"] for g in gemms)


def test_threads_compile_every_job_in_this_process_and_never_raise():
    """The in-process pool: the first job in the calling thread (it initializes Triton), the rest
    on `threads` others; a failing job is recorded, the others still compile."""
    jobs = [_job(Path("kernel.py"), f"k{i}") for i in range(6)] + [_job(Path("kernel.py"), "fails")]
    seen: list[tuple[str, object, int]] = []

    def compile_fn(job, function):
        if job.function == "fails":
            raise RuntimeError("too much shared memory")
        time.sleep(0.05)  # long enough for the pool to use more than one thread
        seen.append((job.function, function, threading.get_ident()))

    functions = [f"function {i}" for i in range(len(jobs))]
    result = precompile.precompile_in_threads(jobs, functions, threads=3, compile_fn=compile_fn)
    assert result.compiled == 6 and result.failed == {6: "RuntimeError: too much shared memory"}
    assert {(name, fn) for name, fn, _ in seen} == {(f"k{i}", f"function {i}") for i in range(6)}
    assert seen[0][2] == threading.get_ident() and len({t for *_, t in seen}) > 1
    assert result.workers == 3 and result.seconds > 0


def test_threads_compile_the_quickest_job_first_then_the_slowest():
    """The job compiled alone while Triton initializes is the cheapest (a pointwise kernel, not a
    GEMM); the pool then takes the GEMMs and attention first, largest tiles first, so no thread
    starts a long compile last. Failures keep their callers' indices."""

    def job(function: str, tile: dict, stages: int = 1, warps: int = 4) -> precompile.CompileJob:
        return precompile.CompileJob(
            "kernel.py", function, ((4, 8),), ("float32",), tuple(tile.items()), warps, stages
        )

    jobs = [
        job("gemm_a", {"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, stages=3),
        job("row_b", {"BLOCK_R": 1, "BLOCK_C": 1024}, warps=8),
        job("pointwise_c", {"BLOCK": 1024}),
        job("gemm_d", {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, stages=3, warps=8),
        job("pointwise_e", {"BLOCK": 256}),
        job("attention_f", {"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_D": 64, "BLOCK_DV": 64}, stages=3),
    ]
    assert precompile.compile_order(jobs) == [4, 3, 5, 0, 1, 2]
    assert precompile.compile_order([]) == []
    order: list[str] = []

    def compile_fn(job, function):
        order.append(job.function)
        if job.function == "row_b":
            raise RuntimeError("out of registers")

    result = precompile.precompile_in_threads(jobs, [None] * len(jobs), threads=1, compile_fn=compile_fn)
    assert order == ["pointwise_e", "gemm_d", "attention_f", "gemm_a", "row_b", "pointwise_c"]
    assert result.compiled == 5 and result.failed == {1: "RuntimeError: out of registers"}


def test_codegen_compiles_in_threads_when_asked(blocks, monkeypatch):
    """TILEFUSE_COMPILE_THREADS: codegen hands each distinct kernel and the function its launches
    call to the in-process pool (GPU faked, named as a GPU's target names it; compile faked); the
    report says so."""
    from tilefuse.compiler import backend

    real_target = backend._target
    monkeypatch.setattr(
        backend, "_target", lambda *a, **k: dataclasses.replace(real_target(*a, **k), device="NVIDIA H200")
    )
    monkeypatch.setattr(codegen, "_gpu_capability", lambda target: 90)
    monkeypatch.setenv(precompile.THREADS_ENV, "2")
    compiled = []
    real = precompile.precompile_in_threads
    monkeypatch.setattr(
        precompile, "precompile_in_threads",
        lambda jobs, functions, threads, device=None: real(
            jobs, functions, threads, compile_fn=lambda job, fn: compiled.append((job.function, fn.fn.__name__))
        ),
    )  # fmt: skip
    reports = compile_and_compare(blocks.model(3), torch.randn(2, 4, 16), rtol=1e-4, atol=1e-4)
    (report,) = reports
    assert len(compiled) == report["kernels"]["distinct"]
    assert all(name == fn for name, fn in compiled)  # each job with its own kernel's function
    assert report["kernels"]["precompiled"]["workers"] == 2 and not report["kernels"]["precompiled"]["failed"]


def test_threads_are_the_default_and_workers_or_zero_turn_them_off(monkeypatch):
    monkeypatch.delenv(precompile.THREADS_ENV, raising=False)
    monkeypatch.delenv(precompile.WORKERS_ENV, raising=False)
    assert 1 <= precompile.thread_count() <= precompile.DEFAULT_THREADS
    monkeypatch.setenv(precompile.WORKERS_ENV, "4")
    assert precompile.thread_count() == 0
    monkeypatch.setenv(precompile.THREADS_ENV, "0")
    assert precompile.thread_count() == 0
    monkeypatch.setenv(precompile.THREADS_ENV, "3")
    assert precompile.thread_count() == 3


def test_a_warm_up_in_this_process_loads_the_binary_and_passes_the_launch_strides():
    """In the compile threads a warm-up also loads its binary and builds its launcher (Triton's C
    launcher per signature, built at first launch otherwise), and passes the strides the launch will:
    a padded output's, not a packed tensor's."""
    calls: dict = {}

    class Binary:
        def _init_handles(self):
            calls["loaded"] = True

    class Function:
        def warmup(self, *args, grid, **kwargs):
            calls["args"] = args
            return Binary()

    job = precompile.CompileJob(
        "unused.py", "k", ((4, 300), (4, 300)), ("float32", "float32"), (("BLOCK", 64),), 4, 2,
        strides=((300, 1), (320, 1)),
    )  # fmt: skip
    precompile.warm_up(job, Function())
    assert calls["loaded"]
    assert calls["args"] == (torch.float32, 300, 1, torch.float32, 320, 1)
    assert precompile.CompileJob.from_json(json.loads(json.dumps(dataclasses.asdict(job)))) == job
