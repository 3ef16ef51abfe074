"""The Dynamo backend: `torch.compile(model, backend="tilefuse")`.

Dynamo hands over a torch-level FX graph; `aot_autograd` with PyTorch's core
decompositions turns it into aten ops, which the driver compiles. Attention
is kept whole (not decomposed) so it is imported as one unit. Backward
graphs, when autograd needs them, run in PyTorch and say so in the dump.
A graph with symbolic sizes compiles its nodes of static shapes, and its
pointwise, reduction and row work of symbolic sizes into kernels that take
the sizes as arguments (`partition.partition_symbolic`); the rest runs in
PyTorch. A size it is called with twice in a row is compiled for that
size (`specialize.py`).
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import os
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch._decomp import core_aten_decompositions, get_decompositions
from torch._dynamo.backends.common import aot_autograd
from torch._functorch.aot_autograd import make_boxed_func
from torch._functorch.partitioners import default_partition, min_cut_rematerialization_partition
from torch.fx import GraphModule

from . import encoder_layer
from .attention_dropout import MASKS_DROPPED, attention_for_tracing
from .codegen import Target, resolve_backend
from .cudagraphs import CudaGraphReplay
from .decode_attention import decode_kernels_enabled, decode_step_attention
from .driver import compile_aten_graph
from .dump import GraphDump, resolve_dump_dir
from .fx_import import InputInfo
from .input_mutations import batch_write_backs, mutated_inputs, reinplace
from .partition import SYMBOLIC_KERNELS_ENV
from .program import Trained, over_storage
from .runtime import direct_forward, preferred_device
from .selection import GraphSelection, compile_backward, selection_enabled
from .specialize import (
    ShapeSpecializations,
    data_dependent,
    read_values,
    specialize_limit,
    symbolic_positions,
    value_read_positions,
)
from .symbolic import DUMP_FILE as DYNAMIC_DUMP
from .symbolic import dynamic_dump

log = logging.getLogger("tilefuse")
_KEEP_WHOLE = ("scaled_dot_product", "_flash_attention", "_efficient_attention", "_cudnn_attention")
# ops no kernel of ours beats, left whole for PyTorch to run: an embedding's weight gradient,
# decomposed, was an f32 `index_put_` accumulating with atomics into zeros, then a copy to bf16:
# BERT's token-type embedding (every token at row 0) serialized 4096 atomic row adds, 2.8 ms a step
# on the H200 against 0.1 ms for ATen's sort-and-segment kernel
_LIBRARY_ONLY = ("embedding_dense_backward",)


def _needs_grad(example_inputs: list) -> bool:
    """Whether AOTAutograd traces a joint forward and backward for these inputs."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in example_inputs
    )


def decompositions(training: bool = False) -> dict:
    """The table below (a copy: it is built once per `training`, ~0.1-0.2 s a build on this CPU)."""
    return dict(_decompositions(training))


@functools.lru_cache(maxsize=2)
def _decompositions(training: bool) -> dict:
    """PyTorch's core aten decompositions, minus attention (imported whole), plus the batch,
    instance and group norms' (as Inductor's table has them): their statistics and affine maps
    then fuse like LayerNorm's, beside a convolution PyTorch runs.

    Log-softmax is lowered whole (`lower_structured._softmax`), except in a graph that trains
    (`training`): there it is decomposed (`x - max - log(sum(exp(x - max)))`, PyTorch's own
    decomposition), so AOTAutograd's min-cut partition saves the row's max and log-sum (a value a
    row) and the backward recomputes the log-probabilities from the logits, where the whole op's
    [tokens, vocabulary] f32 output was saved, written by the forward and read by the backward
    (~0.5 GB a step at 4 x 512 tokens and a 32000 vocabulary). The ein graph the forward imports is
    the same row kernel either way."""
    table = core_aten_decompositions()
    aten = torch.ops.aten
    table.update(get_decompositions([
        aten._native_batch_norm_legit_no_training, aten._native_batch_norm_legit,
        aten._native_batch_norm_legit_functional, aten.native_batch_norm, aten.native_group_norm,
    ]))  # fmt: skip
    if training:
        table.update(get_decompositions([aten._log_softmax]))
    table.update(encoder_layer.DECOMPOSITIONS)  # nn.TransformerEncoderLayer's fused inference op
    table[aten.histc.default] = integer_histc
    kept = (*_KEEP_WHOLE, *_LIBRARY_ONLY)
    return {op: fn for op, fn in table.items() if not any(k in str(op) for k in kept)}


# a histogram decomposed below has at most this many (element, bin) pairs: its one-hot comparison is
# a reduction's input in a kernel, but a tensor of this size where the graph runs in PyTorch
HISTC_MAX_PAIRS = 1 << 24


def integer_histc(x: torch.Tensor, bins: int = 100, min: float = 0, max: float = 0) -> torch.Tensor:
    """`torch.histc` of an integer tensor with its range given, as a comparison and a sum.

    Mixtral's experts count their tokens with `histc` of the sorted expert ids
    (int32 on a GPU, `bins` experts over [0, experts - 1]); kept whole it was
    an ATen call, and its input's cast another, between two partitions, every
    layer. CUDA's kernel puts an element `v` in [min, max] into bin
    `(v - min) * bins // (max - min)` (integer arithmetic for integer
    input; `max` itself into the last bin) and counts in the input's dtype; so
    does this. Float inputs (whose bin edges would be rounded differently by
    a different order of operations), an unset range (min == max: the data's
    own), and histograms of more than HISTC_MAX_PAIRS pairs stay `histc`.
    """
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        return NotImplemented
    lo, hi = int(min), int(max)
    if lo != min or hi != max or hi <= lo or bins < 1 or x.numel() * bins > HISTC_MAX_PAIRS:
        return NotImplemented
    v = x.reshape(-1).to(torch.int64)
    inside = (v >= lo) & (v <= hi)
    where = torch.clamp(torch.div((v - lo) * bins, hi - lo, rounding_mode="floor"), 0, bins - 1)
    hits = (where.unsqueeze(1) == torch.arange(bins, device=x.device)) & inside.unsqueeze(1)
    return hits.sum(0).to(x.dtype)


PARTITIONER_ENV = "TILEFUSE_PARTITIONER"


def partitioner() -> Callable:
    """What a training graph's forward saves for its backward. "min_cut" (the default): the least
    memory traffic, recomputing cheap elementwise work in the backward, as Inductor does; "default":
    AOTAutograd's default partition, which saves every intermediate the backward reads."""
    setting = os.environ.get(PARTITIONER_ENV, "min_cut")
    if setting not in ("min_cut", "default"):
        raise ValueError(f"{PARTITIONER_ENV}={setting!r}: expected 'min_cut' or 'default'")
    chosen = min_cut_rematerialization_partition if setting == "min_cut" else default_partition

    def partition(joint: GraphModule, joint_inputs: object, **kwargs: object) -> object:
        save_compared_extremes(joint)
        return chosen(joint, joint_inputs, **kwargs)

    return partition


# reductions whose backward finds the extreme by comparing the reduced tensor with the result (`eq`)
_COMPARED_EXTREMES = {
    torch.ops.aten.amax.default, torch.ops.aten.amin.default, torch.ops.aten.max.default,
    torch.ops.aten.min.default,
}  # fmt: skip


def save_compared_extremes(joint: GraphModule) -> int:
    """Mark the input of each max/min reduction whose backward compares it with the result
    (`eq(x, amax(x))`: the gradient goes to the elements equal to the max) as saved, never recomputed.
    Recomputed in the backward, `x = tanh(...)` is PyTorch's (or another kernel's) arithmetic, which
    may differ in the last bit from the forward kernel's that took the max: no element equals it, and
    the gradient is grad / 0. Returns how many inputs were marked."""
    from torch.utils.checkpoint import CheckpointPolicy

    marked = 0
    for node in joint.graph.nodes:
        if node.op != "call_function" or node.target not in _COMPARED_EXTREMES:
            continue
        x = node.args[0]
        compared = any(u.target is torch.ops.aten.eq.Tensor for u in getattr(x, "users", ()))
        if isinstance(x, torch.fx.Node) and x.op == "call_function" and compared:
            x.meta["recompute"] = CheckpointPolicy.MUST_SAVE
            marked += 1
    return marked


@dataclass(frozen=True)
class CompileOptions:
    """Options of one `tilefuse.compile` call."""

    dump: Path | None = None
    mode: str = "default"  # "reduce-overhead": replay each graph as a CUDA graph (cudagraphs.py)
    backend: str | None = None  # "triton", "cuda" or "auto" (codegen.resolve_backend); None: from the env


_graph_ids = itertools.count()
_USER_INPUT = re.compile(r"^l_|_$")  # Dynamo names a user argument `x` as `l_x_`
_MODULE_PATH = re.compile(r"\._(?:modules|parameters|buffers)\['([^']+)'\]")


def _source_name(node: torch.fx.Node) -> str | None:
    """Where Dynamo says a placeholder comes from (`L['self']._buffers['bias']`), if it says."""
    text = getattr(getattr(node.meta.get("grapharg"), "source", None), "name", None)
    return text() if callable(text) else text


def _input_info(node: torch.fx.Node) -> InputInfo:
    """Name a Dynamo placeholder: module parameters and buffers keep their path."""
    text = _source_name(node)
    if text and ("._parameters[" in text or "._buffers[" in text):
        path = ".".join(_MODULE_PATH.findall(text))
        return InputInfo(path.replace(".", "_"), param=path)
    return InputInfo(_USER_INPUT.sub("", node.name) or node.name)


def _buffer_values(placeholders: list[torch.fx.Node]) -> dict[int, torch.Tensor]:
    """The real values of Dynamo's placeholders that are module buffers (minGPT's `tril` mask), by
    position: a mask computed from one may fold into the causal mask (`causal_masks`)."""
    found = {}
    for i, node in enumerate(placeholders):
        text = _source_name(node)
        if not text or "._buffers[" not in text:
            continue
        try:
            value = node.meta["grapharg"].example
        except Exception:  # Dynamo let go of it: the mask stays a tensor
            continue
        if type(value) is torch.Tensor:  # a real tensor, not a fake one
            found[i] = value
    return found


def _target(example_inputs: list, backend: str | None = None) -> Target:
    """Kernels run where the inputs live; TF32 only where PyTorch's matmul precision allows it."""
    on_gpu = _graph_device(example_inputs).type == "cuda"
    device = torch.cuda.get_device_name() if on_gpu else "cpu"
    allow_tf32 = torch.get_float32_matmul_precision() != "highest"
    return Target(not on_gpu, allow_tf32, device, resolve_backend(backend))


def outputs_of_their_own(compiled: Callable) -> Callable:
    """A training graph's forward whose outputs that are views of its own buffers (a reshape or
    permute of a kernel's output, a dropout of p=0 passing its input on) come back as tensors over
    the same memory that are not views. The forward runs inside AOTAutograd's autograd Function, and
    autograd forbids writing in place into a view a Function created: a model that did
    (`hidden_states[~mask] = 0` after a graph break, Wav2Vec2's encoder) raised where eager, whose
    tensor was no view, runs. Views of the inputs stay views (AOTAutograd regenerates those), and so
    do views over memory another output holds too (the forward's outputs include what it saves for
    the backward): a write into a tensor of its own would not move their version counter, and the
    backward would read the written memory where autograd, through the view, refuses the write."""

    def call(*args: object) -> object:
        outputs = compiled(*args)
        if not isinstance(outputs, (list, tuple)) or not any(
            isinstance(o, torch.Tensor) and o._base is not None for o in outputs
        ):
            return outputs
        shared = Counter(o.untyped_storage().data_ptr() for o in outputs if isinstance(o, torch.Tensor))
        shared.update(a.untyped_storage().data_ptr() for a in args if isinstance(a, torch.Tensor))
        return type(outputs)(
            over_storage(o, o.untyped_storage()) if isinstance(o, torch.Tensor) and o._base is not None
            and shared[o.untyped_storage().data_ptr()] == 1 else o
            for o in outputs
        )  # fmt: skip

    return call


def _pytorch_backward(gm: GraphModule, example_inputs: list) -> Callable:
    """The backward as PyTorch runs it, its ATen calls through PyTorch's bindings (`direct_ops`)."""
    return make_boxed_func(direct_forward(gm))


class TilefuseBackend:
    """A Dynamo backend object; keeps the summaries of the graphs it compiled."""

    # the registered backend's name (torch.compile names a callable backend by its `__name__`): Dynamo
    # then treats this object as that backend, and at the end of a compile clears the weak references
    # its fake-tensor mode keeps to the parameters, as it does for Inductor's (left there,
    # `torch.utils.swap_tensors` on a parameter raised, and with it `model.double()` under
    # `torch.__future__.set_swap_module_params_on_conversion(True)`)
    __name__ = "tilefuse"

    def __init__(
        self, options: CompileOptions | None = None, name: str = "graph", reports: list | None = None
    ):
        self.options = options or CompileOptions()
        self.name = name
        self.reports: list[dict] = [] if reports is None else reports
        self._lock = threading.Lock()

    def __deepcopy__(self, memo: dict) -> TilefuseBackend:
        """A deep copy of a compiled module (`copy.deepcopy(tilefuse.compile(model))`, which copies
        the Dynamo context holding this backend) gets a backend of its own: the same options, the
        reports so far copied, and its own lock (a lock cannot be copied: that deepcopy raised)."""
        try:
            reports = copy.deepcopy(self.reports, memo)
        except Exception:  # noqa: BLE001  (a report holding something uncopyable: the copy starts afresh)
            reports = []
        return TilefuseBackend(self.options, self.name, reports)

    def __call__(self, gm: GraphModule, example_inputs: list) -> Callable:
        graph_name = f"{self.name}_{next(_graph_ids):03d}"
        if not _has_symbolic_shapes(gm, example_inputs):
            return self._compile_graph(gm, example_inputs, graph_name)[0]
        if self._compiles_static_islands(gm) or self._compiles_symbolic_kernels():
            general, slot = self._compile_graph(gm, example_inputs, graph_name)
            report = slot.setdefault("summary", {"name": graph_name})
        else:
            general, report = self._run_dynamic_in_pytorch(gm, example_inputs, graph_name)
        limit = specialize_limit()
        if limit == 0:
            return general

        values = value_read_positions(gm)

        def compile_static(args: list, label: str) -> Callable:
            static = read_values(gm, args, values)
            compiled, slot = self._compile_graph(static, args, f"{graph_name}_{label}")
            slot.get("summary", {})["specializes"] = report.get("name", graph_name)
            return compiled

        fakes = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
        try:
            return ShapeSpecializations(general, compile_static, fakes, report, limit, values)
        except Exception as e:  # the dynamic graph alone still runs every size
            log.warning("tilefuse: graph %s: no size will be specialized (%s: %s)",
                        graph_name, type(e).__name__, e)  # fmt: skip
            return general

    def _compile_graph(self, gm: GraphModule, example_inputs: list, graph_name: str) -> tuple[Callable, dict]:
        """Dynamo's graph through AOTAutograd and the pipeline (its forward now, its backward at the
        first backward), wrapped in the graph-level selection; and the slot its report lands in.
        `example_inputs` are Dynamo's fake tensors, or the real inputs of a call whose sizes a
        dynamic graph specializes (`specialize.py`): AOTAutograd then traces static sizes."""
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        infos = [_input_info(n) for n in placeholders]
        buffers = _buffer_values(placeholders)
        dynamo_code = gm.print_readable(print_output=False)

        def forward_compiler(aten: GraphModule, aten_inputs: list) -> Callable:
            aten_placeholders = [n for n in aten.graph.nodes if n.op == "placeholder"]
            same = len(infos) == len(aten_placeholders)
            inputs = infos if same else [InputInfo(n.name) for n in aten_placeholders]
            target = _target(aten_inputs, self.options.backend)
            extra = {"dynamo_graph.py": dynamo_code}
            reinplace(aten)  # a static cache's write-back: in place, not a copy of the cache
            batch_write_backs(aten)  # BatchNorm's running statistics: one multi-tensor copy, not one a layer
            mutated = mutated_inputs(aten)
            graph_report["mutates_inputs"] = any(mutated)
            # which of Dynamo's inputs (the graph selection's arguments) are written, where they are
            # AOTAutograd's in the same order: the selection restores them after timing both ways
            graph_report["mutated_positions"] = [i for i, m in enumerate(mutated) if m] if same else None
            dropped = traced.meta.get(MASKS_DROPPED)
            compiled, summary = self._compile(
                aten, graph_name, inputs, target, extra, trained, dropped, buffers if same else None
            )
            if self.options.mode == "reduce-overhead":
                if target.interpret:
                    summary["cudagraphs"] = "refused: no CUDA device"
                else:
                    params = [i.param is not None for i in inputs]
                    compiled = CudaGraphReplay(compiled, params, summary, mutated)
            graph_report["summary"] = summary  # where GraphSelection writes its choice
            if trains:
                compiled = outputs_of_their_own(compiled)
            return make_boxed_func(compiled)

        def backward_compiler(bw: GraphModule, bw_inputs: list) -> Callable:
            # AOTAutograd lowers the backward lazily, at the first backward: the graph trains
            graph_report["trains"] = True
            if trained is not None:
                trained.trained = True  # its forward recomputes what it derives from parameters
            reinplace(bw)  # an index_put_ into fresh zeros accumulates in place, not into a copy of them
            if not compile_backward(_graph_device(bw_inputs)):
                return _pytorch_backward(bw, bw_inputs)
            inputs = [InputInfo(n.name) for n in bw.graph.nodes if n.op == "placeholder"]
            target = _target(bw_inputs, self.options.backend)
            compiled, summary = self._compile(bw, f"{graph_name}_backward", inputs, target)
            summary["kind"] = "backward"
            return make_boxed_func(compiled)

        graph_report: dict = {}  # this graph's summary, once its forward is compiled (now or later)
        trains = _needs_grad(example_inputs)
        trained = Trained() if trains else None  # set at the first backward (program.Trained)
        try:
            traced = attention_for_tracing(gm, training=trains)
            compiled = aot_autograd(
                fw_compiler=forward_compiler,
                bw_compiler=backward_compiler,
                decompositions=decompositions(training=trains),
                partition_fn=partitioner(),
                # an inference graph's updates of its inputs stay in it as copy_ (input_mutations.py)
                keep_inference_input_mutations=True,
            )(traced, example_inputs)
        except Exception as e:  # AOTAutograd could not trace it: the graph runs in PyTorch, said so
            if _dynamo_signal(e):
                raise  # Dynamo's own: it traces the frame again (a float specialized, say) and calls us again
            return self._traced_nothing(gm, graph_name, e), graph_report
        device = _graph_device(example_inputs)
        if self.options.mode == "reduce-overhead" or not selection_enabled(device):
            return compiled, graph_report
        return GraphSelection(compiled, direct_forward(gm), device, graph_report), graph_report

    def _compile(
        self, aten: GraphModule, name: str, inputs: list[InputInfo], target: Target,
        extra_files: dict[str, str] | None = None, trained: Trained | None = None,
        masks_dropped: dict[str, int] | None = None, buffers: dict[int, torch.Tensor] | None = None,
    ) -> tuple[Callable, dict]:  # fmt: skip
        """One aten graph (a forward or a backward) through the pipeline, dumped under `name` when
        dumps are on; its summary joins this backend's reports. `trained`: see `program.Trained`;
        `masks_dropped`, `buffers`: see `driver.compile_aten_graph`."""
        root = self.options.dump or resolve_dump_dir(None)
        dump = GraphDump(root, name) if root else None
        compiled, summary = compile_aten_graph(
            aten, name, inputs, dump, target, extra_files, trained, masks_dropped, buffers
        )
        with self._lock:
            self.reports.append(summary)
        return compiled, summary

    def _compiles_static_islands(self, gm: GraphModule) -> bool:
        """Whether a graph with symbolic sizes goes through the pipeline anyway: its nodes whose
        shapes are all static compile (in decoding, everything but the KV cache's concatenation and
        the attention over it: the projections, norms and MLPs of one new token), and the nodes with
        a symbolic size run in PyTorch beside them (`lowering_table.unsupported_reason`). Not with
        CUDA graphs (a replay is per shape), nor when no node has a static shape and none is a decode
        step's attention, nor with TILEFUSE_DYNAMIC=pytorch (the whole graph in PyTorch, as before
        islands)."""
        if self.options.mode == "reduce-overhead" or os.environ.get("TILEFUSE_DYNAMIC") == "pytorch":
            return False
        calls = [n for n in gm.graph.nodes if n.op.startswith("call_")]
        if any(_static_tensor(n.meta.get("example_value")) for n in calls):
            return True
        # a decode attention over keys of a symbolic length runs as the decode kernel (`decode_attention`)
        return decode_kernels_enabled() and any(decode_step_attention(n) for n in calls)

    def _compiles_symbolic_kernels(self) -> bool:
        """Whether a graph with symbolic sizes goes through the pipeline for its nodes of symbolic
        sizes: those that can become kernels taking their sizes as arguments do (`partition_symbolic`;
        TILEFUSE_SYMBOLIC_KERNELS=0 turns them off), in a training graph's forward and (where the
        backward is compiled) its backward too. Not with CUDA graphs (a replay is per shape)."""
        if self.options.mode == "reduce-overhead" or os.environ.get("TILEFUSE_DYNAMIC") == "pytorch":
            return False
        return os.environ.get(SYMBOLIC_KERNELS_ENV, "1") != "0"

    def _traced_nothing(self, gm: GraphModule, graph_name: str, error: Exception) -> Callable:
        """AOTAutograd raised while tracing the graph (a backward that reads a tensor's values, as
        transformers' MoE grouped-matmul fallback does with `.tolist()`). A data-dependent op is
        Dynamo's to handle: it splits the graph there and compiles the parts, so the error goes back
        to it; anything else runs the graph in PyTorch. Either way the report and one warning say so."""
        reads_values = data_dependent(error)
        what = " ".join(f"{type(error).__name__}: {error}".split())[:300]
        then = "Dynamo splits the graph there and runs the rest" if reads_values else "it runs in PyTorch"
        reason = f"AOTAutograd could not trace the graph ({what}); {then}"
        log.warning("tilefuse: graph %s: %s", graph_name, reason)
        self._report_pytorch_graph(gm, graph_name, "not traced", reason)
        if reads_values:
            raise error
        return direct_forward(gm)

    def _run_dynamic_in_pytorch(
        self, gm: GraphModule, example_inputs: list, graph_name: str
    ) -> tuple[Callable, dict]:
        """A graph with symbolic sizes (Dynamo marks a dim dynamic once a second size was seen) and no
        static island to compile runs as PyTorch: kernels are compiled for static shapes, and compiling
        every size would make each new sequence length compile again (seconds each). A size called
        twice in a row gets its own static compile (`specialize.py`)."""
        reason = (
            "the graph has dynamic shapes and no node with static ones; tilefuse compiles static shapes, "
            "so it runs in PyTorch, except for sizes called twice in a row, each compiled for its "
            "size (`specialized` in this report)"
        )
        report = self._report_pytorch_graph(gm, graph_name, "dynamic shapes", reason, example_inputs)
        return direct_forward(gm), report

    def _report_pytorch_graph(
        self, gm: GraphModule, graph_name: str, op: str, reason: str, dynamic_inputs: list | None = None
    ) -> dict:
        """The report (and, with dumps on, the dump) of a graph that runs in PyTorch as a whole. With
        `dynamic_inputs` (Dynamo's fake inputs of a graph of symbolic sizes) the dump has the graph's
        parts of symbolic sizes as `ein` too (`symbolic.dynamic_dump`)."""
        summary = {
            "name": graph_name, "dir": None, "cache": "off", "kind": "forward", "files": [],
            "partitions": [], "fallbacks": [{"node": "<graph>", "op": op, "reason": reason}],
            "kernels": {"total": 0, "distinct": 0, "precompiled": None},  # every report has the same keys
        }  # fmt: skip
        root = self.options.dump or resolve_dump_dir(None)
        if root:  # the index says why this graph has no kernels
            dump = GraphDump(root, graph_name)
            summary["name"] = summary["dir"] = dump.name
            summary["files"] = [dump.write("dynamo_graph.py", gm.print_readable(print_output=False))]
            if dynamic_inputs is not None:
                text = _dynamic_dump_text(gm, dynamic_inputs, dump.name)
                summary["files"].append(dump.write(DYNAMIC_DUMP, text))
            dump.finish(summary)
        with self._lock:
            self.reports.append(summary)
        return summary


def _dynamic_dump_text(gm: GraphModule, example_inputs: list, name: str) -> str:
    """The `ein` of a dynamic graph that runs in PyTorch, for its dump: traced to aten as the pipeline
    traces (AOTAutograd, the same decompositions; only when dumping), then `symbolic.dynamic_dump`."""
    captured: list[GraphModule] = []

    def keep(aten: GraphModule, _inputs: list) -> Callable:
        captured.append(aten)
        return make_boxed_func(aten.forward)

    try:
        aot_autograd(fw_compiler=keep, decompositions=decompositions(training=False),
                     keep_inference_input_mutations=True)(gm, example_inputs)  # fmt: skip
        return dynamic_dump(captured[0], name)
    except Exception as e:  # a dump: say why, never change the compile (Dynamo's signals included)
        return f"// {name}: not traced to aten for this dump: {type(e).__name__}: {e}\n"


def _dynamo_signal(error: Exception) -> bool:
    """Whether `error` is Dynamo's control flow, not a failure: a restart of the frame's analysis (AOTAutograd
    raises TensorifyScalarRestartAnalysis where a float it was given symbolic must be specialized: a second
    model of a class whose dropout probability differs) or a skip. Caught, the graph ran in PyTorch with no
    kernel and Dynamo never traced it again."""
    from torch._dynamo import exc

    return isinstance(error, (exc.RestartAnalysis, exc.SkipFrame))


def _graph_device(example_inputs: list) -> torch.device:
    found = preferred_device(t.device for t in example_inputs if isinstance(t, torch.Tensor))
    return found or torch.device("cpu")


def _static_tensor(value: object) -> bool:
    """A tensor (not a 0-d one) whose sizes are all plain ints (isinstance only: no guard)."""
    if not isinstance(value, torch.Tensor) or value.dim() == 0:
        return False
    return all(isinstance(d, int) for d in value.shape)


def _has_symbolic_shapes(gm: GraphModule, example_inputs: list) -> bool:
    # isinstance checks only: reading a SymInt's value would add a guard that specializes it
    placeholders = [n.meta.get("example_value") for n in gm.graph.nodes if n.op == "placeholder"]
    return any(symbolic_positions(placeholders + list(example_inputs)))


BACKEND_REPORTS_KEPT = 256
_backend_reports: list[dict] = []  # graphs compiled through torch.compile(backend="tilefuse")


# torch.compile's mode names, so code written for it runs unchanged. tilefuse tunes in a separate
# job (`tilefuse tune`) whose configs every compile reads, so the max-autotune modes search nothing
# at compile time: "max-autotune" replays CUDA graphs as Inductor's does, the other runs without.
MODES = {
    "default": "default",
    "reduce-overhead": "reduce-overhead",
    "max-autotune": "reduce-overhead",
    "max-autotune-no-cudagraphs": "default",
}
# `torch.compile(..., backend="tilefuse", options={...})`: what tilefuse reads there
BACKEND_OPTIONS = ("dump", "backend")
_ignored_options_said: set[str] = set()


def backend_options(mode: str | None = None, options: dict | None = None) -> CompileOptions:
    """The options of `torch.compile(..., backend="tilefuse", mode=..., options=...)`: torch passes
    both on to a backend other than Inductor (each call raised a TypeError here, and with it the
    user's model). A mode outside `MODES` is refused as `tilefuse.compile` refuses it; options other
    than `BACKEND_OPTIONS` (Inductor's, say, from code written for it) are ignored, with one warning
    each."""
    options = read_options(options)
    return compile_options(mode, options.get("dump"), options.get("backend"))


def read_options(options: dict | None) -> dict:
    """`options` as tilefuse reads them (`BACKEND_OPTIONS`); other keys (Inductor's, say, from code
    written for it) are dropped, with one warning each per process."""
    options = dict(options or {})
    ignored = sorted(set(options) - set(BACKEND_OPTIONS))
    unsaid = [k for k in ignored if k not in _ignored_options_said]
    if unsaid:
        _ignored_options_said.update(unsaid)
        log.warning("tilefuse: torch.compile options %s are not tilefuse's (it reads %s): ignored",
                    unsaid, list(BACKEND_OPTIONS))  # fmt: skip
    return {k: v for k, v in options.items() if k in BACKEND_OPTIONS}


def compile_options(
    mode: str | None, dump: str | os.PathLike | None, backend: str | None, caller: str = "tilefuse"
) -> CompileOptions:
    """The options of a compile (`tilefuse.compile`'s arguments, or the registered backend's); a
    mode outside `MODES` or an unknown kernel backend is refused here, before any graph compiles."""
    mode = mode or "default"
    if mode not in MODES:
        raise ValueError(f"{caller}: mode must be one of {tuple(MODES)}, not {mode!r}")
    return CompileOptions(dump=resolve_dump_dir(dump), mode=MODES[mode], backend=resolve_backend(backend))


def tilefuse_backend(
    gm: GraphModule, example_inputs: list, mode: str | None = None, options: dict | None = None
) -> Callable:
    """The backend registered as "tilefuse"; dumps go to `options["dump"]`, else $TILEFUSE_DUMP if
    set. Its graphs' reports are kept for `tilefuse.reports()` (the newest BACKEND_REPORTS_KEPT)."""
    backend = TilefuseBackend(backend_options(mode, options), reports=_backend_reports)
    compiled = backend(gm, example_inputs)
    del _backend_reports[:-BACKEND_REPORTS_KEPT]
    return compiled


def reports() -> list[dict]:
    """The reports of the graphs compiled through `torch.compile(..., backend="tilefuse")`, oldest
    first (a graph's report is filled in when its forward compiles, and updated as it runs:
    selection, training). `tilefuse.compile` results carry their own as `tilefuse_reports`."""
    return list(_backend_reports)
