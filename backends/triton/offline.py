"""Compiling emitted kernels for a GPU that is not here: registers, spills, tensor-core instructions.

A kernel's speed on the GPU cannot be measured on the CPU, but some of its causes can be read
off the binary Triton makes for it: how many registers a thread holds, how many bytes it spills
to local memory (stack), and whether its products became Hopper's `wgmma` instructions. Triton
compiles for any target without a GPU (its own ptxas), and its wheel carries `cuobjdump`, which
reports the resource usage. `usage(source, function, params, ...)` compiles one kernel as a launch
on contiguous tensors would (see `_specialization`) and returns those figures. It compiles in a
child process (this file run as a script: only the standard library at module level): a process
that has run kernels under Triton's interpreter keeps the interpreter's patches of
`triton.language`, and Triton's code generator then fails on them.

    python -m tilefuse.compiler.cli opt dump/tile.mlir --emit triton > k.py    # then, in Python:
    usage(open("k.py").read(), "fused_0_k0", {"BLOCK_M": 128, ...}, num_warps=8, num_stages=3)

The launch's specialization matters: without the 16-byte divisibility of its pointers and
strides, a GEMM's loads are not vectorized and the same kernel spilled 600 bytes a thread where
the real launch spills none (benchmarks/NOTES.md, eighteenth session).
"""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

if __package__:
    from . import ptx_loops
else:  # run as a script (a worker, a child compile): this folder is sys.path[0]
    import ptx_loops

HOPPER = 90  # compute capability of the H100/H200: sm_90


class OfflineCompileUnavailable(RuntimeError):
    """This Triton cannot compile for the target here (no cuobjdump in its wheel, no NVIDIA backend)."""


@dataclass(frozen=True)
class Usage:
    """Per-thread registers, spilled bytes (stack), static shared memory, whether the PTX holds
    Hopper's warp-group MMA (`wgmma`), and the machine code's length in SASS instructions (an
    epilogue's cost: its instructions a tile element are this length's growth over the bare GEMM's,
    divided by the elements a thread holds)."""

    registers: int
    stack_bytes: int
    shared_bytes: int
    wgmma: bool
    instructions: int
    rolled_loops: int  # loops ptx_loops told ptxas not to unroll (`.pragma "nounroll"` in the PTX)


def usage(
    source: str,
    function: str,
    params: Mapping[str, int],
    num_warps: int,
    num_stages: int,
    arch: int = HOPPER,
    tma: bool = False,
) -> Usage:
    """Compile `function` of the emitted `source` for sm_`arch` with tile `params` (its PARAMS),
    as a launch on contiguous, 16-byte aligned tensors of its TENSOR_SHAPES would; `tma`: its
    USE_TMA switch. Raises OfflineCompileUnavailable where this Triton cannot, and RuntimeError
    with Triton's message where the kernel does not compile."""
    source = kernel_block(source, function)
    declared = re.search(r"^PARAMS = (\(.*\))$", source, re.MULTILINE)
    missing = [p for p in (ast.literal_eval(declared[1]) if declared else ()) if p not in params]
    if missing:
        raise ValueError(f"params lacks {missing}: a config gives every name of the kernel's PARAMS")
    with tempfile.TemporaryDirectory(prefix="tilefuse-offline-") as folder:
        path = Path(folder) / "kernel_source.py"
        path.write_text(source)
        job = dict(path=str(path), function=function, params=dict(params), num_warps=num_warps,
                   num_stages=num_stages, arch=arch, tma=tma)  # fmt: skip
        env = dict(os.environ, TRITON_INTERPRET="0")
        command = [sys.executable, __file__, json.dumps(job)]
        done = subprocess.run(command, capture_output=True, text=True, env=env)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"compiling {function} for sm_{arch} failed: {done.stderr.strip()[-2000:]}")
    result = json.loads(lines[-1])
    if "unavailable" in result:
        raise OfflineCompileUnavailable(result["unavailable"])
    return Usage(**result)


KERNEL_HEADER = "# tilefuse kernel "  # the first line of each kernel `emit` writes


def kernel_block(source: str, function: str) -> str:
    """The one kernel of `source` that defines `function`: `tilefuse opt --emit triton` prints every
    kernel of a dump one after another, each with its own module-level TENSOR_SHAPES, and compiled
    as one module the last kernel's shapes would silently win."""
    starts = [m.start() for m in re.finditer("^" + re.escape(KERNEL_HEADER), source, re.MULTILINE)]
    ends = [*starts[1:], len(source)]
    blocks = [source[a:b] for a, b in zip(starts, ends)] if len(starts) > 1 else [source]
    found = [b for b in blocks if re.search(rf"^def {re.escape(function)}\(", b, re.MULTILINE)]
    if not found:
        raise ValueError(f"the source defines no kernel {function!r}")
    return found[0]


def _compile_job(job: dict) -> dict:
    """The child's work: compile and read the resource usage (`usage`'s figures as a dict)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not cuobjdump.exists():
        return {"unavailable": f"no cuobjdump in the Triton wheel ({cuobjdump})"}
    path = Path(job["path"])
    jit, module = _compiled_function(path.read_text(), job["function"], path.parent)
    ptx_loops.register(job["function"])  # as `load` does on a GPU
    tensors = list(zip(module.TENSOR_SHAPES, module.TENSOR_DTYPES))
    signature, constants, attrs = _specialization(jit.arg_names, tensors, job["params"], job["tma"])
    src = ASTSource(jit, signature, constants, attrs=attrs)
    options = {"num_warps": job["num_warps"], "num_stages": job["num_stages"]}
    compiled = triton.compile(src, target=GPUTarget("cuda", job["arch"], 32), options=options)
    cubin = path.parent / "kernel.cubin"
    cubin.write_bytes(compiled.asm["cubin"])
    report = subprocess.run(
        [str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", report)
    if found is None:
        return {"unavailable": f"cuobjdump reported no resource usage: {report[:200]!r}"}
    registers, stack, shared = (int(g) for g in found.groups())
    sass = subprocess.run(
        [str(cuobjdump), "-sass", str(cubin)], capture_output=True, text=True, check=True
    ).stdout
    # addresses are four hex digits, more from 0x10000 on
    instructions = len(re.findall(r"^\s+/\*[0-9a-f]{4,}\*/\s+\S", sass, re.MULTILINE))
    return {"registers": registers, "stack_bytes": stack, "shared_bytes": shared,
            "wgmma": "wgmma" in compiled.asm["ptx"], "instructions": instructions,
            "rolled_loops": compiled.asm["ptx"].count(ptx_loops.NOUNROLL.strip())}  # fmt: skip


def _compiled_function(source: str, function: str, folder: Path) -> tuple[object, object]:
    """The `@triton.jit` function `function` of `source` (and its module), imported as a compilable
    JITFunction (the child runs with TRITON_INTERPRET=0)."""
    path = folder / "kernel_module.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("tilefuse_offline_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    jit = getattr(module, function, None)
    if jit is None or not hasattr(jit, "arg_names"):
        raise OfflineCompileUnavailable(f"the source defines no compilable kernel {function!r}")
    return jit, module


_POINTER_TYPES = {
    "bfloat16": "*bf16", "float16": "*fp16", "float32": "*fp32", "float64": "*fp64", "int64": "*i64",
    "int32": "*i32", "int16": "*i16", "int8": "*i8", "uint8": "*u8", "bool": "*i1",
}  # fmt: skip


def _specialization(
    names: Sequence[str], tensors: Sequence[tuple[Sequence[int], str]], params: Mapping[str, int], tma: bool
) -> tuple[dict[str, str], dict[tuple[int], object], dict[tuple[int], list]]:
    """Signature, constants and attributes of a launch on contiguous tensors, as Triton's launcher
    specializes it: a kernel's arguments are, per tensor, its pointer then one stride a dim
    (`TritonKernel.__call__`), then the tile parameters, USE_TMA, USE_WS, ROW_TAILS_i and MERGE_i_d
    (`params` may set them). A stride of 1 becomes the
    constant 1; pointers (16-byte aligned allocations) and strides that are multiples of 16 carry
    `tt.divisibility = 16`."""
    signature: dict[str, str] = {}
    constants: dict[tuple[int], object] = {}
    attrs: dict[tuple[int], list] = {}
    strides = iter(s for shape, _ in tensors for s in _contiguous_strides(shape))
    dtypes = iter(dtype for _, dtype in tensors)
    for i, name in enumerate(names):
        if name in params or name in ("USE_TMA", "USE_WS") or name.startswith(("ROW_TAILS_", "MERGE_")):
            signature[name] = "constexpr"
            # warp specialization is off unless a config asks (the launcher's default), and so are row
            # tails (contiguous tensors have none); contiguous dims nest (MERGE)
            constants[(i,)] = (params[name] if name in params else tma if name == "USE_TMA"
                               else name.startswith("MERGE_"))  # fmt: skip
        elif name.endswith("_ptr"):
            signature[name] = _POINTER_TYPES[next(dtypes)]
            attrs[(i,)] = [["tt.divisibility", 16]]
        else:
            stride = next(strides)
            if stride == 1:
                signature[name] = "constexpr"
                constants[(i,)] = 1
            else:
                signature[name] = "i32"
                if stride % 16 == 0:
                    attrs[(i,)] = [["tt.divisibility", 16]]
    return signature, constants, attrs


def _contiguous_strides(shape: Sequence[int]) -> list[int]:
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(int(size), 1)
    return strides[::-1]


if __name__ == "__main__":
    print(json.dumps(_compile_job(json.loads(sys.argv[1]))))
