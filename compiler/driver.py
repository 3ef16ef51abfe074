"""The compile pipeline for one aten graph, as an ordered list of named stages.

    partition → import (ein, verified) → canonicalize → fuse → lower (tile) → codegen (Triton)
    → runtime

Each stage takes and returns the same `GraphArtifact`, adding what it
produces; after each, the stage's dump (if any) is written. A stage that
fails on one partition leaves that partition to PyTorch and records why;
a failure of the whole pipeline leaves the whole graph to PyTorch. Nothing
here raises into the user's model.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
import traceback
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.fx import GraphModule
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Block, Region

from ..autotune.buckets import bucket_label
from ..backends.triton.decode_attention import SOURCE as DECODE_SOURCE
from ..ir import tile
from ..ir.dtypes import size_of
from ..ir.module import IRError, make_context, print_module, verify, verify_between_passes
from ..passes import Canonicalize
from ..passes.lower_to_tile import LoweredGroup
from .artifact_cache import (
    CacheEntry,
    CacheFormatError,
    cache_dir,
    graph_key,
    load_entry,
    pack,
    store_entry,
    unpack,
)
from .causal_masks import BufferGuard, fold_causal_masks, fold_causal_selects
from .codegen import (
    Target,
    fusion_options,
    kernels_with_bodies,
    kmajor_f32_weights,
    merge_projections_skipped,
    named_source,
    stage_codegen,
    stage_fuse,
    stage_lower,
    stage_merge_projections,
    stage_norm_prologue,
    stage_operand_layout,
    stage_split_reduction,
)
from .complex_pairs import complex_as_pairs
from .conv_layout import channels_last_convolutions, conv_layout_enabled
from .decode_attention import use_decode_kernels
from .depthwise_conv import depthwise_enabled, depthwise_stencils
from .direct_ops import captured_target
from .dump import GraphDump
from .duplicate_ops import merge_duplicate_ops
from .fx_import import ImportFailure, InputInfo, import_graph
from .grouped_queries import group_decode_queries
from .lowering_table import DYNAMIC_SHAPE
from .partition import Fallback, find_fallbacks, partition_graph, partition_symbolic, symbolic_reasons
from .program import Trained
from .runtime import CompiledKernel, KernelPlan, direct_forward, graph_device
from .symbolic import DUMP_FILE as DYNAMIC_DUMP
from .symbolic import dynamic_dump, has_symbolic_nodes, unbound_sizes

log = logging.getLogger("tilefuse")


@dataclass
class Partition:
    """One compiled region of the graph."""

    name: str
    submodule: GraphModule
    inputs: list[InputInfo]
    function: func.FuncOp | None = None
    executor: str = "pytorch"
    lowered: list[LoweredGroup] = field(default_factory=list)
    kernels: list[CompiledKernel] = field(default_factory=list)
    # a partition of symbolic sizes: each size symbol's value at the call that compiled the graph
    # (Dynamo's hints), for its kernels' default configs; None for a static partition
    hints: dict[str, int] | None = None

    def summary(self) -> dict:
        aten_ops = [str(captured_target(n)) for n in self.submodule.graph.nodes if n.op == "call_function"]
        ein_ops = Counter(op.name for op in self.function.body.ops) if self.function else {}
        ein_ops.pop("func.return", None)
        kernels = {k.lowered.group.name: k for k in self.kernels}
        return {
            "name": self.name,
            "function": f"@{self.name}" if self.function else None,
            "executor": self.executor,
            "aten_ops": aten_ops,
            "ein_ops": dict(sorted(ein_ops.items())),
            "groups": [_group_entry(g, kernels.get(g.group.name)) for g in self.lowered],
        }


def _group_entry(g: LoweredGroup, kernel: CompiledKernel | None) -> dict:
    """A fusion group in the summary: what it fuses, its kernel, the Triton function and config it runs."""
    return {
        "name": g.group.name,
        "kind": g.group.kind,
        "ops": [op.name for op in g.group.ops],
        "kernel": g.kernel.sym_name.data if g.kernel is not None and not g.error else None,
        "triton_function": getattr(kernel.launcher, "name", None) if kernel else None,
        "backend": kernel.backend if kernel else None,
        "cuda": (kernel.cuda_note or ("built: measured against Triton" if kernel.alternative else None))
        if kernel
        else None,
        "config": kernel.config.key() if kernel else None,
        "config_source": kernel.config_source if kernel else None,
        "task_key": kernel.task_key if kernel else None,
        "tuned_ms": kernel.tuned_ms if kernel else None,
        "not_a_kernel_because": g.error,
        **({"config_buckets": _buckets_entry(kernel)} if kernel and kernel.buckets else {}),
    }


def _buckets_entry(kernel: CompiledKernel) -> dict[str, str]:
    """A symbolic kernel's config per size bucket: "s0<=16" -> "BLOCK=256,w=4,s=1 (default)"."""
    symbols, buckets = kernel.launcher.symbols, kernel.buckets
    return {bucket_label(symbols, key): f"{b.config.key()} ({b.config_source})" for key, b in buckets.items()}


@dataclass
class GraphArtifact:
    """Everything the pipeline knows about one graph; stages fill it in."""

    name: str
    aten: GraphModule
    inputs: list[InputInfo]
    partitioned: GraphModule | None = None
    partitions: list[Partition] = field(default_factory=list)
    fallbacks: list[Fallback] = field(default_factory=list)
    module: ModuleOp | None = None
    target: Target = Target(interpret=True, allow_tf32=False)
    sources: dict[str, str] = field(default_factory=dict)  # kernel (group) name -> its Triton source
    functions: dict[str, str] = field(default_factory=dict)  # kernel (group) name -> its Triton function
    cached: CacheEntry | None = None
    restored: dict[str, tuple[func.FuncOp, list[LoweredGroup]]] = field(default_factory=dict)  # on a hit
    dumped_kernels: dict[str, tile.KernelOp] | None = None  # for the dump: every kernel, with its body
    seconds: dict[str, float] = field(default_factory=dict)  # wall time of each stage
    precompiled: dict | None = None  # what codegen compiled ahead of the first launch (GPU), and how long
    dump: GraphDump | None = None
    runners: dict[str, KernelPlan] = field(default_factory=dict)
    trained: Trained | None = None  # a training graph's forward: set once its backward ran (program.Trained)

    def compiled_partitions(self) -> list[Partition]:
        return [p for p in self.partitions if p.function is not None]


def stage_partition(art: GraphArtifact) -> GraphArtifact:
    art.fallbacks = find_fallbacks(art.aten)
    dynamic = has_symbolic_nodes(art.aten)
    why_not = symbolic_reasons(art.aten) if dynamic else {}
    art.partitioned, names = partition_graph(art.aten)
    symbolic: list[str] = []
    if dynamic:  # a second round: kernels that take their sizes as arguments
        art.partitioned, symbolic = partition_symbolic(art.partitioned)
        absorbed = {
            n.name for name in symbolic for n in getattr(art.partitioned, name).graph.nodes
            if n.op == "call_function"
        }  # fmt: skip
        sized = lambda f: f.node in why_not and DYNAMIC_SHAPE in f.reason  # noqa: E731
        art.fallbacks = [
            dataclasses.replace(f, reason=why_not[f.node]) if sized(f) else f
            for f in art.fallbacks if f.node not in absorbed
        ]  # fmt: skip
        names = names + symbolic
    outer = {n.name: InputInfo(n.name) for n in art.partitioned.graph.nodes}
    for n, info in zip([n for n in art.aten.graph.nodes if n.op == "placeholder"], art.inputs):
        outer[n.name] = info
    for node in art.partitioned.graph.nodes:
        if node.op == "call_module" and node.target in names:
            inputs = [outer.get(a.name, InputInfo(a.name)) for a in node.args]
            sub = getattr(art.partitioned, node.target)
            hints = size_hints(sub) if node.target in symbolic else None
            art.partitions.append(Partition(node.target, sub, inputs, hints=hints))
    return art


def size_hints(gm: GraphModule) -> dict[str, int]:
    """The values Dynamo's shape environment holds for the size symbols of `gm`'s inputs (the sizes
    of the call that compiled the graph), by symbol name; read without guarding."""
    hints: dict[str, int] = {}
    for node in gm.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        for d in getattr(val, "shape", ()):
            if isinstance(d, torch.SymInt) and d.node.expr.is_Symbol and d.node.hint is not None:
                hints[str(d.node.expr)] = int(d.node.hint)
    return hints


def size_inputs(gm: GraphModule) -> list[object]:
    """The size expressions of a partition's integer inputs (Dynamo's SymInts: a view's sizes)."""
    values = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
    return [size_of(v) for v in values if isinstance(v, torch.SymInt)]


def stage_import(art: GraphArtifact) -> GraphArtifact:
    functions = []
    for p in art.partitions:
        if p.name in art.restored:  # a compile-cache hit: fused, lowered, its kernels' sources cached
            p.function, p.lowered = art.restored[p.name]
            continue
        try:
            p.function = import_graph(p.submodule, p.name, p.inputs)
            verify(p.function, f"@{p.name}")
            unbound = unbound_sizes(p.function, size_inputs(p.submodule)) if p.hints is not None else []
            if unbound:
                raise ImportFailure(f"no argument's size binds {', '.join(unbound)} (a size of its results)")
            functions.append(p.function)
        except (ImportFailure, IRError, ValueError) as e:  # (a size sympy wrote that ein cannot read)
            p.function = None
            art.fallbacks.append(Fallback(p.name, "partition", f"not compiled: {e}"))
    art.module = ModuleOp(functions)
    return art


def _restore(art: GraphArtifact) -> None:
    """Take a cache hit's partitions (function and lowered groups) from its entry; a bad entry is a miss."""
    try:
        _, art.restored = unpack(art.cached.compiled)
    except CacheFormatError as e:
        log.warning("tilefuse: ignoring a cache entry of graph %s: %s", art.name, e)
        art.cached, art.restored = None, {}


def _cache_entry(art: GraphArtifact) -> CacheEntry | None:
    """The cache entry of a compiled graph: its partitions' functions and lowered groups, kernel sources.

    A lowered group keeps its kernel's declaration only (name, kind, parameters, grid,
    arguments): the body lives on as the kernel's Triton source, and reading back a
    few thousand `tile` ops would cost more than the rest of a cache hit.
    """
    partitions = {p.name: (p.function, [_declared(g) for g in p.lowered]) for p in art.compiled_partitions()}
    roots = [p.function for p in art.compiled_partitions()]
    roots += [g.kernel for _, lowered in partitions.values() for g in lowered if g.kernel is not None]
    try:
        return CacheEntry(pack(roots, partitions), art.sources)
    except CacheFormatError as e:
        log.info("tilefuse: graph %s not cached: %s", art.name, e)
        return None


def _declared(g: LoweredGroup) -> LoweredGroup:
    """`g` with its kernel reduced to a declaration: the same signature, an empty body. A kernel
    that failed to generate (`g.error`) is not kept: on a hit its empty body would verify, and
    launch as a kernel that writes nothing. The group whose kernel it copied (`twin`) is dropped:
    code generation was its only use."""
    if g.error is not None:
        return dataclasses.replace(g, kernel=None, twin=None)
    if g.kernel is None:
        return dataclasses.replace(g, twin=None)
    k = g.kernel
    body = Block(arg_types=[a.type for a in k.body.block.args])
    for arg, declared in zip(k.body.block.args, body.args):
        declared.name_hint = arg.name_hint
    body.add_op(tile.ReturnOp())
    declaration = tile.KernelOp(k.sym_name.data, k.kind.data, k.param_names, k.grid_exprs, Region(body))
    return dataclasses.replace(g, kernel=declaration, twin=None)


def stage_canonicalize(art: GraphArtifact) -> GraphArtifact:
    Canonicalize().apply(make_context(), art.module)
    verify_between_passes(art.module, "after canonicalize")
    return art


def stage_runtime(art: GraphArtifact) -> GraphArtifact:
    for p in art.partitions:
        if p.function is None:
            continue
        output = next(n for n in p.submodule.graph.nodes if n.op == "output")
        returns_tuple = isinstance(output.args[0], (tuple, list))
        device = graph_device(p.submodule, art.aten, art.target.interpret)
        runner = KernelPlan(
            p.function, p.kernels, returns_tuple, p.submodule, device, art.name, art.dump, art.trained
        )
        p.executor = runner.executor
        art.runners[p.name] = runner
        setattr(art.partitioned, p.name, runner)
    # the partitioned graph calls each runner's forward itself: an nn.Module call (hooks, the call
    # wrapper) costs a few microseconds of host time a call, which small graphs feel
    for node in art.partitioned.graph.nodes:
        if node.op == "call_module" and node.target in art.runners:
            node.op, node.target = "call_function", art.runners[node.target].forward
    art.partitioned.recompile()
    return art


PRINT_IR_AFTER_ENV = "TILEFUSE_PRINT_IR_AFTER"  # "import,form-fusion-groups" or "all": IR to stderr


def _print_ir_after() -> set[str]:
    """The stages whose IR goes to stderr (mlir-opt's --mlir-print-ir-after); unknown names are warned of."""
    names = {n.strip() for n in os.environ.get(PRINT_IR_AFTER_ENV, "").split(",") if n.strip()}
    known = {s.name for s in STAGES if s.dump} | {"all"}
    if names - known:  # a typo in a debugging switch must not cost the model its kernels
        stages = ", ".join(sorted(known))
        unknown = sorted(names - known)
        log.warning("tilefuse: %s: no stage %s; stages: %s", PRINT_IR_AFTER_ENV, unknown, stages)
    return names & known


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[GraphArtifact], GraphArtifact]
    dump: Callable[[GraphArtifact], tuple[str, str]] | None = None


def _dump_partitioned(art: GraphArtifact) -> tuple[str, str]:
    return "partitioned.py", art.partitioned.print_readable(print_output=False)


def _dump_module_as(
    filename: str, skipped: Callable[[GraphArtifact], str | None] | None = None
) -> Callable[[GraphArtifact], tuple[str, str]]:
    """The module after a stage, as `filename`; `skipped(art)`: why the stage left it unchanged, if it
    did (a comment line heads the file)."""

    def text(art: GraphArtifact) -> str:
        if not art.restored:
            why = skipped(art) if skipped else None
            return (f"// {why}\n" if why else "") + print_module(art.module)
        # a compile-cache hit skips the passes: the fused functions come back whole
        if filename == "ein.groups.mlir":
            return print_module(ModuleOp([fn.clone() for fn, _ in art.restored.values()]))
        return "// compile-cache hit: this stage did not run; ein.groups.mlir holds the cached result\n"

    return lambda art: (filename, text(art))


def _merge_skipped(art: GraphArtifact) -> str | None:
    why = merge_projections_skipped(art)
    if why is None:
        return None
    return f"merge-projections did not run: {why}; this is the module after norm-prologue"


def _kmajor_skipped(art: GraphArtifact) -> str | None:
    if kmajor_f32_weights(art.target):
        return None
    return (
        "kmajor-f32-weights did not run: f32 dots here are exact FMA math (no GPU, or "
        "TILEFUSE_F32_DOTS=ieee) or TILEFUSE_F32_WEIGHT_LAYOUT=off; this is the module after split-reduction"
    )


def _dump_tile(art: GraphArtifact) -> tuple[str, str]:
    """All kernels of the graph as one `tile` module."""
    kernels = _dumped_kernels(art).values()
    return "tile.mlir", print_module(ModuleOp([k.clone() for k in kernels]))


def _cuda_files(art: GraphArtifact) -> dict[str, str]:
    """The CUDA C++ of each pointwise, reduction, row and GEMM (CUTLASS) kernel with its config, for
    reading beside the Triton source (they run under backend "cuda" or "auto"; attention stays on
    Triton). A kernel the emitter refuses (attention, say) gets a one-line file saying why.
    The configs are the compile's: a CPU dump's are the interpreter's (wider blocks)."""
    from ..backends.cuda import emit_cuda_or_reason

    tile_kernels, files = _dumped_kernels(art), {}
    for p in art.compiled_partitions():
        for k in p.kernels:
            name = k.lowered.kernel.sym_name.data
            kernel = tile_kernels.get(name)
            if kernel is None:
                continue
            files[name] = emit_cuda_or_reason(kernel, dict(k.config.params), k.config.num_warps)
    return files


def _dumped_kernels(art: GraphArtifact) -> dict[str, tile.KernelOp]:
    """Every kernel of the graph with its body, by name (`codegen.kernels_with_bodies`)."""
    return kernels_with_bodies(art)


STAGES: list[Stage] = [
    Stage("partition", stage_partition, _dump_partitioned),
    Stage("import", stage_import, _dump_module_as("ein.mlir")),
    Stage("canonicalize", stage_canonicalize, _dump_module_as("ein.canonicalize.mlir")),
    Stage("norm-prologue", stage_norm_prologue, _dump_module_as("ein.norm-prologue.mlir")),
    Stage(
        "merge-projections", stage_merge_projections,
        _dump_module_as("ein.merge-projections.mlir", skipped=_merge_skipped),
    ),  # fmt: skip
    Stage("split-reduction", stage_split_reduction, _dump_module_as("ein.split-reduction.mlir")),
    Stage(
        "kmajor-f32-weights", stage_operand_layout,
        _dump_module_as("ein.kmajor-f32-weights.mlir", skipped=_kmajor_skipped),
    ),  # fmt: skip
    Stage("form-fusion-groups", stage_fuse, _dump_module_as("ein.groups.mlir")),
    Stage("lower", stage_lower, _dump_tile),
    Stage("codegen", stage_codegen),
    Stage("runtime", stage_runtime),
]


def compile_aten_graph(
    aten: GraphModule, name: str, inputs: list[InputInfo], dump: GraphDump | None,
    target: Target, extra_files: dict[str, str] | None = None, trained: Trained | None = None,
    masks_dropped: dict[str, int] | None = None, buffers: dict[int, torch.Tensor] | None = None,
) -> tuple[Callable, dict]:  # fmt: skip
    """Run the pipeline on one aten graph.

    Returns what to call instead of the graph, and the graph's summary (what
    compiled, what fell back and why), which is also its entry in the dump.
    `trained` is given for a training graph's forward, and set once its backward ran.
    `masks_dropped`: how many attention masks went from Dynamo's graph before AOTAutograd traced
    it ("causal", "visible": `attention_dropout.attention_for_tracing`), for the report.
    `buffers`: the values of the graph's inputs (by position) that are module buffers, from which a
    causal mask may be computed (`causal_masks.fold_causal_selects`; the result then checks them).
    """
    masks_dropped = masks_dropped or {}
    capture = _capture_seconds()
    started = time.perf_counter()
    # before the cache key: the key is of the graph that compiles
    merge_duplicate_ops(aten)
    complex_as_pairs(aten)
    folded, constant_masks = fold_causal_masks(aten)
    placeholders = [n for n in aten.graph.nodes if n.op == "placeholder"]
    known = {placeholders[i]: t for i, t in (buffers or {}).items() if i < len(placeholders)}
    selects, read, before_fold = fold_causal_selects(aten, known)
    folded += selects
    grouped = group_decode_queries(aten)
    decode_reports: list[dict] = []
    if trained is None:
        use_decode_kernels(aten, decode_reports)
    stencils = depthwise_stencils(aten) if depthwise_enabled() else 0
    convs = 0
    if conv_layout_enabled(not target.interpret):
        convs = channels_last_convolutions(aten, results_too=stencils > 0)
    art = GraphArtifact(name, aten, inputs, target=target, dump=dump, trained=trained)
    options = f"{target!r},{fusion_options()}"
    key = graph_key(aten, [f"{i.name}:{i.param}" for i in inputs], options, target.device)
    art.cached = load_entry(key)
    if art.cached is not None:
        _restore(art)
    cache_state = "off" if cache_dir() is None else ("hit" if art.cached else "miss")
    files = []
    if dump:
        for filename, text in (extra_files or {}).items():
            files.append(dump.write(filename, text))
        files.append(dump.write("aten_graph.py", aten.print_readable(print_output=False)))
        if has_symbolic_nodes(aten):
            files.append(dump.write(DYNAMIC_DUMP, dynamic_dump(aten, name)))
        if decode_reports:  # the kernel its decode attention calls run (the length is an argument)
            files.append(dump.write("kernels/decode_attention.py", DECODE_SOURCE))
    try:
        print_after = _print_ir_after()
        for stage in STAGES:
            stage_started = time.perf_counter()
            art = stage.run(art)
            art.seconds[stage.name] = time.perf_counter() - stage_started
            if stage.dump and (dump or stage.name in print_after or "all" in print_after):
                filename, text = stage.dump(art)
                if dump:
                    files.append(dump.write(filename, text))
                if stage.name in print_after or "all" in print_after:
                    header = f"// -----// IR Dump After {stage.name} ({name}) //----- //"
                    print(f"{header}\n{text}", file=sys.stderr)
        if dump:
            files += [dump.write(f"kernels/{k}.py", _kernel_file(art, k)) for k in art.sources]
            files += [dump.write(f"kernels/{k}.cu", text) for k, text in _cuda_files(art).items()]
        entry = _cache_entry(art) if cache_state == "miss" else None
        if entry is not None:
            store_entry(key, entry)
        result: Callable = direct_forward(art.partitioned)  # not through nn.Module's call: host time
        error = None
    except Exception as e:  # never crash the user's model: run the graph in PyTorch
        log.warning("tilefuse: graph %s runs in PyTorch: %s", name, e)
        error = f"{type(e).__name__}: {e}"
        result = aten
        if dump:
            files.append(dump.write("error.txt", traceback.format_exc()))
    summary = {"name": dump.name if dump else name, "dir": dump.name if dump else None, "cache": cache_state}
    summary.update(_summary(art, files, error))
    # with the masks dropped from Dynamo's graph before AOTAutograd traced it (attention_for_tracing)
    folded += masks_dropped.get("causal", 0)
    if folded:
        summary["causal_masks"] = f"{folded} attention mask(s) equal to the causal mask: is_causal=True"
    if masks_dropped.get("visible"):
        summary["visible_masks"] = f"{masks_dropped['visible']} attention mask(s) hiding no key: dropped"
    if grouped:
        summary["grouped_queries"] = f"{grouped} one-query attention(s) over repeated KV heads: grouped"
    if decode_reports:
        summary["decode_attention"] = decode_reports  # each call's choice, made at its first calls
    if stencils:
        summary["depthwise"] = f"{stencils} depthwise convolution(s) compiled as stencils (one kernel each)"
    if convs:
        summary["conv_layout"] = f"{convs} convolution(s) run channels-last, converted back after"
    if constant_masks:
        summary["constant_masks"] = f"{constant_masks} attention mask(s) computed once, read from a buffer"
    summary["compile_seconds"] = _compile_seconds(art, capture, time.perf_counter() - started)
    for entry in summary["partitions"]:  # a partition that fails at run time records it here
        if entry["name"] in art.runners:
            runner = art.runners[entry["name"]]
            runner.report = entry
            if runner.error is not None:  # compiled, but runs in PyTorch (no CUDA device)
                fallback = {"node": entry["name"], "op": "partition", "reason": runner.error}
                summary["fallbacks"].append(fallback)
    if read and error is None:  # the masks read module buffers: the result checks they stay
        checks = [(placeholders.index(p), known[p]) for p in read]
        result = BufferGuard(result, direct_forward(before_fold), checks, summary)
    if dump:
        dump.finish(summary)
    return result, summary


def _kernel_file(art: GraphArtifact, kernel: str) -> str:
    """A kernel's dump: its source with its operands' names, under comments naming its group and twins.

    The loaded source names operands `arg0`, `arg1`, ... so that identical kernels share it.
    """
    function, source = art.functions[kernel], art.sources[kernel]
    twins = sorted(k for k, s in art.sources.items() if s == source and k != kernel)
    lines = [f"# group kernel {kernel}: Triton function {function}"]
    if twins:
        lines.append(f"# the same source serves {', '.join(twins)}")
    tile_kernel = _dumped_kernels(art).get(kernel)
    if tile_kernel is None:
        return "\n".join([*lines, source])
    lines.append("# shown with its operands' names; it is loaded with them named arg0, arg1, ...")
    return "\n".join([*lines, named_source(tile_kernel, function, art.target.triton_options())])


PASS_STAGES = (
    "partition", "import", "canonicalize", "norm-prologue", "merge-projections", "split-reduction",
    "kmajor-f32-weights",
    "form-fusion-groups", "lower",
)  # fmt: skip


def _compile_seconds(art: GraphArtifact, capture: float | None, tilefuse: float) -> dict:
    """Where the graph's compile time went: capture, each pass, codegen, Triton, the rest; and the total.

    `capture` is Dynamo's tracing and aot_autograd's (None when the graph did not come
    through Dynamo); `other` is the runtime stage, dumps and the compile cache.
    """
    passes = {name: round(art.seconds[name], 4) for name in PASS_STAGES if name in art.seconds}
    triton = art.precompiled["seconds"] if art.precompiled else 0.0
    codegen = art.seconds.get("codegen", 0.0) - triton
    other = tilefuse - sum(art.seconds.get(name, 0.0) for name in PASS_STAGES) - codegen - triton
    return {
        "capture": round(capture, 4) if capture is not None else None,
        "passes": passes,
        "codegen": round(codegen, 4),
        "triton_compile": round(triton, 4),
        "other": round(other, 4),
        "total": round((capture or 0.0) + tilefuse, 4),
    }


def _capture_seconds() -> float | None:
    """How long Dynamo has been compiling the frame whose graph this is (its tracing, aot_autograd's).

    Read from Dynamo's metrics context, which spans one frame's compile; None outside
    Dynamo (a graph compiled directly) or where this torch does not keep that context.
    """
    try:
        from torch._dynamo.utils import get_metrics_context

        context = get_metrics_context()
        started = getattr(context, "_start_time_ns", 0) if context.in_progress() else 0
    except (ImportError, AttributeError):
        return None
    return (time.time_ns() - started) / 1e9 if started else None


def _summary(art: GraphArtifact, files: list[str], error: str | None) -> dict:
    fallbacks = [f.as_dict() for f in art.fallbacks]
    if error:
        reason = f"whole graph runs in PyTorch: {error}"
        fallbacks.append({"node": "<graph>", "op": "pipeline", "reason": reason})
    compiled = [p for p in art.partitions if p.function is not None] if not error else []
    return {
        "kind": "forward",
        "files": files,
        "partitions": [p.summary() for p in compiled],
        "fallbacks": fallbacks,
        "kernels": {
            "total": len(art.sources),
            "distinct": len(set(art.sources.values())),
            "precompiled": art.precompiled,  # GPU: compiled in worker processes before the first launch
        },
    }
