"""Pipeline stages from canonical `ein` to launchable kernels.

    fuse (norm-prologue, form-fusion-groups) → lower (lower-to-tile) → codegen (Triton source, loaded)

Each works per partition function; a group that cannot be lowered or whose
kernel fails to generate runs op by op on the reference interpreter, with the
reason recorded in its partition's summary (`groups[].not_a_kernel_because`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import logging
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from xdsl.dialects.builtin import StringAttr

from ..autotune.buckets import (
    REPRESENTATIVE,
    all_buckets,
    bucket_key,
    bucketed,
    representative_sizes,
    serving_bucket,
)
from ..autotune.heuristics import KernelConfig, config_override, default_config, interpreter_config
from ..autotune.model_defaults import model_config
from ..autotune.tasks import make_task, register_sized, tuned_record
from ..ir import tile
from ..ir.dtypes import shape_of, to_torch_dtype
from ..ir.module import IRError, make_context, verify, verify_between_passes
from ..passes import FormFusionGroups, KMajorF32Weights, MergeProjections, NormPrologue, SplitReduction
from ..passes.lower_to_tile import lower_function
from ..passes.merge_projections import MERGE_PROJECTIONS_ENV, merge_projections_on
from ..passes.split_reduction import SPLIT_K_ENV
from .artifact_cache import cache_dir
from .runtime import BucketConfig, CompiledKernel

if TYPE_CHECKING:
    from ..autotune.records import TuningTask
    from ..backends.triton import TritonKernel, TritonOptions
    from .driver import GraphArtifact

log = logging.getLogger("tilefuse")


@dataclass(frozen=True)
class Target:
    """Where the kernels run: `interpret` runs Triton's interpreter on CPU tensors."""

    interpret: bool
    allow_tf32: bool
    # the GPU's model name (`torch.cuda.get_device_name`), which keys tuned records; not a torch device
    device: str = "cpu"
    backend: str = "triton"  # who writes pointwise, reduction and row kernels (resolve_backend)

    def triton_options(self) -> TritonOptions:
        from ..backends.triton import TritonOptions

        return TritonOptions.for_interpreter() if self.interpret else TritonOptions()


BACKEND_ENV = "TILEFUSE_BACKEND"
BACKENDS = ("triton", "cuda", "auto")


def resolve_backend(option: str | None) -> str:
    """The kernel backend: `option`, else `$TILEFUSE_BACKEND`, else "triton". "cuda" writes the kinds
    the CUDA C++ emitter covers (pointwise, reduction, row) as CUDA; "auto" builds both and lets
    the per-group selection measure them (`group_selection.py`); GEMMs and attention are Triton's."""
    value = option or os.environ.get(BACKEND_ENV) or "triton"
    if value not in BACKENDS:
        where = f"the backend option or {BACKEND_ENV}"
        raise ValueError(f"tilefuse: backend must be one of {BACKENDS}, not {value!r} ({where})")
    return value


NORM_PROLOGUE_ENV = "TILEFUSE_NORM_PROLOGUE"  # "0": norms stay row kernels before their GEMMs
SPLIT_REDUCTION_ENV = "TILEFUSE_SPLIT_REDUCTION"  # "0": no split-reduction pass (GEMM rows, columns, full)


def fusion_options() -> str:
    """The fusion and partitioning settings read from the environment, for the compile-cache key
    (the key hashes the captured graph, before it is partitioned)."""
    from .partition import SYMBOLIC_GEMM_ENV, SYMBOLIC_KERNELS_ENV

    envs = {NORM_PROLOGUE_ENV: "1", MERGE_PROJECTIONS_ENV: "1", SPLIT_REDUCTION_ENV: "1", SPLIT_K_ENV: "auto"}
    envs |= {SYMBOLIC_KERNELS_ENV: "1", SYMBOLIC_GEMM_ENV: "0"}
    return ",".join(f"{env}={os.environ.get(env, default)}" for env, default in envs.items())


def stage_norm_prologue(art: GraphArtifact) -> GraphArtifact:
    if os.environ.get(NORM_PROLOGUE_ENV, "1") != "0":
        NormPrologue().apply(make_context(), art.module)
        verify_between_passes(art.module, "after norm-prologue")
    return art


def merge_projections_skipped(art: GraphArtifact) -> str | None:
    """Why merge-projections does not run on this graph, or None where it does: not with
    `TILEFUSE_MERGE_PROJECTIONS=0`, and not on a training graph's forward, whose parameters change
    every step."""
    if not merge_projections_on():
        return f"{MERGE_PROJECTIONS_ENV}=0"
    return "a training graph's forward" if art.trained is not None else None


def stage_merge_projections(art: GraphArtifact) -> GraphArtifact:
    """Sibling projections of one input as one GEMM (`passes/merge_projections.py`)."""
    if merge_projections_skipped(art) is None:
        MergeProjections().apply(make_context(), art.module)
        verify_between_passes(art.module, "after merge-projections")
    return art


def stage_split_reduction(art: GraphArtifact) -> GraphArtifact:
    if os.environ.get(SPLIT_REDUCTION_ENV, "1") != "0":
        SplitReduction().apply(make_context(), art.module)
        verify_between_passes(art.module, "after split-reduction")
    return art


F32_WEIGHT_LAYOUT_ENV = "TILEFUSE_F32_WEIGHT_LAYOUT"  # auto | kmajor | off (passes/operand_layout.py)


def kmajor_f32_weights(target: Target) -> bool:
    """Whether f32 GEMMs read K-major copies of their [K, N] weights: `$TILEFUSE_F32_WEIGHT_LAYOUT`;
    "auto" (default): where f32 dots run on tensor cores (a GPU, TF32 or 3xTF32; not exact FMA math)."""
    setting = os.environ.get(F32_WEIGHT_LAYOUT_ENV, "auto")
    if setting not in ("auto", "kmajor", "off"):
        raise ValueError(f"tilefuse: {F32_WEIGHT_LAYOUT_ENV} must be auto, kmajor or off, not {setting!r}")
    if setting != "auto":
        return setting == "kmajor"
    return not target.interpret and (target.allow_tf32 or target.triton_options().exact_f32_dots != "ieee")


def stage_operand_layout(art: GraphArtifact) -> GraphArtifact:
    if kmajor_f32_weights(art.target):
        KMajorF32Weights().apply(make_context(), art.module)
        verify_between_passes(art.module, "after kmajor-f32-weights")
    return art


def stage_fuse(art: GraphArtifact) -> GraphArtifact:
    FormFusionGroups().apply(make_context(), art.module)
    verify(art.module, "after form-fusion-groups")
    return art


def stage_lower(art: GraphArtifact) -> GraphArtifact:
    # kernels are verified in codegen, one of each structurally identical set (see shared_source)
    for p in art.compiled_partitions():
        if p.name not in art.restored:
            p.lowered = lower_function(p.function, art.target.allow_tf32, check=False, hints=p.hints)
    return art


def shared_source(kernel: tile.KernelOp, options: TritonOptions, seen: dict[str, str]) -> str:
    """Triton source of `kernel` named by a hash of its body, not by its group or its operands.

    Structurally identical kernels (same `tile` IR, shapes, dtypes, options), e.g. one
    per layer of a model, so get identical source: loaded once, compiled once by
    Triton, tuned once. The kernel's own name and its arguments' names (parameter
    paths such as `h_0_attn_bias`) are left out of the source; the dump shows them.
    `seen` maps each kernel written under a neutral name to its final source, so a
    repeated kernel is written once more only the first time, and verified then: the
    neutral source spells out every op, shape and dtype of the kernel, so its twins
    share the verdict. Raises IRError if the kernel does not verify.
    """
    from ..backends.triton import emit

    group_name = kernel.sym_name.data
    with renamed(kernel, NEUTRAL_NAME, unnamed_args=True):
        neutral = emit(kernel, options)
        if neutral not in seen:
            verify(kernel, f"tile kernel {group_name}")
            digest = hashlib.sha256(neutral.encode()).hexdigest()[:16]
            seen[neutral] = renamed_source(neutral, f"{kernel.kind.data}_{digest}")
    return seen[neutral]


# the function name a kernel is first written under (an identifier no emitted local takes: the
# emitter reserves its function's name)
NEUTRAL_NAME = "kernel"


def renamed_source(neutral: str, name: str) -> str:
    """The source `emit` writes for a kernel named `name`, from the one it wrote under NEUTRAL_NAME:
    the name occurs in the header's first line and the `def` line only, so those two are rewritten
    (writing the kernel again cost DenseNet-201's 310 kernels ~4 s of its compile)."""
    from ..backends.triton.emit import python_identifier

    head, _, rest = neutral.partition("\n")
    head = head.replace(f'"{NEUTRAL_NAME}"', f'"{name}"', 1)
    rest = rest.replace(f"\ndef {NEUTRAL_NAME}(", f"\ndef {python_identifier(name)}(", 1)
    return f"{head}\n{rest}"


@contextlib.contextmanager
def renamed(kernel: tile.KernelOp, name: str, unnamed_args: bool = False) -> Iterator[None]:
    """`kernel` named `name` (and its arguments unnamed, if asked) while the block runs: how a
    kernel is written under a shared name. Its names are restored afterwards, whatever happened."""
    group_name, args = kernel.sym_name, kernel.body.block.args
    hints = [a.name_hint for a in args]
    try:
        if unnamed_args:
            for a in args:
                a.name_hint = None
        kernel.sym_name = StringAttr(name)
        yield
    finally:
        kernel.sym_name = group_name
        for a, hint in zip(args, hints):
            a.name_hint = hint


def named_source(kernel: tile.KernelOp, function: str, options: TritonOptions) -> str:
    """`kernel` written as its shared source's function `function`, but with its operands' names.

    For reading (the dump): the same code as `shared_source`'s, the arguments named
    after what they hold (`h_0_attn_bias_ptr`) rather than `arg6_ptr`.
    """
    from ..backends.triton import emit

    with renamed(kernel, function):
        return emit(kernel, options)


_launchers: dict[str, TritonKernel] = {}  # source -> its loaded kernel, for the process
_launchers_lock = threading.Lock()


def load_shared(source: str, function: str) -> TritonKernel:
    """The launcher of `source`, loaded once per process: every group with this source shares it."""
    from ..backends.triton import load

    with _launchers_lock:
        launcher = _launchers.get(source)
    if launcher is None:
        launcher = load(source, function)
        with _launchers_lock:
            launcher = _launchers.setdefault(source, launcher)
    return launcher


def stage_codegen(art: GraphArtifact) -> GraphArtifact:
    # Triton is imported here, not at `import tilefuse`: capture and IR work without loading it.
    options = art.target.triton_options()
    written: dict[str, str] = {}
    twins: dict[int, str] = {}  # id of a lowered group -> its source, for the groups whose kernel copies it
    cuda_jobs: list[tuple[list, int, tile.KernelOp | None, str]] = []
    for p in art.compiled_partitions():
        for g in p.lowered:
            if g.kernel is None:
                continue
            name = g.kernel.sym_name.data
            try:
                cached = art.cached.sources.get(name) if art.cached else None
                twin = twins.get(id(g.twin)) if g.twin is not None else None
                source = cached or twin or shared_source(g.kernel, options, written)
                twins[id(g)] = source
                function = triton_function_name(source)
                launcher = load_shared(source, function)
            except IRError as e:  # a lowering bug: the group runs op by op
                g.error = f"lowering failed: {e}"
                continue
            except Exception as e:  # one kernel's codegen bug must not stop the graph
                g.error = f"Triton codegen failed: {type(e).__name__}: {e}"
                continue
            art.sources[name] = source
            art.functions[name] = function
            kind = g.group.kind
            epilogue_ops = sum(1 for op in g.group.ops if op.name != "ein.contract")
            shapes, dtypes = launcher.shapes, launcher.dtypes
            task = make_task(function, kind, g.problem, source, shapes, dtypes, epilogue_ops)
            config, origin, tuned_ms = choose_config(task, art.target)
            kernel = CompiledKernel(g, launcher, config, task.key, origin, tuned_ms)
            symbols = getattr(launcher, "symbols", ())
            if g.symbolic_problem is not None and bucketed(symbols):
                sized = functools.partial(
                    make_task, function, kind, g.symbolic_problem, source, shapes, dtypes, epilogue_ops
                )
                register_sized(task.key, kind, symbols, sized)  # a tuning job's tasks at its sizes
                try:
                    kernel = with_buckets(kernel, sized, symbols, p.hints or {}, art.target)
                except Exception as e:  # a kernel keeps its one config rather than the graph failing
                    log.warning(
                        "tilefuse: %s keeps one config for every size: %s: %s", name, type(e).__name__, e
                    )
            if art.target.backend != "triton":
                body = kernels_with_bodies(art).get(name) if p.name in art.restored else g.kernel
                cuda_jobs.append((p.kernels, len(p.kernels), body, function))
            p.kernels.append(kernel)
    _add_cuda_kernels(cuda_jobs, art.target)
    art.precompiled = precompile_kernels(art)
    return art


def with_buckets(
    kernel: CompiledKernel, sized: Callable[[dict[str, int]], TuningTask], symbols: tuple[str, ...],
    hints: dict[str, int], target: Target,
) -> CompiledKernel:  # fmt: skip
    """`kernel` (of symbolic sizes `symbols`) with a config per size bucket (`autotune.buckets`):
    each bucket's task at its representative sizes, its tuned record or default; a bucket served by
    another (`serving_bucket`) takes that one's. Its `config` (the report's) becomes the config of
    the bucket of the call that compiled it (`hints`)."""
    kind, chosen = kernel.lowered.group.kind, {}
    for serving in {serving_bucket(key, kind) for key in all_buckets(symbols)}:  # each chosen once
        task = sized(representative_sizes(symbols, serving))
        chosen[serving] = BucketConfig(*choose_config(task, target), task.key)
    buckets = {key: chosen[serving_bucket(key, kind)] for key in all_buckets(symbols)}
    first = buckets[bucket_key(symbols, {s: hints.get(s, REPRESENTATIVE[-1]) for s in symbols})]
    return dataclasses.replace(
        kernel,
        buckets=buckets,
        config=first.config,
        config_source=first.config_source,
        tuned_ms=first.tuned_ms,
    )


def choose_config(task: TuningTask, target: Target) -> tuple[KernelConfig, str, float | None]:
    """A kernel's config, where it came from ("tuned", "model", "override", "default") and its tuned
    median: an explicit TILEFUSE_KERNEL_CONFIG (an experiment: it wins), else the tuning database's best for
    this device and versions, else the shipped cost model's pick (TILEFUSE_MODEL_CONFIGS=1), else
    the heuristic (under the interpreter, widened to fewer programs)."""
    kind, problem = task.kind, task.problem
    override = config_override(kind)
    tuned = None if override else tuned_record(task, target.device)
    modelled = None if tuned or override else model_config(task)
    config = tuned.config if tuned else modelled or default_config(kind, problem)
    if target.interpret and not tuned and not override:
        config = interpreter_config(kind, config, problem)
    origin = "tuned" if tuned else "model" if modelled else "override" if override else "default"
    return config, origin, tuned.median_ms if tuned else None


CUDA_BUILD_THREADS = 8  # nvcc runs as a subprocess: builds on threads overlap fully


def _add_cuda_kernels(jobs: list[tuple[list, int, tile.KernelOp | None, str]], target: Target) -> None:
    """Each job's kernel (`kernels[at]`) with its CUDA C++ kernel (`with_cuda_kernel`). Sources are
    written here first, one after another (writing renames the kernel's IR in place); then the
    kernels with a source are built and loaded on threads: a model's kernels compile in parallel
    (one at a time, Llama's took 65 s on the H200), identical ones once (`_cuda_kernel`)."""
    from ..backends.cuda import SUPPORTED_KINDS

    written: list[tuple[list, int, tile.KernelOp, str, str]] = []
    for kernels, at, body, function in jobs:
        kernel = kernels[at]
        source = None
        if body is not None and kernel.lowered.group.kind in SUPPORTED_KINDS:
            config = kernel.config
            with contextlib.suppress(Exception):  # with_cuda_kernel writes it again and says why
                source = shared_cuda_source(body, function, dict(config.params), config.num_warps)
        if source is None:  # not covered, or not written: says why at once, builds nothing
            kernels[at] = with_cuda_kernel(kernel, body, function, target)
        else:
            written.append((kernels, at, body, function, source))

    def add(job: tuple[list, int, tile.KernelOp, str, str]) -> None:
        kernels, at, body, function, source = job
        kernels[at] = with_cuda_kernel(kernels[at], body, function, target, source)

    if written:
        with ThreadPoolExecutor(max_workers=min(CUDA_BUILD_THREADS, len(written))) as pool:
            list(pool.map(add, written))


def kernels_with_bodies(art: GraphArtifact) -> dict[str, tile.KernelOp]:
    """Every kernel of the graph with its body, by name; a cache hit's (the cache keeps kernels'
    declarations only) are lowered again: for the dumps, and for the CUDA C++ backend."""
    if art.dumped_kernels is None:
        art.dumped_kernels = {}
        for p in art.compiled_partitions():
            lowered = p.lowered
            if p.name in art.restored:
                lowered = lower_function(p.function, art.target.allow_tf32, check=False)
            kernels = [g.kernel for g in lowered if g.kernel is not None]
            art.dumped_kernels.update((k.sym_name.data, k) for k in kernels)
    return art.dumped_kernels


_cuda_kernels: dict[str, Future] = {}  # CUDA source -> its loaded kernel (or its error), for the process
_cuda_lock = threading.Lock()


def _cuda_kernel(source: str, function: str, config: object, target: Target) -> object:
    """The loaded kernel of `source`, built once per process: the first thread to ask builds it,
    others with the same source wait for that build (several layers' identical kernels), and
    different sources build at the same time. A failure reaches every thread waiting for that
    build; a later compile tries again."""
    with _cuda_lock:
        pending = _cuda_kernels.get(source)
        building = pending is None
        if building:
            pending = _cuda_kernels[source] = Future()
    if building:
        try:
            pending.set_result(_load_cuda(source, function, config, target))
        except Exception as e:
            pending.set_exception(e)
            with _cuda_lock:
                del _cuda_kernels[source]
    return pending.result()


def with_cuda_kernel(
    kernel: CompiledKernel, body: tile.KernelOp | None, function: str, target: Target,
    source: str | None = None,
) -> CompiledKernel:  # fmt: skip
    """`kernel` with the CUDA C++ backend's kernel for its group: instead of the Triton one for
    backend "cuda", as its `alternative` for "auto". A group the CUDA emitter does not cover, or
    whose source does not build, keeps its Triton kernel and `cuda_note` says why. On the GPU the
    source is built with nvcc (cached on disk by source hash); under the interpreter (CPU) it runs
    on CPU threads (`backends/cuda/testing.py`). `source`: its CUDA C++, if already written (then
    nothing is written here, and threads may call this for different kernels at once)."""
    from ..backends.cuda import SUPPORTED_KINDS

    g = kernel.lowered
    if g.group.kind not in SUPPORTED_KINDS:
        covered = ", ".join(SUPPORTED_KINDS)
        kernel.cuda_note = f"{g.group.kind} kernels are Triton's (the CUDA C++ backend writes {covered})"
        return kernel
    config = kernel.config
    try:
        if body is None:
            raise ValueError(f"no body for {g.group.name}'s kernel")
        source = source or shared_cuda_source(body, function, dict(config.params), config.num_warps)
        launcher = _cuda_kernel(source, function, config, target)
    except Exception as e:  # the CUDA backend's gap is not the model's problem: Triton runs it
        kernel.cuda_note = f"stays on Triton: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
        return kernel
    cuda = dataclasses.replace(kernel, launcher=launcher, backend="cuda")
    if target.backend == "cuda":
        return cuda
    kernel.alternative = cuda
    return kernel


def shared_cuda_source(kernel: tile.KernelOp, function: str, config: dict[str, int], num_warps: int) -> str:
    """CUDA C++ of `kernel` named `function` (its Triton function's name, a hash of its body), its
    arguments unnamed: identical kernels (one per layer) share one source, built once."""
    from ..backends.cuda import emit_cuda

    with renamed(kernel, function, unnamed_args=True):
        return emit_cuda(kernel, config, num_warps)


def cuda_on_cpu_dir() -> Path:
    """Where CUDA C++ kernels built for the CPU (tests) go: beside the artifact cache, or with the
    cache off in the temp folder as `tilefuse-cuda-on-cpu`; a folder named `tilefuse` there made a
    script run from it import that folder, not the package."""
    root = cache_dir()
    return root.parent / "cuda-on-cpu" if root else Path(tempfile.gettempdir()) / "tilefuse-cuda-on-cpu"


def _load_cuda(source: str, function: str, config: object, target: Target) -> object:
    from ..backends.cuda import CudaEmitError, CudaKernel, load_cuda_kernel

    if not target.interpret:
        return load_cuda_kernel(source, function, dict(config.params), config.num_warps)
    from ..backends.cuda.cutlass import is_cutlass_source
    from ..backends.cuda.testing import build_on_cpu

    if is_cutlass_source(source):  # TMA and WGMMA have no CPU emulation
        raise CudaEmitError("a CUTLASS GEMM runs on a Hopper GPU only")

    workdir = cuda_on_cpu_dir()
    library = build_on_cpu([source], workdir)
    return CudaKernel.from_library(library, source, function, dict(config.params), config.num_warps)


def precompile_kernels(art: GraphArtifact) -> dict | None:
    """Compile the graph's distinct kernels before their first launch (GPU only): in this process's
    threads (`$TILEFUSE_COMPILE_THREADS`, 8 by default: 1.6x faster cold first calls on the H200) or
    in worker processes (`$TILEFUSE_COMPILE_WORKERS`, off unless set: measured slower).

    Returns what it did, for the report (None under Triton's interpreter, which compiles
    nothing). One job per distinct source and configuration; a kernel that does not
    compile here compiles at its first launch, as it would anyway.
    """
    capability = _gpu_capability(art.target)
    if capability is None:
        return None
    import torch
    import triton

    from ..backends.triton import precompile

    hopper, jobs, functions = capability >= 90, {}, {}
    for p in art.compiled_partitions():
        for k in p.kernels:
            if k.backend != "triton":  # CUDA C++ kernels were built when they were loaded
                continue
            if getattr(k.launcher, "symbols", ()):  # compiled at the first launch, for its sizes' kind
                continue
            key = (k.launcher.path, k.config.key())
            if key not in jobs:
                c = k.config
                strides = _launch_strides(k)
                jobs[key] = precompile.compile_job(
                    k.launcher, c.params, c.num_warps, c.num_stages, hopper, strides
                )
                functions[key] = k.launcher.function
    # the markers stand for binaries in this Triton cache: another cache folder compiles again
    triton_cache = getattr(getattr(triton, "knobs", None), "cache", None)
    where = getattr(triton_cache, "dir", None) or os.environ.get("TRITON_CACHE_DIR", "")
    versions = f"torch {torch.__version__},triton {triton.__version__}"
    target = f"{art.target.device},sm{capability},{versions},{where}"
    cache = cache_dir()  # markers of what compiled live beside the compile cache, and go with it
    markers = cache / "precompiled" if cache else None
    job_list = list(jobs.values())
    threads = precompile.thread_count()
    if threads:
        # on the current device (`Target.device` names the GPU's model, not a torch device)
        done = precompile.precompile_in_threads(job_list, list(functions.values()), threads)
    else:
        done = precompile.precompile(job_list, target, marker_dir=markers)
    failed = {job_list[i].function: why for i, why in done.failed.items()}
    return {
        "jobs": done.jobs, "compiled": done.compiled, "already_compiled": done.already,
        "workers": done.workers, "failed": failed, "error": done.error, "seconds": round(done.seconds, 4),
    }  # fmt: skip


def _launch_strides(kernel: object) -> list[tuple[int, ...]] | None:
    """The strides `kernel`'s launch will pass, per tensor (its inputs row-major, its outputs as the
    program allocates them: `program.output_strides`); None where all are row-major."""
    import torch

    from .program import output_strides

    lowered, packed, strides = kernel.lowered, [], []
    for i, value in enumerate([*lowered.inputs, *lowered.outputs]):
        shape = tuple(shape_of(value.type))
        dtype = to_torch_dtype(value.type.get_element_type())
        packed.append(torch.empty(shape, device="meta").stride())
        output = i >= len(lowered.inputs)
        strides.append(output_strides(kernel, shape, dtype) if output else packed[-1])
    return strides if strides != packed else None


def _gpu_capability(target: Target) -> int | None:
    """The GPU's compute capability as one number (90: Hopper), or None when kernels are interpreted."""
    import torch

    if target.interpret or not torch.cuda.is_available():
        return None
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


_FUNCTION = re.compile(r"^@triton\.jit\ndef (\w+)\(", re.MULTILINE)


def triton_function_name(source: str) -> str:
    """The name of the `@triton.jit` function that emitted source defines."""
    found = _FUNCTION.search(source)
    if found is None:
        raise ValueError("the source defines no @triton.jit function")
    return found.group(1)
