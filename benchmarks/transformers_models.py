"""tilefuse on `transformers` models, against eager PyTorch and `torch.compile`, in one process.

    python -m tilefuse.benchmarks.transformers_models [--out FILE] [--models llama,qwen2,...]
        [--dtype bfloat16|float32] [--tiny] [--no-torch-compile] [--no-reduce-overhead]

Each model is built from its config (random weights, seeded; nothing is downloaded), put in
eval mode with `attn_implementation="sdpa"` (where the family has it), and run forward under
`torch.no_grad()` (a prefill: batch 4 x 512 tokens, BERT 8 x 512 with padded rows; KernelBench level
4's families at its shapes). Every candidate (eager,
torch.compile default and reduce-overhead, tilefuse default and reduce-overhead) is measured
on the same model and inputs: median time (on a GPU also in rounds that visit the candidates in
turn, so a drift of the host's speed reaches them all), wall time of back-to-back calls, the GPU time and
kernel launches of one call (torch.profiler), host overhead per kernel, the first call's time
(compile), and for tilefuse the first call of a new process that finds the on-disk caches
this run filled. Outputs (logits, or BERT's last hidden state) are compared with eager and
with a float64 copy of the model. A second table, the host-overhead microbenchmark, runs a
chain of tiny row kernels that cannot fuse, where the wall time is almost all launch cost
(target: <= 6 us per kernel).

A failing candidate or model (exception, out of memory) is a table cell, never the end of the
run; the results file is rewritten after the microbenchmark (run first) and after each
model. Caches start empty for each model: tilefuse's graph cache, Triton's and Inductor's
on-disk caches move to a fresh temporary folder (in-process caches of models run earlier in
the same run may still help; `--models NAME` gives a strictly cold figure). `--tiny` builds
tiny configs (hidden 64, 1 layer, 16 tokens) so the run fits a CPU; there, torch.compile
compiles C++ for minutes, and `--no-torch-compile` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import inspect
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
import triton

import tilefuse

from .cases import COMPILE, EAGER, key_padding
from .run import (
    SUBJECT,
    describe_error,
    environment_lines,
    relative_error,
    release_memory,
    tilefuse_note,
    time_ms,
)

COMPILE_RO = "torch.compile reduce-overhead"
SUBJECT_RO = "tilefuse reduce-overhead"
CANDIDATES = (EAGER, COMPILE, COMPILE_RO, SUBJECT, SUBJECT_RO)
DEFAULT_MODELS = ("llama", "qwen2", "gpt2", "bert", "phi")
DEFAULT_OUT = Path(__file__).with_name("RESULTS_models.md")
HOST_TARGET_US = 6.0
CHAIN_LINKS = 10  # two row kernels per link in tilefuse: 20 launches per call
CHAIN_SHAPE = (64, 256)
PROFILED_CALLS = 5
# calls before timing, for every candidate: tilefuse measures its program against PyTorch on its
# first ~10 calls (compiler/selection.py), and a fp32 model's few timed calls once fell among them
SETTLE_CALLS = 12
# A CPU run (--tiny) tests the harness: its times mean nothing, and interpreted kernels are slow.
CPU_REPEATS = 1
CACHED_CHILD_TIMEOUT_S = 600
CACHE_VARIABLES = ("TILEFUSE_CACHE_DIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")


@dataclass(frozen=True)
class ModelSpec:
    """A model family at benchmark size and at tiny (CPU) size; `padded` masks out row ends;
    `training_class` is the class a training step builds where `model_class` has no loss (an encoder's
    masked-LM head)."""

    name: str
    model_class: str
    config_class: str
    full: dict
    tiny: dict
    batch: int = 4
    seq: int = 512
    padded: bool = False
    training_class: str | None = None
    attention: str = "sdpa"  # the attn_implementation (a family without an SDPA path: "eager")

    def shape(self, tiny: bool) -> tuple[int, int]:
        """(batch, sequence length) of the inputs."""
        return (2, 16) if tiny else (self.batch, self.seq)


# fmt: off
TINY_DECODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1, num_attention_heads=4,
                    num_key_value_heads=2, vocab_size=256, max_position_embeddings=64)
LLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=4, num_attention_heads=16,
             num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048)

MODELS = {spec.name: spec for spec in (
    ModelSpec("llama", "LlamaForCausalLM", "LlamaConfig", LLAMA, TINY_DECODER),
    # q/k/v projections with biases; 2 KV heads
    ModelSpec("qwen2", "Qwen2ForCausalLM", "Qwen2Config", {**LLAMA, "num_key_value_heads": 2}, TINY_DECODER),
    # a banded (sliding-window) causal mask
    ModelSpec("mistral", "MistralForCausalLM", "MistralConfig",
              {**LLAMA, "sliding_window": 256}, {**TINY_DECODER, "sliding_window": 8}),
    # LayerNorm, learned positions, tied embeddings, GELU (tanh), Conv1D projections
    ModelSpec("gpt2", "GPT2LMHeadModel", "GPT2Config",
              dict(n_embd=1024, n_layer=4, n_head=16, vocab_size=50257, n_positions=1024),
              dict(n_embd=64, n_layer=1, n_head=4, vocab_size=256, n_positions=64, bos_token_id=0,
                   eos_token_id=0)),
    # an encoder: bidirectional attention with a padding mask
    ModelSpec("bert", "BertModel", "BertConfig",
              dict(hidden_size=1024, num_hidden_layers=4, num_attention_heads=16, intermediate_size=4096),
              dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                   vocab_size=256, max_position_embeddings=64),
              batch=8, padded=True, training_class="BertForMaskedLM"),
    # parallel attention and MLP after one LayerNorm, partial rotary embeddings, biases
    ModelSpec("phi", "PhiForCausalLM", "PhiConfig",
              dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=32,
                   vocab_size=51200, partial_rotary_factor=0.5, max_position_embeddings=2048),
              {**TINY_DECODER, "num_key_value_heads": 4, "partial_rotary_factor": 0.5}),
    # head dim 256, one KV head, GeGLU, scaled embeddings, RMSNorm's (1 + weight)
    ModelSpec("gemma", "GemmaForCausalLM", "GemmaConfig",
              {**LLAMA, "num_attention_heads": 8, "num_key_value_heads": 1, "head_dim": 256},
              {**TINY_DECODER, "head_dim": 16}),
    # Gemma's block with soft-capped attention and logits, alternating sliding-window layers
    ModelSpec("gemma2", "Gemma2ForCausalLM", "Gemma2Config",
              {**LLAMA, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
               "sliding_window": 256},
              {**TINY_DECODER, "head_dim": 16, "sliding_window": 8}),
    # RMSNorm on queries and keys (per head)
    ModelSpec("qwen3", "Qwen3ForCausalLM", "Qwen3Config", {**LLAMA, "head_dim": 128},
              {**TINY_DECODER, "head_dim": 16}),
    # fused qkv and gate/up projections
    ModelSpec("phi3", "Phi3ForCausalLM", "Phi3Config", {**LLAMA, "pad_token_id": 0},
              {**TINY_DECODER, "pad_token_id": 0}),
    # parallel attention and MLP, partial rotary, LayerNorms with biases
    ModelSpec("gpt_neox", "GPTNeoXForCausalLM", "GPTNeoXConfig",
              dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=4, num_attention_heads=16,
                   vocab_size=50432, max_position_embeddings=2048),
              {**TINY_DECODER, "num_key_value_heads": 4}),
    # learned positions with an offset, ReLU MLP, pre-LayerNorm
    ModelSpec("opt", "OPTForCausalLM", "OPTConfig",
              dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=4, num_attention_heads=32,
                   vocab_size=50272, max_position_embeddings=2048, word_embed_proj_dim=2048),
              dict(hidden_size=64, ffn_dim=128, num_hidden_layers=1, num_attention_heads=4, vocab_size=256,
                   max_position_embeddings=64, word_embed_proj_dim=64)),
    # multi-query attention, parallel attention and MLP after one LayerNorm
    ModelSpec("falcon", "FalconForCausalLM", "FalconConfig",
              dict(hidden_size=2048, num_hidden_layers=4, num_attention_heads=32, vocab_size=65024),
              dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, vocab_size=256)),
    # KernelBench level 4's families (its files load pretrained weights; here the same configs, four
    # layers, random weights), at one of each family's shapes there; GPT-Neo, BigBird and Reformer
    # have no SDPA path in transformers 5 (their attention is matmuls and a softmax):
    # GPT-Neo 2.7B's blocks: global and local (window 256) attention alternating, 2047 tokens
    ModelSpec("gpt_neo", "GPTNeoForCausalLM", "GPTNeoConfig",
              dict(hidden_size=2560, num_layers=4, num_heads=20, attention_types=[[["global", "local"], 2]],
                   window_size=256, vocab_size=50257, max_position_embeddings=2048),
              dict(hidden_size=64, num_layers=2, num_heads=4, attention_types=[[["global", "local"], 1]],
                   window_size=8, vocab_size=256, max_position_embeddings=64),
              batch=1, seq=2047, attention="eager"),
    # BigBird-RoBERTa-base: block-sparse attention (blocks of 64, 3 random blocks) over 4095 tokens
    ModelSpec("bigbird", "BigBirdForCausalLM", "BigBirdConfig",
              dict(hidden_size=768, num_hidden_layers=4, num_attention_heads=12, intermediate_size=3072,
                   vocab_size=50358, max_position_embeddings=4096, attention_type="block_sparse",
                   block_size=64, num_random_blocks=3),
              dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
                   vocab_size=256, max_position_embeddings=64),
              batch=1, seq=4095, attention="eager"),
    # ELECTRA-small: all twelve of its narrow layers (hidden 256, embeddings 128 projected up)
    ModelSpec("electra", "ElectraForCausalLM", "ElectraConfig",
              dict(hidden_size=256, embedding_size=128, num_hidden_layers=12, num_attention_heads=4,
                   intermediate_size=1024, vocab_size=30522),
              dict(hidden_size=64, embedding_size=32, num_hidden_layers=1, num_attention_heads=4,
                   intermediate_size=128, vocab_size=256, max_position_embeddings=64),
              batch=32, seq=256),
    # Reformer (enwik8): local and LSH attention alternating, axial positions, reversible layers; a
    # fixed hash seed so every candidate hashes alike
    ModelSpec("reformer", "ReformerModelWithLMHead", "ReformerConfig",
              dict(hidden_size=1024, feed_forward_size=4096, num_attention_heads=8, attention_head_size=128,
                   attn_layers=["local", "lsh", "local", "lsh"], axial_pos_shape=[16, 16],
                   axial_pos_embds_dim=[256, 768], max_position_embeddings=256, local_attn_chunk_length=128,
                   lsh_attn_chunk_length=256, num_buckets=16, num_hashes=4, vocab_size=258, is_decoder=True,
                   hash_seed=0, hidden_act="relu", pad_token_id=0, eos_token_id=2),
              dict(hidden_size=64, feed_forward_size=128, num_attention_heads=2, attention_head_size=32,
                   attn_layers=["local", "lsh"], axial_pos_shape=[4, 4], axial_pos_embds_dim=[32, 32],
                   max_position_embeddings=16, local_attn_chunk_length=8, lsh_attn_chunk_length=8,
                   num_buckets=4, num_hashes=2, vocab_size=258, is_decoder=True, hash_seed=0,
                   pad_token_id=0, eos_token_id=2),
              batch=32, seq=256, attention="eager"),
    # BART-large's decoder as a causal LM (post-LayerNorm blocks, learned positions with an offset)
    ModelSpec("bart", "BartForCausalLM", "BartConfig",
              dict(d_model=1024, encoder_layers=4, decoder_layers=4, encoder_attention_heads=16,
                   decoder_attention_heads=16, encoder_ffn_dim=4096, decoder_ffn_dim=4096, vocab_size=50265,
                   max_position_embeddings=1024),
              dict(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=4,
                   decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128, vocab_size=256,
                   max_position_embeddings=64),
              batch=32, seq=256),
    # a mixture of experts: 8 experts, 2 a token (the routing stays in PyTorch)
    ModelSpec("mixtral", "MixtralForCausalLM", "MixtralConfig",
              {**LLAMA, "intermediate_size": 2816, "num_local_experts": 8, "num_experts_per_tok": 2},
              {**TINY_DECODER, "num_local_experts": 4, "num_experts_per_tok": 2}),
    # Llama 4's text model: rotary embeddings through complex numbers, a routed expert and a shared one a
    # token in every layer, QK-norm on the rotated layers, no rotation every fourth layer
    ModelSpec("llama4", "Llama4ForCausalLM", "Llama4TextConfig",
              {**LLAMA, "intermediate_size": 2816, "intermediate_size_mlp": 5632, "head_dim": 128,
               "num_local_experts": 4, "num_experts_per_tok": 1},
              {**TINY_DECODER, "head_dim": 16, "intermediate_size_mlp": 128, "num_local_experts": 2,
               "num_experts_per_tok": 1}),
)}
# fmt: on


@dataclass(frozen=True)
class Timing:
    """One candidate on one model (or on the microbenchmark): what was measured, or why not."""

    candidate: str
    median_ms: float | None = None
    wall_ms: float | None = None
    gpu_ms: float | None = None
    kernels: float | None = None
    first_call_s: float | None = None
    cached_s: float | None = None
    err_eager: float | None = None
    err_fp64: float | None = None
    note: str = ""
    error: str | None = None


@dataclass
class ModelResult:
    """A model's row group in the table: its name, shape and one timing per candidate."""

    model: str
    shape: str
    timings: list[Timing] = field(default_factory=list)


def tilefuse_takes_mode() -> bool:
    """Whether `tilefuse.compile` accepts `mode=` (reduce-overhead: CUDA graph replay)."""
    return "mode" in inspect.signature(tilefuse.compile).parameters


def compilers(
    skip_torch_compile: bool, skip_reduce_overhead: bool = False
) -> dict[str, Callable[[Callable], Callable] | str]:
    """Each candidate's compile function, in measuring order, or why it does not run."""
    no_torch_compile, no_graphs = "skipped (--no-torch-compile)", "skipped (--no-reduce-overhead)"
    subject_graphs = (
        (lambda fn: tilefuse.compile(fn, mode="reduce-overhead"))
        if tilefuse_takes_mode()
        else "n/a: tilefuse.compile takes no mode"
    )
    compile_graphs = lambda fn: torch.compile(fn, mode="reduce-overhead")  # noqa: E731
    if skip_reduce_overhead:
        subject_graphs = compile_graphs = no_graphs
    return {
        EAGER: lambda fn: fn,
        SUBJECT: tilefuse.compile,
        SUBJECT_RO: subject_graphs,
        COMPILE: no_torch_compile if skip_torch_compile else torch.compile,
        COMPILE_RO: no_torch_compile if skip_torch_compile else compile_graphs,
    }


def build_model(spec: ModelSpec, tiny: bool, device: torch.device, dtype: torch.dtype):
    """The model (seeded random weights, eval mode, SDPA attention where the family has it) and its
    keyword inputs."""
    config_class = getattr(transformers, spec.config_class)
    sizes = spec.tiny if tiny else spec.full
    config = config_class(**sizes, attn_implementation=spec.attention, use_cache=False)
    torch.manual_seed(0)
    with torch.device(device):
        model = getattr(transformers, spec.model_class)(config)
    model = model.to(dtype).eval()
    batch, seq = spec.shape(tiny)
    generator = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, seq), generator=generator)}
    if spec.padded:  # every row has some tokens, most have padding
        inputs["attention_mask"] = (~key_padding(batch, seq)).long()
    return model, {k: v.to(device) for k, v in inputs.items()}


def output_tensor(out) -> torch.Tensor:
    """What a call is checked on: the logits, or an encoder's last hidden state."""
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_ms(fn: Callable[[], object], device: torch.device, budget_s: float = 0.2) -> float:
    """Milliseconds per call of back-to-back calls of a warm `fn`, synchronized once at the end:
    what a loop over the model sees (the host's time per call where the host is the bottleneck).
    On a CPU, CPU_REPEATS calls will do."""
    least = CPU_REPEATS if device.type == "cpu" else 3
    synchronize(device)
    calls, start = 0, time.perf_counter()
    while calls < 1000 and (calls < least or time.perf_counter() - start < budget_s):
        fn()
        calls += 1
    synchronize(device)
    return (time.perf_counter() - start) / calls * 1e3


def kernel_stats(events: Sequence, calls: int) -> tuple[float, float]:
    """GPU milliseconds and launches per call, from profiler events of `calls` calls.

    Every device-side event counts: kernels, and the memcpy/memset a call launches.
    """
    from torch.autograd import DeviceType

    device_events = [e for e in events if e.device_type == DeviceType.CUDA]
    gpu_us = sum(e.time_range.elapsed_us() for e in device_events)
    return gpu_us / calls / 1e3, len(device_events) / calls


def profile_call(fn: Callable[[], object], device: torch.device) -> tuple[float | None, float | None]:
    """GPU ms and kernel launches per call (torch.profiler over a few calls); none off the GPU."""
    if device.type != "cuda":
        return None, None
    from torch.profiler import ProfilerActivity, profile

    fn()
    synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(PROFILED_CALLS):
            fn()
        synchronize(device)
    return kernel_stats(prof.events(), PROFILED_CALLS)


def host_us_per_kernel(wall: float | None, gpu: float | None, kernels: float | None) -> float | None:
    """(wall − GPU time) / kernels, in µs: the host time per launch the GPU did not hide."""
    if wall is None or gpu is None or not kernels:
        return None
    return (wall - gpu) * 1e3 / kernels


def tilefuse_summary(compiled: Callable) -> str:
    """Kernels, partitions, fallbacks, cache hits and CUDA graph captures of a tilefuse-compiled
    callable."""
    reports = getattr(compiled, "tilefuse_reports", [])
    kernels = sum(1 for r in reports for p in r["partitions"] for g in p["groups"] if g["kernel"])
    note = f"{kernels} kernel(s); {tilefuse_note(compiled)}; cache {report_values(reports, 'cache')}"
    graphs = report_values(reports, "cudagraphs")
    return note + (f"; CUDA graphs: {graphs}" if graphs else "") + compile_breakdown(reports)


def compile_breakdown(reports: Sequence[dict]) -> str:
    """Where the compile time went (seconds summed over graphs: capture, passes, codegen, Triton,
    the rest), from the reports' `compile_seconds`; "" where the reports do not say."""
    parts: dict[str, float] = {}
    for seconds in (r["compile_seconds"] for r in reports if r.get("compile_seconds")):
        for part, value in seconds.items():
            if part != "total" and value is not None:
                value = sum(value.values()) if isinstance(value, dict) else value
                parts[part] = parts.get(part, 0.0) + value
    return "; compile s: " + ", ".join(f"{k} {v:.2f}" for k, v in parts.items()) if parts else ""


def report_values(reports: Sequence[dict], key: str) -> str:
    """The distinct values of `key` over a compile's graph reports, comma-separated."""
    return ",".join(sorted({str(r[key]) for r in reports if key in r}))


def measure(
    candidate: str,
    compile_fn: Callable[[Callable], Callable],
    fn: Callable,
    call: Callable[[Callable], object],
    device: torch.device,
    refs: dict[str, torch.Tensor],
    keep: dict[str, Callable] | None = None,
) -> Timing:
    """Compile `fn` with `compile_fn`, time its first call, check it against `refs`, then time it.

    `call(compiled)` runs one call and returns the tensor compared with each reference
    (keyed "eager" and "fp64"; either may be missing). The compiled callable is kept in `keep`
    (by candidate) for `interleaved_medians`.
    """
    release_memory(device)
    try:
        start = time.perf_counter()
        compiled = compile_fn(fn)
        out = call(compiled)
        synchronize(device)
        first_call_s = time.perf_counter() - start
        errors = {k: relative_error(out, ref) for k, ref in refs.items()}
        del out
        for _ in range(SETTLE_CALLS if device.type == "cuda" else 0):
            call(compiled)
        median = time_ms(lambda: call(compiled), device, cpu_repeats=CPU_REPEATS)
        wall = wall_ms(lambda: call(compiled), device)
        gpu, kernels = profile_call(lambda: call(compiled), device)
    except Exception as exc:  # a failing candidate is a table cell, never the end of the run
        return Timing(candidate, error=describe_error(exc))
    if keep is not None:
        keep[candidate] = compiled
    return Timing(
        candidate,
        median_ms=median,
        wall_ms=wall,
        gpu_ms=gpu,
        kernels=kernels,
        first_call_s=None if candidate == EAGER else first_call_s,
        err_eager=errors.get("eager"),
        err_fp64=errors.get("fp64"),
        note=tilefuse_summary(compiled) if candidate in (SUBJECT, SUBJECT_RO) else "",
    )


@contextlib.contextmanager
def fresh_caches(folder: Path) -> Iterator[dict[str, str]]:
    """Point tilefuse's, Triton's and Inductor's on-disk caches at empty folders under `folder`;
    yields the variables set, for a child process that should find what this one cached."""
    values = {name: str(folder / name.lower()) for name in CACHE_VARIABLES}
    saved = {name: os.environ.get(name) for name in (*CACHE_VARIABLES, "TILEFUSE_CACHE")}
    os.environ.update(values, TILEFUSE_CACHE="1")
    # a Triton that read its cache folder before (knobs) may not read the variable again: said to it too,
    # or this process compiles into the old folder and the cache-hit child finds nothing
    knobs = getattr(getattr(triton, "knobs", None), "cache", None)
    saved_dir = getattr(knobs, "dir", None)
    if knobs is not None:
        knobs.dir = values["TRITON_CACHE_DIR"]
    try:
        yield values
    finally:
        if knobs is not None and saved_dir is not None:
            knobs.dir = saved_dir
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def cached_first_call(
    spec: ModelSpec, tiny: bool, dtype: torch.dtype, env: dict[str, str]
) -> tuple[float, str]:
    """Seconds of tilefuse's first call in a new process that finds the caches, and whether its graph
    cache hit: the second of two child processes run with the same cache folders (run as this module
    with a hidden flag). One child was not enough: on the H200 it found this process's graph cache but
    compiled the Triton kernels again (bert: 6.95 s of Triton against 0.69 s in a second process run by
    hand; why was not found: this process points Triton at the fresh folder through its knobs, after
    importing it). Without a GPU (Triton's interpreter: no compiled kernels to cache) one child does."""
    if torch.cuda.is_available():
        _cached_child(spec, tiny, dtype, env)
    return _cached_child(spec, tiny, dtype, env)


def _cached_child(spec: ModelSpec, tiny: bool, dtype: torch.dtype, env: dict[str, str]) -> tuple[float, str]:
    command = [
        sys.executable,
        "-m",
        __spec__.name,
        "--cached-compile-child",
        spec.name,
        "--dtype",
        str(dtype).removeprefix("torch."),
        *(["--tiny"] if tiny else []),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=CACHED_CHILD_TIMEOUT_S, env={**os.environ, **env}
    )
    if done.returncode != 0:
        raise RuntimeError(f"child process failed: {done.stderr.strip().splitlines()[-1:]}")
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    return answer["first_call_s"], answer["cache"]


def cached_compile_child(name: str, tiny: bool, dtype: torch.dtype) -> None:
    """The child of `cached_first_call`: build the model, time tilefuse's first call, print JSON."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, inputs = build_model(MODELS[name], tiny, device, dtype)
    with torch.no_grad():
        start = time.perf_counter()
        compiled = tilefuse.compile(model)
        compiled(**inputs)
        synchronize(device)
        seconds = time.perf_counter() - start
    reports = compiled.tilefuse_reports
    cache = report_values(reports, "cache") + compile_breakdown(reports)
    print(json.dumps({"first_call_s": seconds, "cache": cache}))


def float64_reference(model: torch.nn.Module, inputs: dict) -> torch.Tensor:
    """The output of a float64 copy of `model` on the same inputs. A mixture of experts' copy runs its
    experts one by one (transformers' "eager" experts): the grouped GEMM (`torch._grouped_mm`, which
    Mixtral's experts call on a GPU) takes no float64."""
    reference = copy.deepcopy(model).to(torch.float64)
    config = getattr(reference, "config", None)
    if getattr(config, "_experts_implementation", None) not in (None, "eager"):
        config._experts_implementation = "eager"  # the copy's config: the model's is untouched
    return output_tensor(reference(**inputs)).double()


def run_model(
    spec: ModelSpec, args: argparse.Namespace, device: torch.device, dtype: torch.dtype, cache_root: Path
) -> ModelResult:
    """Every candidate on one model, with its on-disk caches empty at the start."""
    batch, seq = spec.shape(args.tiny)
    result = ModelResult(spec.name, f"{batch}x{seq}" + (" padded" if spec.padded else ""))
    try:
        model, inputs = build_model(spec, args.tiny, device, dtype)
    except Exception as exc:  # a model transformers cannot build here is a row of errors
        result.timings = [Timing(c, error=f"model not built: {describe_error(exc)}") for c in CANDIDATES]
        return result
    with torch.no_grad(), fresh_caches(cache_root / spec.name) as cache_env:
        timings = measure_model(spec, model, inputs, args.no_torch_compile, device, args.no_reduce_overhead)
        subject = timings[SUBJECT]
        if subject.error is None and not args.no_cached:
            try:
                seconds, cache = cached_first_call(spec, args.tiny, dtype, cache_env)
                note = f"{subject.note}; new process: cache {cache}"
                timings[SUBJECT] = dataclasses.replace(subject, cached_s=seconds, note=note)
            except Exception as exc:
                note = f"{subject.note}; cached: {describe_error(exc)}"
                timings[SUBJECT] = dataclasses.replace(subject, note=note)
    result.timings = [timings[c] for c in CANDIDATES]
    return result


def measure_model(
    spec: ModelSpec,
    model: torch.nn.Module,
    inputs: dict,
    skip_torch_compile: bool,
    device: torch.device,
    skip_reduce_overhead: bool = False,
) -> dict[str, Timing]:
    """Each candidate on `model(**inputs)`, checked against eager and a float64 copy."""
    call = lambda compiled: output_tensor(compiled(**inputs))  # noqa: E731
    refs, ref_note = {}, ""
    try:
        refs["eager"] = call(model).clone()
        refs["fp64"] = float64_reference(model, inputs)
    except Exception as exc:  # no float64 copy (out of memory): the other columns still stand
        ref_note = f"reference: {describe_error(exc)}"
    timings = measure_candidates(
        spec.name, model, call, refs, skip_torch_compile, device, skip_reduce_overhead
    )
    if ref_note:
        timings[EAGER] = dataclasses.replace(timings[EAGER], note=ref_note)
    return timings


def measure_candidates(
    label: str,
    fn: Callable,
    call: Callable[[Callable], object],
    refs: dict[str, torch.Tensor],
    skip_torch_compile: bool,
    device: torch.device,
    skip_reduce_overhead: bool = False,
) -> dict[str, Timing]:
    """Every candidate's `measure` of `fn`, progress on stderr; a skipped one says why in its note."""
    timings, kept = {}, {}
    for candidate, compile_fn in compilers(skip_torch_compile, skip_reduce_overhead).items():
        if isinstance(compile_fn, str):
            timings[candidate] = Timing(candidate, note=compile_fn)
            continue
        timings[candidate] = timing = measure(candidate, compile_fn, fn, call, device, refs, kept)
        shown = timing.error or f"{timing.median_ms:.4g} ms, first call {timing.first_call_s or 0:.1f} s"
        print(f"[{label}] {candidate}: {shown}", file=sys.stderr, flush=True)
    if device.type == "cuda":
        timings = interleaved_medians(timings, kept, call, device)
    return timings


ROUNDS = 3  # interleaved timing rounds after every candidate's own (GPU only)


def interleaved_medians(
    timings: dict[str, Timing],
    kept: dict[str, Callable],
    call: Callable[[Callable], object],
    device: torch.device,
    rounds: int = ROUNDS,
    timer: Callable[[Callable[[], object], torch.device], float] = time_ms,
) -> dict[str, Timing]:
    """Each timed candidate's median taken again in `rounds` rounds that visit the candidates in
    turn; its median becomes the median of its own first timing and the rounds', and its note lists
    them. The host's speed drifts over minutes (a model's eager median moved 6.4 -> 10.5 ms between
    two runs on one H100): candidates timed minutes apart, one after another, each met a different
    host, and one slow stretch decided a row. Interleaved, a drift reaches every candidate alike,
    and a spread in the note shows it."""
    seen = {c: [t.median_ms] for c, t in timings.items() if c in kept and t.median_ms is not None}
    for _ in range(rounds):
        for candidate in seen:
            try:
                seen[candidate].append(timer(lambda c=kept[candidate]: call(c), device))
            except Exception:  # noqa: BLE001 (its first timing stands; the note says so)
                seen[candidate].append(None)
    out = dict(timings)
    for candidate, values in seen.items():
        timed = [v for v in values if v is not None]
        listed = ", ".join("failed" if v is None else f"{v:.4g}" for v in values)
        note = f"medians (its own, then {len(values) - 1} interleaved rounds): {listed} ms"
        old = timings[candidate].note
        out[candidate] = dataclasses.replace(
            timings[candidate], median_ms=statistics.median(timed), note=f"{old}; {note}" if old else note
        )
    return out


def pointwise_chain(x: torch.Tensor) -> torch.Tensor:
    """Elementwise ops between reductions over alternating dims: no two links share a kernel."""
    for _ in range(CHAIN_LINKS):
        x = torch.tanh(x - x.amax(dim=0, keepdim=True))
        x = torch.sigmoid(x * x.sum(dim=1, keepdim=True))
    return x


def run_overhead_bench(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, cache_root: Path
) -> list[Timing]:
    """Every candidate on `pointwise_chain` of a small tensor, where launches are the cost."""
    torch.manual_seed(0)
    x = torch.randn(CHAIN_SHAPE, device=device, dtype=dtype)
    call = lambda compiled: compiled(x)  # noqa: E731
    with torch.no_grad(), fresh_caches(cache_root / "overhead"):
        refs = {"eager": pointwise_chain(x), "fp64": pointwise_chain(x.double())}
        timings = measure_candidates("overhead", pointwise_chain, call, refs, args.no_torch_compile, device)
    release_memory(device)
    return [timings[c] for c in CANDIDATES]


def fmt_cell(value: float | None, spec: str) -> str:
    """A table cell: `value` formatted, or "—" for nothing measured."""
    return "—" if value is None else format(value, spec)


def _cells(t: Timing, reference_ms: float | None) -> list[str]:
    """The measured cells of one timing, shared by both tables."""
    speedup = reference_ms / t.median_ms if reference_ms and t.median_ms else None
    return [
        fmt_cell(t.median_ms, ".4g"),
        fmt_cell(speedup, ".2f"),
        fmt_cell(t.wall_ms, ".4g"),
        fmt_cell(t.gpu_ms, ".4g"),
        fmt_cell(t.kernels, ".4g"),
        fmt_cell(host_us_per_kernel(t.wall_ms, t.gpu_ms, t.kernels), ".3g"),
        fmt_cell(t.first_call_s, ".3g"),
    ]


def _notes(t: Timing) -> str:
    return (f"FAILED: {t.error}" if t.error else t.note).replace("|", "\\|")


def render_models_table(results: Sequence[ModelResult]) -> str:
    """A markdown row per model and candidate; failed cells are "—" with the error in notes."""
    lines = [
        "| model | candidate | median ms | vs eager | wall ms | GPU ms | kernels | host µs/kernel "
        "| first call s | cached s | err vs eager | err vs fp64 | notes |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for result in results:
        eager_ms = next((t.median_ms for t in result.timings if t.candidate == EAGER), None)
        for t in result.timings:
            cells = [
                f"{result.model} {result.shape}",
                t.candidate,
                *_cells(t, eager_ms),
                fmt_cell(t.cached_s, ".3g"),
                fmt_cell(t.err_eager, ".2e"),
                fmt_cell(t.err_fp64, ".2e"),
                _notes(t),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_overhead_table(timings: Sequence[Timing]) -> str:
    """The microbenchmark as a markdown row per candidate."""
    lines = [
        "| candidate | median ms | vs eager | wall ms | GPU ms | kernels | host µs/kernel | first call s "
        "| err vs fp64 | notes |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    eager_ms = next((t.median_ms for t in timings if t.candidate == EAGER), None)
    for t in timings:
        cells = [t.candidate, *_cells(t, eager_ms), fmt_cell(t.err_fp64, ".2e"), _notes(t)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def overhead_verdict(timings: Sequence[Timing]) -> str:
    """One line: tilefuse's host time per kernel against the target."""
    lines = []
    for t in timings:
        host = host_us_per_kernel(t.wall_ms, t.gpu_ms, t.kernels)
        if t.candidate in (SUBJECT, SUBJECT_RO) and host is not None:
            verdict = "met" if host <= HOST_TARGET_US else "NOT met"
            lines.append(
                f"{t.candidate}: {host:.3g} µs per kernel, target ≤ {HOST_TARGET_US:g} µs: {verdict}"
            )
    return "; ".join(lines) or f"target ≤ {HOST_TARGET_US:g} µs per kernel: not measured (no GPU times)"


LEGEND = [
    "- median ms: triton.testing.do_bench median (L2 flushed before each call; CPU: wall-clock median); "
    "on a GPU, the median of each candidate's own timing and 3 more rounds that visit the candidates in "
    "turn (the notes list them: a spread is the host's drift); "
    "vs eager = eager median / this median (> 1: faster than eager)",
    "- wall ms: back-to-back calls, one synchronize at the end, per call; GPU ms and kernels: per call, "
    "summed over the device events (kernels, memcpy, memset) torch.profiler records "
    f"in {PROFILED_CALLS} calls",
    "- host µs/kernel = (wall ms − GPU ms) / kernels: host time per launch the GPU did not hide",
    "- first call s: compile + first run, with tilefuse's, Triton's and Inductor's on-disk caches empty "
    "for this model (reduce-overhead rows reuse what the default row compiled in this process); "
    "cached s (tilefuse): the first call in a new process that finds those caches (the second of two)",
    "- err vs eager / fp64: ‖out − ref‖ / ‖ref‖ on the logits (BERT: last hidden state), against eager "
    "in this dtype and against a float64 copy of the model",
    "- notes (tilefuse): its kernels, graphs, partitions, fallbacks (what ran in PyTorch, first reason) "
    "and whether the compile hit its graph cache",
]


def render_report(header: list[str], models: str, overhead: str, verdict: str) -> str:
    """The whole results file: header, the model table, the microbenchmark, the legend."""
    return "\n".join(
        [
            "# tilefuse on transformers models",
            "",
            "Rewritten by every run.",
            "",
            *header,
            "",
            "## Models (prefill / forward)",
            "",
            models,
            "",
            f"## Host overhead per kernel ({CHAIN_LINKS * 2} reductions, each with its elementwise ops, "
            f"on {'x'.join(map(str, CHAIN_SHAPE))})",
            "",
            overhead,
            "",
            verdict,
            "",
            "## Legend",
            "",
            *LEGEND,
            "",
        ]
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line; `--models` takes a comma-separated subset of MODELS."""
    parser = argparse.ArgumentParser(
        prog="python -m tilefuse.benchmarks.transformers_models", description=__doc__.split("\n")[0]
    )
    add_model_arguments(parser, DEFAULT_OUT, DEFAULT_MODELS)
    parser.add_argument(
        "--no-cached", action="store_true", help="skip the first call of a new process (cached s column)"
    )
    parser.add_argument("--no-overhead", action="store_true", help="skip the host-overhead microbenchmark")
    parser.add_argument(
        "--no-reduce-overhead", action="store_true", help="leave the reduce-overhead (CUDA graph) rows out"
    )
    parser.add_argument("--cached-compile-child", metavar="MODEL", help=argparse.SUPPRESS)
    return check_model_args(parser, parser.parse_args(argv))


def add_model_arguments(
    parser: argparse.ArgumentParser, default_out: Path, default_models: Sequence[str]
) -> None:
    """The options every model benchmark takes: --out, --models, --dtype, --tiny, --no-torch-compile."""
    parser.add_argument(
        "--out", type=Path, help=f"markdown file to write (default {default_out}; none with --tiny)"
    )
    parser.add_argument(
        "--models", default=",".join(default_models), help=f"comma-separated, of: {', '.join(MODELS)}"
    )
    parser.add_argument(
        "--dtype", choices=("bfloat16", "float32"), help="default bfloat16; float32 with --tiny"
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configs, runnable on a CPU")
    parser.add_argument("--no-torch-compile", action="store_true", help="leave the torch.compile rows out")


def model_dtype(args: argparse.Namespace) -> torch.dtype:
    """The dtype `add_model_arguments`' options ask for: --dtype, else float32 with --tiny (a CPU)
    and bfloat16 on a GPU."""
    return getattr(torch, args.dtype or ("float32" if args.tiny else "bfloat16"))


def check_model_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """`args.models` as a list of known model names, and a GPU unless `--tiny` (or the parser exits)."""
    args.models = [m for m in args.models.split(",") if m]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; known: {', '.join(MODELS)}")
    if not args.tiny and not torch.cuda.is_available():
        parser.error("realistic sizes need a CUDA device; --tiny runs tiny configs on the CPU")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    """Run the microbenchmark, then the selected models, rewriting the results file after each
    (a run killed at a time limit keeps what it measured); print the report last."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    dtype = model_dtype(args)
    if args.cached_compile_child:
        cached_compile_child(args.cached_compile_child, args.tiny, dtype)
        return
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    header = [
        *environment_lines(__spec__.name, device, dtype, argv),
        f"- transformers {transformers.__version__}; models from configs with seeded random weights, "
        'eval mode, `attn_implementation="sdpa"` (GPT-Neo, BigBird, Reformer: "eager", they have no SDPA '
        "path), `torch.no_grad()`",
    ]
    out = args.out or (None if args.tiny else DEFAULT_OUT)
    results: list[ModelResult] = []
    started = time.perf_counter()

    def write() -> str:
        report = render_report(
            header, render_models_table(results), render_overhead_table(overhead), overhead_verdict(overhead)
        )
        if out is not None:
            out.write_text(report)
        print(f"[{time.perf_counter() - started:.0f} s since the start]", file=sys.stderr, flush=True)
        return report

    with tempfile.TemporaryDirectory(prefix="tilefuse-models-") as root:
        overhead = [] if args.no_overhead else run_overhead_bench(args, device, dtype, Path(root))
        report = write()
        for name in args.models:
            results.append(run_model(MODELS[name], args, device, dtype, Path(root)))
            release_memory(device)
            report = write()
    print(report)


if __name__ == "__main__":
    main()
