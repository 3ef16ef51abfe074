"""`tilefuse.compile`: the decorator users put on a function or `nn.Module`."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import re
import warnings
from collections.abc import Callable, Iterator
from typing import TypeVar, overload

import torch

from .backend import CompileOptions, TilefuseBackend, compile_options, read_options
from .conv_layout import conv_layout_enabled
from .depthwise_conv import depthwise_enabled

F = TypeVar("F", bound=Callable)
log = logging.getLogger("tilefuse")


@overload
def compile(
    fn: F, *, dump: str | os.PathLike | None = None, fullgraph: bool = False, mode: str | None = None,
    dynamic: bool | None = None, backend: str | None = None, options: dict | None = None,
    disable: bool = False,
) -> F: ...
@overload
def compile(
    fn: None = None, *, dump: str | os.PathLike | None = None, fullgraph: bool = False,
    mode: str | None = None, dynamic: bool | None = None, backend: str | None = None,
    options: dict | None = None, disable: bool = False,
) -> Callable[[F], F]: ...


def compile(
    fn=None, *, dump=None, fullgraph=False, mode=None, dynamic=None, backend=None, options=None, disable=False
):
    """Compile a function or `nn.Module` with tilefuse.

    Usable as `@tilefuse.compile` or `@tilefuse.compile(dump="dir")`. Kernels
    are compiled for the shapes of the first call; when a later call changes a
    size, Dynamo makes that dim dynamic: one compile for every later size, whose
    nodes with static shapes run as kernels and whose nodes with a symbolic size
    run in PyTorch (the report names them). `dynamic` is torch.compile's: True
    makes every dim dynamic from the start, False specializes every new shape
    (a compile per shape).
    `dump` (or the `TILEFUSE_DUMP` environment variable) names a folder for the
    IR of every stage. Ops tilefuse cannot compile run in PyTorch; the dump says
    which and why. The result has `tilefuse_reports`: one summary per compiled
    graph. `mode="reduce-overhead"` (torch.compile's spelling) replays each
    graph as a CUDA graph once warmed up (see `cudagraphs.py`; the report's
    `cudagraphs` says whether it was captured, or why not); torch.compile's
    other modes are accepted too (`backend.MODES` says what each means here).
    `backend` ("triton", "cuda" or "auto"; default `$TILEFUSE_BACKEND`, else
    "triton") picks who writes the pointwise, reduction and row kernels: CUDA
    C++ (`backends/cuda`, built with nvcc) where its emitter covers a kernel,
    or in "auto" whichever of the two measured faster (GEMMs and attention
    stay Triton kernels). `options` is torch.compile's spelling of them
    (`options={"dump": dir, "backend": "cuda"}`, as the registered backend takes
    them): other keys are ignored with a warning, and a value that contradicts
    `dump=` or `backend=` is refused. `disable=True` returns `fn` itself, as
    torch.compile does.
    A `transformers` model (or its `forward`) has transformers' own automatic
    compile of static-cache `generate` turned off (`_keep_transformers_off`),
    and its once-only log calls are traced through (`_trace_through_once_logging`).
    """
    given = read_options(options)
    for key, value in (("dump", dump), ("backend", backend)):
        # a dump folder as a str or a Path names the same folder
        same = os.fspath if key == "dump" else str
        if value is not None and key in given and same(given[key]) != same(value):
            raise ValueError(f"tilefuse.compile: {key}={value!r} and options[{key!r}]={given[key]!r} differ")
    dump, backend = given.get("dump", dump), given.get("backend", backend)
    # a bad mode or kernel backend name is refused here, not at the first call
    options = compile_options(mode, dump, backend, caller="tilefuse.compile")
    if dynamic not in (None, True, False):
        raise ValueError(f"tilefuse.compile: dynamic must be None, True or False, not {dynamic!r}")
    conv_layout_enabled(False)  # a bad TILEFUSE_CONV_LAYOUT is the caller's error, said here
    depthwise_enabled()  # and TILEFUSE_DEPTHWISE's
    if fn is None:
        arguments = dict(dump=dump, fullgraph=fullgraph, mode=mode, dynamic=dynamic, backend=backend)
        return lambda f: compile(f, **arguments, disable=disable)
    if disable:
        return fn
    compiled = _compile(fn, options, fullgraph=fullgraph, dynamic=dynamic, reports=[])
    if isinstance(fn, torch.nn.Module) and _transformers_model(fn) and hasattr(fn, "generate"):
        generate = _compiled_generate(fn, options, fullgraph, dynamic, compiled.tilefuse_reports)
        _set_own(compiled, "generate", generate)
    return compiled


def _set_own(compiled: object, name: str, value: object) -> None:
    """Set an attribute of torch.compile's result itself: torch 2.13's `OptimizedModule` passes
    attributes it does not know on to the module it wraps (two compiles of one model shared one
    `tilefuse_reports`, the second's), torch 2.11's keeps them."""
    if isinstance(compiled, torch.nn.Module):
        torch.nn.Module.__setattr__(compiled, name, value)
    else:
        setattr(compiled, name, value)


def _compile(
    fn: Callable, options: CompileOptions, fullgraph: bool, dynamic: bool | None, reports: list
) -> Callable:
    """`fn` under torch.compile with a tilefuse backend of `options`, which appends its graphs'
    summaries to `reports` (the result's `tilefuse_reports`)."""
    name = getattr(fn, "__name__", None) or type(fn).__name__
    name = re.sub(r"\W+", "_", name).strip("_") or "graph"  # `<lambda>` names a dump folder `lambda_000`
    backend = TilefuseBackend(options, name=name, reports=reports)
    # Dynamo's default (dynamic=None): a second size of a dim makes it dynamic, and such a graph
    # compiles its static islands once (backend.py) instead of compiling again for every new length
    _keep_transformers_off(fn)
    _trace_through_once_logging()
    budget = _own_recompile_budget()
    compiled = torch.compile(fn, backend=backend, dynamic=dynamic, fullgraph=fullgraph, **budget)
    if dynamic is None and _transformers_model(fn):
        compiled = _static_batches(compiled)
    if not fullgraph:
        compiled = _eager_where_dynamo_fails(compiled, fn, name, backend.reports)
    _set_own(compiled, "tilefuse_reports", backend.reports)
    _set_own(compiled, "tilefuse_dump_dir", options.dump)
    return compiled


def _compiled_generate(
    model: torch.nn.Module, options: CompileOptions, fullgraph: bool, dynamic: bool | None, reports: list
) -> Callable:
    """`generate` for `tilefuse.compile(model)` of a transformers model: the model's own `generate`
    with its forward compiled (as `model.forward = tilefuse.compile(model.forward)` does) for the
    call. `generate` calls the model itself, so the compiled module's `generate` (the model's,
    reached through torch.compile's wrapper) ran every step in eager PyTorch, and with transformers'
    own static-cache compile turned off (`_keep_transformers_off`) a static cache did too. The forward
    is compiled at the first `generate`; its graphs join the compiled module's reports. The model's
    `forward` is restored after each call, so the model itself stays uncompiled."""
    compiled_forward: list[Callable] = []
    eager = _EagerRetry(model.generate, "generate", reports)

    @functools.wraps(model.generate)
    def generate(*args: object, **kwargs: object) -> object:
        if eager.reason is not None:
            return model.generate(*args, **kwargs)
        if not compiled_forward:
            compiled_forward.append(_compile(model.forward, options, fullgraph, dynamic, reports))
        had_own = "forward" in vars(model)
        own = vars(model).get("forward")
        model.forward = compiled_forward[0]
        versions = _versions(args, kwargs)
        try:
            return model.generate(*args, **kwargs)
        except Exception as error:  # noqa: BLE001 (a forward that could not run again alone: the whole call)
            if fullgraph:
                raise
            failed = error
        finally:
            if had_own:
                model.forward = own
            else:
                del model.forward
        # a generation config is read, not changed: the call may run again with it
        plain = {k: v for k, v in kwargs.items() if type(v).__name__ != "GenerationConfig"}
        return eager.retry(failed, args, kwargs, versions, checked=plain)

    return generate


# Dynamo keeps one list of compiled entries per code object, and every torch.compile call's entries
# count against its recompile limit (8): each `tilefuse.compile` has a backend of its own, and every
# transformers model's `forward` goes through one decorator's code (`utils/generic.py`'s `wrapper`),
# so the ninth model compiled in a process ran in eager PyTorch, silently but for Dynamo's log line,
# and so did every later one (Dynamo stops compiling a code object once past the limit).
_budget = {"calls": 0, "per_call": None}


def _own_recompile_budget() -> dict:
    """torch.compile's arguments that give this compile call its own recompile budget: torch's
    `isolate_recompiles=True` where it has it (2.13); else Dynamo's `recompile_limit` raised to
    what it was times the number of `tilefuse.compile` calls so far (one call alone keeps the limit
    it had; never past `accumulated_recompile_limit`, Dynamo's cap over every compile)."""
    if "isolate_recompiles" in inspect.signature(torch.compile).parameters:
        return {"isolate_recompiles": True}
    config = torch._dynamo.config
    if _budget["per_call"] is None:
        _budget["per_call"] = config.recompile_limit
    _budget["calls"] += 1
    wanted = min(_budget["per_call"] * _budget["calls"], config.accumulated_recompile_limit)
    config.recompile_limit = max(config.recompile_limit, wanted)
    return {}


def _transformers_model(fn: object) -> bool:
    """`fn` is a `transformers` model or one of its bound methods (its `forward`)."""
    owner = getattr(fn, "__self__", fn)
    return isinstance(owner, torch.nn.Module) and type(owner).__module__.startswith("transformers.")


def _static_batches(compiled: object) -> object:
    """`compiled`, marking dim 0 of each tensor argument of two or more dims static before each call (a
    transformers model's batch: `input_ids`, `attention_mask`, `inputs_embeds`, `pixel_values`...).

    Dynamo makes a dim symbolic once it sees it change; tilefuse compiles static sizes, so a graph with a
    symbolic batch has nothing static left to compile once the cache length or the prompt is symbolic too:
    `generate` at batch 8 after batch 1 in one process decoded at eager's speed (H200, 4.0 ms a token
    against torch.compile's 2.6). With the batch static, a new batch size compiles its own graphs (as
    CUDA graphs are per batch size) and only the lengths go symbolic. A dim the caller marked dynamic is
    left alone, and so is everything with `dynamic=True` or `False` (not called here)."""

    def mark(args: tuple, kwargs: dict) -> None:
        for value in (*args, *kwargs.values()):
            if isinstance(value, torch.Tensor) and value.dim() >= 2:
                if 0 not in getattr(value, "_dynamo_dynamic_indices", ()):
                    try:
                        torch._dynamo.mark_static(value, 0)
                    except Exception:  # a tensor subclass that keeps no such mark: left to Dynamo
                        pass

    def marking(inner: Callable) -> Callable:
        @functools.wraps(inner)
        def call(*args: object, **kwargs: object) -> object:
            mark(args, kwargs)
            return inner(*args, **kwargs)

        return call

    if isinstance(compiled, torch.nn.Module):  # torch.compile's OptimizedModule: its forward is Dynamo's
        compiled.forward = marking(compiled.forward)
        return compiled
    return marking(compiled)


# the tilefuse-compiled calls in progress (a stack: a compiled function may call another), and whether
# `_suppress_inside` turned Dynamo's suppress_errors on for them
_INSIDE: list[object] = []
_SUPPRESSED = [False]


def _eager_where_dynamo_fails(compiled: object, fn: Callable, name: str, reports: list) -> object:
    """`compiled`, where a frame Dynamo fails to trace runs in eager PyTorch instead of raising, and a
    call that fails anyway runs again in eager PyTorch where that is safe.

    Code that takes another path under tracing (`torch.compiler.is_compiling()`: transformers' SDPA
    path does) can fail in Dynamo's fake-tensor run where eager runs; torch.compile then raises to the
    user. While a call of ours runs, a frame compile turns Dynamo's `suppress_errors` on
    (`_suppress_inside`, a compile-start callback), so such a frame runs eagerly, from its start, as
    Dynamo runs a frame it skips; the setting is restored when the call returns, and Dynamo's warning
    names the frame and the error (`_EagerFrameWarning`). The functions an eager frame calls are still
    compiled, so code whose frames must agree on `is_compiling()` can still fail at run time (a
    DeepseekV2 config whose query and key head counts differ: transformers' GQA test compiled, its
    SDPA call eager, a shape error): a call that raises is then run by `fn` itself, eagerly, where
    `_rerun_is_safe` (`_EagerRetry`); if eager PyTorch runs it, this compiled callable runs eagerly
    from then on, said once in a warning and in `reports`; if eager raises too, its error is the
    user's, raised as eager raises it. A call costs a list push and pop and a version read of each
    tensor argument; with `fullgraph=True` failures raise, as torch.compile's do."""
    _warn_eager_frames()
    eager = _EagerRetry(fn, name, reports)

    def guarded(inner: Callable) -> Callable:
        @functools.wraps(inner)
        def call(*args: object, **kwargs: object) -> object:
            if eager.reason is not None:
                return fn(*args, **kwargs)
            versions = _versions(args, kwargs)
            _suppress_hook()
            _INSIDE.append(call)
            try:
                return inner(*args, **kwargs)
            except Exception as error:  # noqa: BLE001 (never crash the user's model: eager decides)
                failed = error
            finally:
                _INSIDE.pop()
                if _SUPPRESSED[0] and not _INSIDE:
                    torch._dynamo.config.suppress_errors = False
                    _SUPPRESSED[0] = False
            return eager.retry(failed, args, kwargs, versions)

        return call

    if isinstance(compiled, torch.nn.Module):  # torch.compile's OptimizedModule: its forward is Dynamo's
        compiled.forward = guarded(compiled.forward)
        return compiled
    return guarded(compiled)


def _versions(args: tuple, kwargs: dict) -> list[int | None]:
    """The version counter of each tensor argument (top level): a call that changed one in place
    before it failed cannot be run again (`_rerun_is_safe`). An inference tensor keeps none (None:
    an in-place change to it goes unseen, and the call may run again)."""
    return [_version_or_none(a) for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]


def _version_or_none(tensor: torch.Tensor) -> int | None:
    try:
        return None if tensor.is_inference() else tensor._version
    except RuntimeError:  # a tensor subclass that keeps no version either: not read
        return None


def _first_line(error: BaseException | None) -> str:
    """The first line of an error's message ("" where it has none)."""
    text = str(error).strip() if error is not None else ""
    return text.splitlines()[0] if text else ""


# arguments a call can be run twice with: values that carry no state a failed call could have changed
# (tensors are checked by their version counters; a container's items are looked at)
_PLAIN = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, slice)


def _rerun_is_safe(args: tuple, kwargs: dict, versions: list[int]) -> str | None:
    """Why a call that failed must not run again (None where it may): an argument that is not a plain
    value or a tensor (a KV cache object, a generator: the failed call may have changed it), looked for
    in lists, tuples and dicts too, or a top-level tensor argument changed in place. Not checked (the
    retry would make the change twice): a tensor inside a container changed in place, a list or dict
    argument changed itself, module state a failed training forward changed in place (a BatchNorm's
    running statistics)."""
    stack = [*args, *kwargs.values()]
    while stack:
        value = stack.pop()
        if isinstance(value, (list, tuple)):
            stack.extend(value)
        elif isinstance(value, dict):
            stack.extend(value.values())
        elif not isinstance(value, (torch.Tensor, *_PLAIN)):
            return f"an argument of type {type(value).__name__} may hold state the failed call changed"
    if _versions(args, kwargs) != versions:
        return "a tensor argument was changed in place before the failure"
    return None


class _EagerRetry:
    """What a compiled callable does when a call of it fails (`_eager_where_dynamo_fails`): run the
    call in eager PyTorch where `_rerun_is_safe`; once eager has run a call the compiled code failed,
    every later call runs eagerly (`reason`), said once in a warning and in `reports` (a summary whose
    fallback names the error). A CUDA out-of-memory error is retried for that call only."""

    def __init__(self, fn: Callable, name: str, reports: list):
        self.fn, self.name, self.reports = fn, name, reports
        self.reason: str | None = None

    def retry(
        self, error: Exception, args: tuple, kwargs: dict, versions: list[int], checked: dict | None = None
    ) -> object:
        """`fn`'s result for the call that raised `error`, or `error` raised again where the call must not
        run twice (`checked`: the keyword arguments `_rerun_is_safe` looks at, default all)."""
        unsafe = _rerun_is_safe(args, kwargs if checked is None else checked, versions)
        if unsafe is not None:
            log.warning("tilefuse: %s raised %s; not run again in PyTorch: %s", self.name,
                        type(error).__name__, unsafe)  # fmt: skip
            raise error
        # where eager PyTorch fails too, the error is the user's, raised as eager raises it
        result = self.fn(*args, **kwargs)
        cause = f"{type(error).__name__}: {_first_line(error)}"
        if isinstance(error, torch.OutOfMemoryError):
            warnings.warn(f"tilefuse: {self.name} ran out of memory ({cause[:300]}); this call ran in eager "
                          "PyTorch", stacklevel=3)  # fmt: skip
            return result
        self.reason = f"the compiled call raised {cause[:500]}; eager PyTorch ran it and runs later calls"
        warnings.warn(f"tilefuse: {self.name}: {self.reason}", stacklevel=3)
        self.reports.append({
            "name": f"{self.name}_call", "dir": None, "cache": None, "kind": "call", "files": [],
            "partitions": [], "fallbacks": [{"node": "<call>", "op": "call", "reason": self.reason}],
            "kernels": {"total": 0, "distinct": 0, "precompiled": 0},
        })  # fmt: skip
        return result


def _suppress_hook() -> None:
    """`_suppress_inside` among Dynamo's compile-start callbacks (`torch._dynamo.reset()` clears them)."""
    starts = getattr(torch._dynamo.callback.callback_handler, "start_callbacks", None)
    if starts is None:
        _suppress_hook_once()
    elif _suppress_callback() not in starts:
        torch._dynamo.callback.on_compile_start(_suppress_callback())


@functools.cache
def _suppress_hook_once() -> None:
    torch._dynamo.callback.on_compile_start(_suppress_callback())


@functools.cache
def _suppress_callback() -> Callable[[object], None]:
    """`_suppress_inside` as Dynamo must call it: untraced. A compiled function that calls
    `loss.backward()` compiles its backward graph lazily inside that call, with Dynamo's frame hook still
    on for the user's frame; the start callbacks run there, and a callback Dynamo tried to compile
    re-entered Dynamo's callback lock and hung the process for good (torch 2.13)."""
    return torch._dynamo.disable(_suppress_inside)


@functools.cache
def _warn_eager_frames() -> None:
    logging.getLogger("torch._dynamo.convert_frame").addHandler(_EagerFrameWarning())


def _suppress_inside(_args: object) -> None:
    if _INSIDE and not torch._dynamo.config.suppress_errors:
        torch._dynamo.config.suppress_errors = True
        _SUPPRESSED[0] = True


class _EagerFrameWarning(logging.Handler):
    """Dynamo's warning for a frame it could not trace during a tilefuse call, as a Python warning
    that says the frame runs in PyTorch (`_eager_where_dynamo_fails`)."""

    def emit(self, record: logging.LogRecord) -> None:
        if not _INSIDE or record.levelno < logging.WARNING:
            return
        lines = [line for line in record.getMessage().splitlines() if line.strip()]
        error = record.exc_info[1] if record.exc_info else None
        cause = _first_line(error)
        where = lines[0].removeprefix("WON'T CONVERT ").strip() if lines else "a frame"
        warnings.warn(
            f"tilefuse: Dynamo could not trace {where} ({type(error).__name__ if error else 'error'}: "
            f"{cause[:300]}); that frame runs in eager PyTorch",
            stacklevel=2,
        )


def _keep_transformers_off(fn: object) -> None:
    """With a static KV cache, `generate` compiles the model's `__call__` with torch.compile
    (Inductor, CUDA graphs) unless the generation config says `disable_compile`: the decode steps
    would then run Inductor's kernels around (or instead of) tilefuse's. The user asked for
    tilefuse, so a transformers model compiled with it, or whose `forward` is, turns that off."""
    owner = getattr(fn, "__self__", fn)
    config = getattr(owner, "generation_config", None)
    if config is not None and hasattr(config, "disable_compile") and not config.disable_compile:
        config.disable_compile = True


# transformers' `logging.Logger` methods that log a message once per process (lru-cached). Dynamo
# breaks the graph at any logger call; GPT-2's loss (`loss_function` warns when a model's class name
# has no loss type: `GPT2LMHeadModel`, `BertForMaskedLM`...) split its training forward in two, with
# the logits a graph output between them. These calls are told to Dynamo as no-ops while tracing
# (they still log in eager code); ordinary logger calls keep their graph breaks. torch 2.11's Dynamo
# writes its config as JSON when it logs a compile's metrics, that set included (sorted first): a
# function in it made every compile in the process log a TypeError traceback, tilefuse's and any
# torch.compile's. The set holds `_NoOpLogging` entries instead: strings (their names) to JSON and to
# sorting, equal to their function for the membership test Dynamo makes on a logger method's call.
ONCE_LOGGING = ("warning_once", "info_once")


class _NoOpLogging(str):
    """A logging function in Dynamo's no-op set: its qualified name as a string, hashing and comparing
    equal to the function itself (`logger.warning_once` is looked up with `in`)."""

    def __new__(cls, function: Callable) -> _NoOpLogging:
        entry = super().__new__(cls, f"{function.__module__}.{function.__qualname__}")
        entry.function = function
        return entry

    def __hash__(self) -> int:
        return hash(self.function)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, _NoOpLogging):
            return other.function is self.function
        return other is self.function

    def __ne__(self, other: object) -> bool:
        return not self == other

    def __copy__(self) -> _NoOpLogging:  # Dynamo copies its config to log it
        return self

    def __deepcopy__(self, memo: dict) -> _NoOpLogging:
        return self

    def __reduce__(self) -> tuple:  # pickled (a saved config) as the plain name
        return (str, (str(self),))


def _once_logging_methods() -> tuple[set, list]:
    """Dynamo's set of logging functions it traces as no-ops, and transformers' once-only methods
    (as the set's entries, `_NoOpLogging`)."""
    import logging

    import torch._dynamo.config as dynamo_config

    ignored = getattr(dynamo_config, "ignore_logging_functions", None)
    if ignored is None:  # torch before the rename
        ignored = getattr(dynamo_config, "ignore_logger_methods", None)
    methods = [getattr(logging.Logger, name, None) for name in ONCE_LOGGING]
    entries = [_NoOpLogging(m) for m in methods if m is not None]
    return (set() if ignored is None else ignored), entries


def _trace_through_once_logging() -> None:
    """Dynamo's setting is global, not per compile: a `torch.compile` of another model traces
    through these calls too (`once_logging_as_dynamo_has_it` undoes it for a block). torch 2.13's
    Dynamo keeps settings per context (a ContextVar), so a thread that had read its config before
    keeps its own copy, and its graphs break there as before."""
    ignored, methods = _once_logging_methods()
    ignored.update(methods)


@contextlib.contextmanager
def once_logging_as_dynamo_has_it() -> Iterator[None]:
    """Dynamo's own handling of transformers' once-only log calls (a graph break) inside the
    block: a benchmark's `torch.compile` row measures what its users get."""
    ignored, methods = _once_logging_methods()
    held = [m for m in methods if m in ignored]
    ignored.difference_update(held)
    try:
        yield
    finally:
        ignored.update(held)
