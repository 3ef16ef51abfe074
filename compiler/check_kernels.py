"""Run every generated kernel of a compiled model against the `ein` reference interpreter, one by one.

    python -m tilefuse.compiler.check_kernels [--dtype bfloat16|float32] [--seq N]

A model whose output is wrong on the GPU but right on the CPU (where Triton's
interpreter runs the kernels) has one kernel to blame: this finds it. Each
kernel gets the inputs the reference interpreter computed for it, so an error
never propagates; a kernel whose relative error is above the tolerance is
marked BAD. Found, on the H200: a bf16 Llama's attention kernel faulting with
3xTF32 f32 dots (benchmarks/NOTES.md).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from xdsl.ir import SSAValue

from ..ir.dtypes import shape_of, to_torch_dtype
from ..ir.interpreter import run_op
from .api import compile as tilefuse_compile
from .runtime import KernelPlan


@dataclass(frozen=True)
class KernelCheck:
    kernel: str
    kind: str
    config: str
    errors: tuple[float, ...]  # per output: ||kernel - reference|| / ||reference||

    def bad(self, tolerance: float) -> bool:
        return not all(e <= tolerance for e in self.errors)  # NaN is bad too


def check_kernels(fn: Callable, *args: torch.Tensor) -> list[KernelCheck]:
    """Compile `fn`, call it on `args`, then rerun each of its kernels against the interpreter."""

    seen: dict[KernelPlan, tuple] = {}
    forward = KernelPlan.forward

    def recording(self: KernelPlan, *plan_args: torch.Tensor) -> object:
        seen[self] = plan_args
        return forward(self, *plan_args)

    KernelPlan.forward = recording
    try:
        with torch.no_grad():
            tilefuse_compile(fn)(*args)
    finally:
        KernelPlan.forward = forward
    checks = []
    for plan, plan_args in seen.items():
        device = plan.device
        env = dict(zip(plan.function.body.block.args, plan_args))

        def value(v, env=env, device=device):  # an operand, computed by the interpreter if virtual
            if v not in env:
                for operand in v.owner.operands:
                    value(operand, env)
                env[v] = run_op(v.owner, env, device)
            return env[v]

        for op in plan.steps:
            kernel = plan.launch_at.get(op)
            if kernel is None:
                value(op.results[0])
                continue
            reference = dict(env)
            for member in kernel.lowered.group.ops:
                for operand in member.operands:
                    value(operand, reference)
                reference[member.results[0]] = run_op(member, reference, device)
            outputs = list(kernel.lowered.outputs)
            ins = [value(v) for v in kernel.lowered.inputs]
            outs = [_empty_like_ir(o, device) for o in outputs]
            config = kernel.config
            kernel.launcher(ins + outs, config.params, config.num_warps, config.num_stages)
            errors = []
            for o, out in zip(outputs, outs):
                ref, got = reference[o].double(), out.double()
                # equal elements count as no error, infinities included (a mask of 0 and -inf)
                diff = torch.where(got == ref, 0.0, got - ref)
                finite = torch.where(ref.isinf(), 0.0, ref)
                errors.append((diff.norm() / max(finite.norm().item(), 1e-30)).item())
                env[o] = reference[o]
            name = kernel.lowered.kernel.sym_name.data
            checks.append(KernelCheck(name, kernel.lowered.group.kind, kernel.config.key(), tuple(errors)))
    return checks


def _empty_like_ir(value: SSAValue, device: torch.device) -> torch.Tensor:
    elem = to_torch_dtype(value.type.get_element_type())
    return torch.empty(tuple(shape_of(value.type)), dtype=elem, device=device)


def _tiny_llama(dtype: torch.dtype, seq: int, device: str) -> tuple[torch.nn.Module, torch.Tensor]:
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=1,
        num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=max(256, seq),
    )  # fmt: skip
    model = transformers.LlamaForCausalLM(config).to(device, dtype).eval()
    return model, torch.randint(0, 512, (2, seq), device=device)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--tolerance", type=float, default=2e-2)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    model, ids = _tiny_llama(getattr(torch, args.dtype), args.seq, device)
    checks = check_kernels(model, ids)
    for c in checks:
        flag = "  <-- BAD" if c.bad(args.tolerance) else ""
        print(f"{c.kernel:24} {c.kind:10} {c.config:60} {[f'{e:.2e}' for e in c.errors]}{flag}")
    return 1 if any(c.bad(args.tolerance) for c in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
