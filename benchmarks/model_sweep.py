"""Every causal-LM and encoder-decoder text family of the installed `transformers`, in a small automatic
config: tilefuse vs eager.

    python -m tilefuse.benchmarks.model_sweep [--what forward,training,generate] [--dtype float32|bfloat16]
        [--device cpu|cuda] [--families NAME,...] [--start NAME] [--hidden 64] [--tokens 12]
        [--isolate] [--timeout 600] [--out FILE]

A correctness sweep, not a timing: the benchmark suites time a few families at real sizes, and a
user's model is more often one they do not cover. Every `*ForCausalLM` class that transformers
exports (and the `*LMHeadModel` ones: GPT-2, CTRL, OpenAI GPT, BERT), and every encoder-decoder model of
token ids (T5, BART, Pegasus, M2M100, Marian...: `seq2seq_names`), is built from its config class
with the common size fields shrunk (`small_config`: hidden `--hidden`, 2 layers, 4 query heads over 2
key-value heads, a 256-token vocabulary, 4 experts of which 2 are routed, small state for recurrent
and linear-attention layers, dropout and LayerDrop off; a family whose layers alternate linear and full
attention keeps one of each), random weights (seeded; nothing is downloaded). For each family and
each `--what`:

- `forward`: logits of `tilefuse.compile(model)` under `torch.no_grad()`, called twice (an
  encoder-decoder's decoder reads the encoder's ids; its training labels are those ids too);
- `training`: the parameters' gradients after one forward + backward through the compiled model
  (with `TILEFUSE_TRAINING=compile` the backward graph is compiled too); a parameter that one side
  leaves without a gradient counts as zeros (torch.compile, like tilefuse, gives zeros to a
  parameter whose output the loss does not read, where eager leaves None);
- `generate`: greedy `generate` with the model's forward compiled, 6 new tokens.

Each is compared with eager on the same weights and inputs: float32 within `TOLERANCE`; bfloat16
against a float64 copy of the model (float32 where float64 has no kernels: grouped expert matmuls),
wrong where tilefuse's error exceeds 10x eager's plus `TOLERANCE` (generate compares tokens; in
bfloat16 a token may flip on a near-tie, reported as such, not as wrong). A family whose config or
eager run fails is reported as `config` (the automatic config does not suit it: not a tilefuse
result); a result that differs from eager's but matches `torch.compile(backend="eager")` as
`dynamo` (the graph Dynamo captures is not what eager runs: not a tilefuse result either).
`--isolate` runs each family in a child process with `--timeout`, so a fault that poisons the process
(a CUDA illegal address, the OOM killer) costs one row. The table is rewritten after each family.
"""

from __future__ import annotations

import argparse
import copy
import functools
import inspect
import json
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

import tilefuse

from .run import describe_error, environment_lines, release_memory
from .training import DROPOUT_NAMES, relative

WHATS = ("forward", "training", "generate")
MODULE = "tilefuse.benchmarks.model_sweep"
LM_HEAD_MODELS = ("GPT2LMHeadModel", "CTRLLMHeadModel", "OpenAIGPTLMHeadModel", "BertLMHeadModel")
TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
MAX_PARAMETERS = 30_000_000  # a config the size fields above do not reach (a composite model): skipped
DROPOUTS = (*DROPOUT_NAMES, "activation_dropout")
NON_TEXT_INPUTS = {"input_features", "pixel_values", "input_values", "flattened_patches"}


def family_names() -> list[str]:
    """The causal-LM classes transformers exports (`*ForCausalLM`, and the older `*LMHeadModel` spelling
    of GPT-2, CTRL, OpenAI GPT, BERT) and its encoder-decoder text models (`seq2seq_names`), sorted."""
    names = [n for n in dir(transformers) if n.endswith("ForCausalLM") and not n.startswith("Auto")]
    return sorted(names + [n for n in LM_HEAD_MODELS if hasattr(transformers, n)] + seq2seq_names())


@functools.cache
def seq2seq_names() -> list[str]:
    """Encoder-decoder models of token ids (`*ForConditionalGeneration` and Marian's `MarianMTModel`
    whose config is encoder-decoder and whose forward takes `input_ids` and `decoder_input_ids`, not
    audio or images): T5, BART, Pegasus, M2M100, ..."""
    found = []
    for name in dir(transformers):
        seq2seq_spelling = name.endswith("ForConditionalGeneration") or name == "MarianMTModel"
        if not seq2seq_spelling or name.startswith("Auto"):
            continue
        try:
            model_class = getattr(transformers, name)
            if not getattr(model_class.config_class(), "is_encoder_decoder", False):
                continue
            params = set(inspect.signature(model_class.forward).parameters)
        except Exception:  # noqa: BLE001  (a class this install cannot build: not swept)
            continue
        if {"input_ids", "decoder_input_ids"} <= params and not params & NON_TEXT_INPUTS:
            found.append(name)
    return found


def small_sizes(hidden: int) -> dict[str, object]:
    """Size fields (by their names across families) for a small model of width `hidden`."""
    head = max(8, hidden // 4)
    return dict(
        hidden_size=hidden, d_model=hidden, n_embd=hidden, intermediate_size=2 * hidden, ffn_dim=2 * hidden,
        num_hidden_layers=2, n_layer=2, num_layers=2, num_attention_heads=4, n_head=4, num_key_value_heads=2,
        head_dim=head, vocab_size=256, max_position_embeddings=256, n_positions=256,
        moe_intermediate_size=hidden // 2, expert_intermediate_size=hidden // 2, num_experts=4,
        num_local_experts=4, n_routed_experts=4, num_experts_per_tok=2,
        shared_expert_intermediate_size=hidden,
        num_shared_experts=1, n_shared_experts=1, first_k_dense_replace=1, n_group=1, topk_group=1,
        sliding_window=8, kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=head, qk_nope_head_dim=head,
        v_head_dim=head, index_head_dim=16, index_n_heads=2, index_topk=8, o_lora_rank=32,
        linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16,
        linear_conv_kernel_dim=4, ssm_state_size=16, state_size=16, mamba_d_state=16, mamba_d_ssm=hidden,
        mamba_n_heads=8, mamba_d_head=max(1, hidden // 8), mamba_headdim=8, mamba_chunk_size=8, chunk_size=8,
        time_step_rank=8, mamba_dt_rank=8, rotary_dim=8, pad_token_id=0, bos_token_id=1, eos_token_id=2,
        # encoder-decoder models' spellings
        d_ff=2 * hidden, d_kv=head, num_decoder_layers=2, num_heads=4, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * hidden,
        decoder_ffn_dim=2 * hidden, decoder_start_token_id=2,
    )  # fmt: skip


def small_config(name: str, hidden: int):
    """The family's config with the size fields it has set small (`small_sizes`), dropout off."""
    config_class = getattr(transformers, name).config_class
    defaults = config_class().to_dict()
    options = {k: v for k, v in small_sizes(hidden).items() if k in defaults}
    if "layer_types" in defaults:
        options["layer_types"] = None  # derived again from the layer count
        kinds = defaults["layer_types"]
        if isinstance(kinds, list) and "linear_attention" in kinds:  # one linear and one full layer
            options["layer_types"] = ["linear_attention", next(k for k in kinds if k != "linear_attention")]
    if "mlp_layer_types" in defaults:
        options["mlp_layer_types"] = None
    if "attn_layer_period" in defaults:  # Jamba: its attention layer inside the two
        options.update(attn_layer_period=2, attn_layer_offset=1)
    if "attn_layer_indices" in defaults:
        options["attn_layer_indices"] = [1]
    if "block_types" in defaults:
        options["block_types"] = ["recurrent", "attention"]
    # multi-head latent attention: as many key heads as queries
    if defaults.get("qk_rope_head_dim") is not None:
        options["num_key_value_heads"] = options.get("num_attention_heads", 4)
    config = config_class(**options)
    # every dropout rate the config has, whatever its spelling (SeedOss's `residual_dropout` was left
    # on: its training row compared two different random masks), and LayerDrop's (M2M100's layers
    # skipped at random in training)
    rates = [k for k in config.to_dict() if "dropout" in k or "pdrop" in k or "layerdrop" in k]
    for key in {*DROPOUTS, *rates}:
        if isinstance(getattr(config, key, None), float):
            setattr(config, key, 0.0)
    if getattr(config, "is_encoder_decoder", False):  # the decoder's first token within the vocabulary
        start = getattr(config, "decoder_start_token_id", None)
        if not isinstance(start, int) or start >= getattr(config, "vocab_size", 256):
            config.decoder_start_token_id = 2 if config.pad_token_id is None else config.pad_token_id
    return config


@dataclass
class SweepRow:
    family: str
    what: str
    status: str  # ok, wrong, dynamo, crash, config, skipped, timeout
    error: float | None = None  # tilefuse's relative error (against eager; bf16: against float64)
    eager_error: float | None = None  # bf16: eager's against float64
    graphs: int | None = None
    partitions: int | None = None
    kernels: int | None = None
    seconds: float | None = None
    note: str = ""


def _graph_counts(compiled: object) -> dict[str, int]:
    reports = getattr(compiled, "tilefuse_reports", [])
    parts = [p for r in reports for p in r.get("partitions", [])]
    kernels = sum(1 for p in parts for g in p.get("groups", []) if g.get("kernel"))
    return {"graphs": len(reports), "partitions": len(parts), "kernels": kernels}


def _verdict(err: float, eager_err: float | None, dtype: torch.dtype) -> str:
    limit = TOLERANCE[dtype] if eager_err is None else 10 * eager_err + TOLERANCE[dtype]
    return "ok" if err <= limit else "wrong"


def _gradients(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double()
                      for p in model.parameters() if p.requires_grad])  # fmt: skip


def run_family(
    name: str, what: str, dtype: torch.dtype, device: torch.device, hidden: int, tokens: int
) -> SweepRow:
    """One family, one `what`: built, run eagerly, then through tilefuse; never raises."""
    start = time.perf_counter()
    try:
        config = small_config(name, hidden)
        model_class = getattr(transformers, name)
        with torch.device("meta"):
            count = sum(p.numel() for p in model_class(config).parameters())
        if count > MAX_PARAMETERS:
            return SweepRow(
                name, what, "skipped", note=f"{count / 1e6:.0f}M parameters with the small config"
            )
        torch.manual_seed(0)
        with torch.device(device):
            model = model_class(config).to(dtype)
        model.train(what == "training")
        ids = torch.randint(3, 256, (2, tokens), generator=torch.Generator().manual_seed(1)).to(device)
        expected = _result(model, ids, what)
        eager_err, oracle_note = None, ""
        if dtype != torch.float32 and what != "generate":  # bf16: both sides against float64
            eager, (expected, oracle_note) = expected, _oracle(model, ids, what)
            eager_err = relative(eager, expected)
    except Exception as e:  # the automatic config does not suit the family: not a tilefuse result
        return SweepRow(name, what, "config", note=describe_error(e)[:160])
    try:
        torch._dynamo.reset()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            row = _compiled(name, what, model, ids, expected, eager_err, dtype)
        said = sorted({str(w.message).splitlines()[0][:120] for w in caught if "tilefuse" in str(w.message)})
        row.note = "; ".join([oracle_note, row.note, *said[:2]]).strip("; ")
    except Exception as e:
        row = SweepRow(
            name, what, "crash", note=f"{describe_error(e)[:200]} | {traceback.format_exc(limit=-2)[-300:]}"
        )
    row.seconds = round(time.perf_counter() - start, 1)
    return row


def _oracle(model: torch.nn.Module, ids: torch.Tensor, what: str) -> tuple[torch.Tensor, str]:
    """`what` of a float64 copy of the model; of a float32 copy where float64 has no kernels (grouped
    expert matmuls take 16- and 32-bit operands only), said in the note."""
    try:
        return _result(copy.deepcopy(model).double(), ids, what), ""
    except Exception as e:
        note = f"against float32 (float64: {describe_error(e)[:80]})"
        return _result(copy.deepcopy(model).float(), ids, what), note


def _result(model: torch.nn.Module, ids: torch.Tensor, what: str) -> torch.Tensor:
    """What `what` compares: the logits, the parameters' gradients (then cleared), or greedy tokens."""
    if what == "forward":  # (an encoder-decoder model's decoder reads the same ids)
        seq2seq = getattr(getattr(model, "config", None), "is_encoder_decoder", False)
        decoder = {"decoder_input_ids": ids} if seq2seq else {}
        with torch.no_grad():
            return model(input_ids=ids, **decoder).logits
    if what == "training":
        model(input_ids=ids, labels=ids).loss.backward()
        grads = _gradients(model)
        model.zero_grad(set_to_none=True)
        return grads
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=6, do_sample=False, pad_token_id=0)


def dynamo_eager(model: torch.nn.Module) -> Callable:
    """The model as Dynamo captures it, run by PyTorch: `torch.compile` with its eager backend."""
    return torch.compile(model, backend="eager")


def _compiled(name, what, model, ids, expected, eager_err, dtype) -> SweepRow:
    """tilefuse's side, as `_result` runs eager's: the compiled model's forward called twice, one
    backward through it, or `generate` with the model's forward compiled."""
    if what != "generate":
        compiled = tilefuse.compile(model)
        results = [_result(compiled, ids, what) for _ in range(2 if what == "forward" else 1)]
        err = max(relative(got, expected) for got in results)
        row = SweepRow(name, what, _verdict(err, eager_err, dtype), err, eager_err, **_graph_counts(compiled))
        if row.status == "wrong":
            # what Dynamo captures may itself differ from eager (a branch on `is_torchdynamo_compiling()`):
            # then torch.compile with its eager backend gives the same numbers as tilefuse
            torch._dynamo.reset()
            captured = _result(dynamo_eager(model), ids, what)
            if _verdict(relative(results[-1], captured), eager_err, dtype) == "ok":
                row.status = "dynamo"
                row.note = (
                    f"torch.compile(backend='eager') differs from eager as much "
                    f"({relative(captured, expected):.1e}); tilefuse matches it"
                )
        return row
    forward = model.forward
    model.forward = compiled = tilefuse.compile(forward)
    try:
        got = _result(model, ids, what)
    finally:
        model.forward = forward
    same = got.shape == expected.shape and torch.equal(got, expected)
    status = "ok" if same or dtype != torch.float32 else "wrong"
    note = (
        ""
        if same
        else "tokens differ from eager's" + (" (bf16: a near-tie may flip)" if status == "ok" else "")
    )
    return SweepRow(name, what, status, note=note, **_graph_counts(compiled))


def run_isolated(name: str, what: str, args: argparse.Namespace) -> SweepRow:
    """`run_family` in a child process with a timeout (a fault that poisons a process costs one row)."""
    command = [sys.executable, "-m", MODULE, "--one", name, "--what", what,
               "--dtype", args.dtype, "--device", args.device, "--hidden", str(args.hidden),
               "--tokens", str(args.tokens)]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return SweepRow(name, what, "timeout", note=f"over {args.timeout} s")
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return SweepRow(**json.loads(line))
    tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
    return SweepRow(name, what, "crash", note=f"child exited with code {done.returncode}: {tail[:200]}")


def render(rows: Sequence[SweepRow], header: Sequence[str]) -> str:
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r.what, {}).setdefault(r.status, 0)
        counts[r.what][r.status] += 1
    lines = [*header, ""]
    for what, c in counts.items():
        lines.append(f"- {what}: " + ", ".join(f"{n} {s}" for s, n in sorted(c.items())))
    lines += [
        "",
        "| family | what | status | error | eager error | graphs | partitions | kernels | s | note |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]

    def cell(v: object, spec: str = "") -> str:
        return "—" if v is None else format(v, spec)

    for r in rows:
        note = r.note.replace("|", "/").replace("\n", " ")
        cells = [r.family, r.what, r.status, cell(r.error, ".1e"), cell(r.eager_error, ".1e"), cell(r.graphs),
                 cell(r.partitions), cell(r.kernels), cell(r.seconds), note]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m {MODULE}", description=__doc__.split("\n")[0])
    p.add_argument("--what", default="forward", help=f"comma-separated, of {', '.join(WHATS)}")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--families", default="", help="comma-separated class names (default: every one)")
    p.add_argument("--start", default="", help="skip the families sorted before this name (resume a sweep)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--tokens", type=int, default=12)
    p.add_argument("--isolate", action="store_true", help="each family in a child process")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds a family may take with --isolate")
    p.add_argument("--out", type=Path, default=None, help="markdown file to write (default: print)")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child of --isolate: one JSON row
    args = p.parse_args(argv)
    whats = args.what.split(",")
    if any(w not in WHATS for w in whats):
        p.error(f"--what takes {', '.join(WHATS)}, got {args.what!r}")
    known = family_names()
    wanted = [n for n in args.families.split(",") if n]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        p.error(f"not a causal-LM or encoder-decoder class of this transformers: {', '.join(unknown)}")
    args.whats, args.names = whats, [n for n in (wanted or known) if n >= args.start]
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    if args.one is not None:
        print(
            json.dumps(asdict(run_family(args.one, args.whats[0], dtype, device, args.hidden, args.tokens)))
        )
        return
    given = sys.argv[1:] if argv is None else list(argv)
    header = [
        "# tilefuse against eager on every causal-LM and encoder-decoder family (benchmarks/model_sweep.py)",
        "",
        *(line for line in environment_lines(MODULE, device, dtype, given) if not line.startswith("- dtype")),
        f"- dtype {args.dtype}, device {args.device}, hidden {args.hidden}, 2 x {args.tokens} tokens, "
        f"what: {args.what}",
    ]
    rows: list[SweepRow] = []
    for i, name in enumerate(args.names):
        for what in args.whats:
            if args.isolate:
                row = run_isolated(name, what, args)
            else:
                row = run_family(name, what, dtype, device, args.hidden, args.tokens)
            rows.append(row)
            err = "" if row.error is None else f" err {row.error:.1e}"
            print(
                f"[{i + 1}/{len(args.names)}] {name} {what}: {row.status}{err} {row.note[:120]}", flush=True
            )
            release_memory(device)
        if args.out is not None:
            args.out.write_text(render(rows, header))
    if args.out is None:
        print(render(rows, header))


if __name__ == "__main__":
    main()
