"""CUDA graph replay of a compiled graph: `tilefuse.compile(model, mode="reduce-overhead")`.

A compiled graph's program launches tens of kernels per call; a CUDA graph
launches them all with one call. Like torch.compile's "reduce-overhead"
mode, the graph runs normally for its first calls (so Triton compiles,
caches settle and each partition's measured choice is made), is then
captured once with its inputs in static buffers, and is replayed after
copying each call's inputs in. Differences from PyTorch's own mode,
chosen so the user's model behaves as in eager:

- a result survives the next call (PyTorch overwrites it and warns): a
  replay's outputs are handed out as tensors of their own storage over the
  graph's memory (no copy), and before the graph writes that memory again
  (the next replay or capture, or the replay's end) every one the caller still
  holds, through any view, is given a copy of its memory of its own
  (`UntypedStorage._swap_data_ptr_`: the caller's tensors and views follow).
  A result dropped before the next call (a timing loop, `loss.item()`, a
  decode step's logits once the token is picked) costs nothing; one kept
  costs the copy a clone would have cost, at the next call. Where PyTorch
  lacks these storage calls (torch 2.11), the outputs are handed out over the
  graph's memory as they are, and the graph is not replayed while the caller
  still holds any of them (its storages' use counts above the capture's): a
  second graph, captured on the same inputs into a pool of its own (when free
  device memory allows), takes that call and its outputs are cloned, as every
  replay's were before (`out = model(x)` in a loop holds the last result while
  the next call runs: every other call is copied; kept results, every call;
  dropped ones, none); without room for it the call runs the program without
  a graph (the report counts such calls);
- parameters and buffers are not copied: the graph reads them in place, so an
  in-place update (an optimizer step, `load_state_dict`) is seen by the next
  replay; one that changes what was computed from them once (a norm weight
  folded into a GEMM weight) is detected by version and the graph is
  re-captured, and so is a parameter replaced by another tensor (checked every
  replay by comparing a few lists: objects, marks, addresses, versions);
- inputs the graph updates in place (a static KV cache, written one position a
  step: `input_mutations.py`) are not copied either: the graph is captured on
  the tensors themselves and writes them where they are, as the user's code
  would (an output that is such an input is returned as itself, not cloned);
  where a call passes another tensor in that place (a new `generate`'s cache
  position), the graph is captured once more on a private copy of it, and from
  then on that input is copied in before each replay and its update copied back
  after (the H200 run re-captured once per `generate`, twelve times, when a new
  tensor meant a new capture); a privately held input that then comes as the
  same tensor `SHARED_AFTER` calls in a row is captured in place again (a long
  `generate` after short ones: transformers makes a new static cache for every
  `generate`, and the H200 profile counted 1273 device copies per 33-token
  `generate` against torch.compile's 473, every layer's cache copied each token);
  a capture for written inputs alone runs nothing first (the parameters'
  one-time work is done), and the inputs are copied in one `_foreach_copy_`;
  the replay keeps no reference to an input written in place (only its
  address): the next `generate`'s cache can then take the freed cache's
  memory, and the graph fits it with no capture at all, as PyTorch's CUDA
  graph trees do; and since transformers allocates each `generate`'s cache
  while the last one is still alive, caches come back at a few addresses in
  turn (an H100 profile: one capture per `generate`, its capture and first
  replay 40 ms of host time in a 128-token `generate` of 350 ms, where
  torch.compile's graph trees re-record nothing): a replaced capture is kept
  (up to `KEPT_CAPTURES`, small pools only), keyed by the addresses of the
  inputs it writes, and a call that brings them again replays it;
- capture is refused, and the graph runs without it, when it cannot be safe:
  inputs that are not CUDA tensors, or any error while capturing (an op that
  synchronizes with the host, say). The reason goes in the graph's report.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch.multiprocessing.reductions import StorageWeakRef

from . import group_selection
from .program import MARK, empty_padded, over_storage, tensor_token, unversioned_changes
from .selection import ROUNDS

log = logging.getLogger("tilefuse")

# Triton compiles on the first call; the partition's program-vs-PyTorch measurement takes the next few
WARMUP_CALLS = 2 + ROUNDS
# a written input that comes as another tensor again within this many calls is held in a private buffer
# (copied in and out per call) instead of capturing again each time
PRIVATE_AFTER = 2
# a privately held written input that comes as the same tensor this many calls in a row is captured in
# place again (no copies from then on)
SHARED_AFTER = 3
# a second graph (its own pool, as large as the first's) is captured only with this much device memory
# free beyond twice the first graph's pool
SPARE_HEADROOM_BYTES = 1 << 30
MAX_REASONS = 6  # why each capture happened, kept in the report (the first and the latest)
# captures kept beside the one in use, keyed by the addresses of the inputs they write in place (two
# static caches that alternate: one per `generate`), and the largest memory pool a kept capture may hold
KEPT_CAPTURES = 2
KEPT_POOL_BYTES = 64 << 20
# what one capture is: its graph, its inputs' buffers and addresses, its outputs and its second graph
CAPTURE_STATE = (
    "graph", "static_inputs", "addresses", "static_outputs", "parameter_state", "input_storages",
    "baseline", "spare", "pool_bytes",
)  # fmt: skip
# a storage over memory it does not own, and the exchange of two storages' memory: outputs lent out of the
# graph's pool, and the copy a held one gets before the pool is written again
CAN_LEND = hasattr(torch._C, "_construct_storage_from_data_pointer") and hasattr(
    torch.UntypedStorage, "_swap_data_ptr_"
)


class CudaGraphReplay:
    """Calls `fn` directly for `WARMUP_CALLS` calls, then as a captured CUDA graph."""

    def __init__(
        self, fn: Callable, is_parameter: Sequence[bool], report: dict, mutated: Sequence[bool] = ()
    ):  # fmt: skip
        self.fn = fn
        self.is_parameter = list(is_parameter)
        # inputs used in place (never copied into static buffers): parameters, and inputs the graph writes
        mutated = list(mutated) or [False] * len(self.is_parameter)
        self.in_place = [p or m for p, m in zip(self.is_parameter, mutated)]
        self.mutated = mutated
        # by position: the parameters the graph only reads (checked every call), the inputs it writes,
        # and the inputs that may need a copy into the capture's buffers (all but those parameters)
        self.read_parameters = [i for i, (p, m) in enumerate(zip(self.is_parameter, mutated)) if p and not m]
        self.written = [i for i, m in enumerate(mutated) if m]
        self.copied = [i for i, (p, m) in enumerate(zip(self.is_parameter, mutated)) if m or not p]
        # the read parameters as the capture saw them, for the every-call check (`_parameters_as_captured`):
        # objects, marks, addresses, versions (of those that keep one) and the unversioned changes
        self.watched: tuple | None = None
        # a written input captured as a copy (it came as different tensors), copied in and out per call
        self.private = [False] * len(mutated)
        # written input -> the call at which it last came as another tensor
        self.last_change: dict[int, int] = {}
        # privately held input -> (its address at the last call, how many calls in a row it came there)
        self.same_tensor: dict[int, tuple[int, int]] = {}
        self.report = report
        self.calls = 0
        self.graph: torch.cuda.CUDAGraph | None = None
        # the captured inputs: static buffers, parameters, None for an input written in place (not
        # kept alive: a freed cache's address may come back as the next one's)
        self.static_inputs: list[torch.Tensor | None] = []
        self.addresses: list[int] = []  # each captured input's data_ptr
        self.static_outputs: object = None
        self.parameter_state: tuple = ()
        self.refused: str | None = None
        self.captures = 0
        # the last replay's outputs lent to the caller (weak: held only by the caller) over the pool
        self.lent: list[StorageWeakRef] = []
        self.input_storages: set[int] = set()  # data_ptrs of the captured inputs' storages
        # without lending: the outputs' storages' use counts at capture (more: the caller holds them), the
        # second graph (graph, outputs: always cloned) and what the first graph's pool took
        self.baseline: dict[int, int] = {}
        self.spare: tuple | None = None
        self.no_spare: str | None = None
        self.pool_bytes = 0
        # other captures, by the addresses of the inputs they write in place (`CAPTURE_STATE` each)
        self.kept: dict[tuple[int, ...], dict] = {}
        report["cudagraphs"] = "not captured yet"
        # results copied: lent ones still held when the pool was written again, or (without lending) the
        # second graph's replays
        report["outputs_copied"] = 0

    def __call__(self, *args: object) -> object:
        if self.refused is not None:
            return self.fn(*args)
        self.calls += 1
        if self.calls == 1 and (reason := _unsafe_inputs(args)) is not None:
            # known now: no need to wait for the capture. Said quietly (the report has it): a graph
            # run once per call of the user's code, as a static-cache prompt whose cache position
            # starts on the CPU, gains nothing from a replay and its user has nothing to fix
            return self._refuse(reason, args, logging.INFO)
        if self.calls <= WARMUP_CALLS:
            token = group_selection.replayed.set(True)  # its programs' choices need not spare host time
            try:
                return self.fn(*args)
            finally:
                group_selection.replayed.reset(token)
        if self.graph is None:
            return self._capture(args, "first capture")
        if not self._parameters_as_captured(args):
            if (why := self._parameter_changed(args)) is not None:
                self.kept.clear()  # their parameter-derived work is stale too
                return self._capture(args, why)
            self._watch(args)  # (unchanged: the every-call check is armed again)
        # inputs the graph writes that came as other tensors: captured again on the new tensors (a new
        # generate's cache), or, for an input that is another tensor call after call, on a private buffer
        changed = [
            i for i in self.written if not self.private[i] and self.addresses[i] != args[i].data_ptr()
        ]  # fmt: skip
        if changed and self._switch(args):
            changed = []  # a kept capture on these very inputs takes the call
        if changed:
            self._keep_current()  # (the capture in use, for a call that brings its inputs again)
            for i in changed:
                last = self.last_change.get(i)
                self.private[i] = last is not None and self.calls - last <= PRIVATE_AFTER
                self.last_change[i] = self.calls
            which = ", ".join(map(str, changed))
            how = "; held in private buffers from now on" if any(self.private[i] for i in changed) else ""
            why = f"input(s) {which}, written by the graph, came as other tensors{how}"
            return self._capture(args, why, settle=False)
        if any(self.private) and (settled := self._settled_private(args)):
            self.same_tensor.clear()
            which = ", ".join(map(str, settled))
            why = f"input(s) {which}, held in private buffers, came as the same tensor {SHARED_AFTER} calls"
            why += " in a row"
            return self._capture(args, why, settle=False)
        into, sources, back, targets = [], [], [], []  # copies in before the replay, and back after
        for i in self.copied:
            arg, static = args[i], self.static_inputs[i]
            if self.addresses[i] == arg.data_ptr():
                continue
            into.append(static)
            sources.append(arg)
            if self.mutated[i]:  # held in a private buffer: the update is copied back
                back.append(arg)
                targets.append(static)
        # the caller holds the graph's outputs (no lending here): the second graph takes the call
        held = not CAN_LEND and _held(self.static_outputs, self.baseline)
        if held and self._spare_graph(args) is None:
            self.report["calls_not_replayed"] = self.report.get("calls_not_replayed", 0) + 1
            return self.fn(*args)  # their memory must not be written, and there is no other graph
        if into:
            torch._foreach_copy_(into, sources)
        self._reclaim()
        (self.spare[0] if held else self.graph).replay()
        if back:
            torch._foreach_copy_(back, targets)
        if not held:
            return self._outputs(args)
        self.report["outputs_copied"] += 1
        return _clone(self.spare[1], args)

    def _written_key(self, addresses: Iterable[int]) -> tuple[int, ...]:
        """The addresses of the inputs the graph writes in place: what a kept capture is found by."""
        return tuple(a for a, m in zip(addresses, self.mutated) if m)

    def _switch(self, args: Sequence[object]) -> bool:
        """Make the kept capture on `args`' written inputs (their addresses) the one in use, the current
        one kept in its place; False where none fits (none kept there, or the parameters changed since)."""
        if any(self.private):
            return False
        state = self.kept.pop(self._written_key(a.data_ptr() for a in args), None)
        if state is None:
            return False
        if state["parameter_state"] != self._parameter_state(args):
            return False  # dropped: what it derived from the parameters is stale
        self._keep_current()
        for name in CAPTURE_STATE:
            setattr(self, name, state[name])
        self.watched = None  # armed again at the next call, from its parameter state
        self.report["captures_reused"] = self.report.get("captures_reused", 0) + 1
        return True

    def _keep_current(self) -> None:
        """Keep the capture in use (before another replaces it) for a call that brings its written
        inputs again, the oldest kept one dropped past `KEPT_CAPTURES`; not one on private buffers, nor
        one whose memory pool is large (kept pools stay reserved)."""
        if self.graph is None or any(self.private) or self.pool_bytes > KEPT_POOL_BYTES:
            return
        key = self._written_key(self.addresses)
        self.kept.pop(key, None)  # (kept again: the newest, last to be dropped)
        self.kept[key] = {name: getattr(self, name) for name in CAPTURE_STATE}
        while len(self.kept) > KEPT_CAPTURES:
            self._reclaim()  # (outputs lent over the dropped pool get memory of their own first)
            del self.kept[next(iter(self.kept))]

    def _settled_private(self, args: Sequence[object]) -> list[int]:
        """Privately held inputs that have come as the same tensor `SHARED_AFTER` calls in a row (all of
        them, so one capture takes them back in place); [] while any still moves."""
        held = [i for i, p in enumerate(self.private) if p]
        for i in held:
            ptr = args[i].data_ptr()
            last, streak = self.same_tensor.get(i, (None, 0))
            self.same_tensor[i] = (ptr, streak + 1 if ptr == last else 1)
        if held and all(self.same_tensor[i][1] >= SHARED_AFTER for i in held):
            for i in held:
                self.private[i] = False
            return held
        return []

    def _outputs(self, args: Sequence[object]) -> object:
        """The replay's outputs handed out over the graph's pool, without a copy: lent through storages
        of their own, remembered weakly until the pool is written again (one per pool storage: outputs
        sharing memory still share it); without lending, over their own storages (a caller that keeps
        one raises its use count, and the graph is not replayed while it does). Cloned where they carry
        autograd history or lie in an input's memory (a parameter returned, a view of one); inputs the
        graph updates in place are returned as themselves (the caller's write-back is then a no-op)."""
        aliases: dict[int, object] = {}

        def hand_out(t: torch.Tensor) -> torch.Tensor:
            storage = t.untyped_storage()
            if t.requires_grad or storage.data_ptr() in self.input_storages:
                return copy_out(t)
            if CAN_LEND:
                alias = aliases.get(storage.data_ptr())
                storage = self._alias(storage, aliases) if alias is None else alias
            return over_storage(t, storage)

        return _each_output(self.static_outputs, args, hand_out)

    def _alias(self, storage: torch.UntypedStorage, aliases: dict[int, object]) -> object:
        """A storage of its own over `storage`'s memory, lent until the pool is written again."""
        alias = torch._C._construct_storage_from_data_pointer(
            storage.data_ptr(), storage.device, storage.nbytes()
        )
        aliases[storage.data_ptr()] = alias
        self.lent.append(StorageWeakRef(alias))
        return alias

    def _spare_graph(self, args: Sequence[object]) -> tuple | None:
        """The second graph and its outputs (captured at its first use), or None without one."""
        if self.spare is None:
            self.spare = self._capture_spare(args)
        return self.spare

    def _capture_spare(self, args: Sequence[object]) -> tuple | None:
        """The graph captured again on the same inputs, into a pool of its own (sharing the first's
        would let its intermediates overwrite the outputs the caller holds), whose outputs are always
        cloned (never held, so always free to replay); None where device memory or the capture does
        not allow it (said once in the report)."""
        if self.no_spare is not None:
            return None
        free = torch.cuda.mem_get_info()[0]
        if free < 2 * self.pool_bytes + SPARE_HEADROOM_BYTES:
            self.no_spare = f"{free >> 20} MiB free for a second graph of {self.pool_bytes >> 20} MiB"
        else:
            captured = [a if s is None else s for s, a in zip(self.static_inputs, args)]
            written = {i for i, s in enumerate(self.static_inputs) if s is None}
            try:
                torch.cuda.synchronize()
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    outputs = self.fn(*captured)
                static = _input_places(outputs, {id(captured[i]): i for i in written})
                self.report["second_graph"] = "captured (for calls while the first graph's outputs are held)"
                return graph, static
            except Exception as e:  # noqa: BLE001  (the first graph and the program still serve)
                self.no_spare = f"capture failed: {type(e).__name__}: {e}"
        self.report["second_graph"] = f"none: {self.no_spare}"
        return None

    def _reclaim(self) -> None:
        """Before the pool is written again: every lent output the caller still holds gets a copy of
        its memory of its own, its storage's memory exchanged for the copy (its views follow)."""
        for ref in self.lent:
            alias = None if ref.expired() else torch.UntypedStorage._new_with_weak_ptr(ref.cdata)
            if alias is None:
                continue
            own = torch.empty(alias.nbytes(), dtype=torch.uint8, device=alias.device).untyped_storage()
            own.copy_(alias)
            alias._swap_data_ptr_(own)
            self.report["outputs_copied"] += 1
        self.lent = []

    def __del__(self) -> None:
        try:  # the pool goes with the graph: what the caller holds must not point into it
            self._reclaim()
        except Exception:  # noqa: BLE001  (at interpreter exit torch may be gone first)
            pass

    def _parameter_state(self, args: Sequence[object]) -> tuple:
        # the changes no version counter shows (last: a fused optimizer step, a write through `p.data`),
        # since what the program derived from the parameters (a folded weight) was captured as it was then
        # (a written parameter is another tensor call to call, copied in and out: not watched)
        state = []
        for i in self.read_parameters:
            arg = args[i]
            try:
                version = arg._version
            except RuntimeError:  # an inference tensor keeps no version; it cannot change in place
                version = None
            # (its object too: a new parameter can take a freed one's memory at version 0)
            state.append((arg.data_ptr(), version, tensor_token(arg)))
        return (*state, unversioned_changes()) if state else ()

    def _watch(self, args: Sequence[object]) -> None:
        """Note the read parameters of `args` (the capture's: `parameter_state` was just checked
        equal) for `_parameters_as_captured`."""
        params = [args[i] for i in self.read_parameters]
        versioned = [j for j, p in enumerate(params) if not p.is_inference()]  # (inference tensors keep none)
        self.watched = (
            list(map(id, params)), [getattr(p, MARK, None) for p in params], list(map(_DATA_PTR, params)),
            versioned, [params[j]._version for j in versioned], unversioned_changes(),
        )  # fmt: skip

    def _parameters_as_captured(self, args: Sequence[object]) -> bool:
        """The every-call check: the read parameters are the captured objects (`id` and the mark
        `tensor_token` gave them), at the captured addresses and versions, and nothing changed that no
        version counter shows. False where any differs (or nothing is watched yet): then
        `_parameter_changed` says whether and why the capture no longer fits. Lists built by `map` and
        compared whole, in place of a tuple a parameter (`_parameter_state`): this runs every replay."""
        watched = self.watched
        if watched is None:
            return False
        ids, marks, addresses, versioned, versions, unversioned = watched
        params = [args[i] for i in self.read_parameters]
        try:
            return (
                unversioned == unversioned_changes()
                and ids == list(map(id, params))
                and addresses == list(map(_DATA_PTR, params))
                and versions == [params[j]._version for j in versioned]
                and marks == [getattr(p, MARK, None) for p in params]
            )
        except RuntimeError:  # an inference tensor (no version) where the capture had another tensor
            return False

    def _parameter_changed(self, args: Sequence[object]) -> str | None:
        """Why the captured graph no longer fits `args`' parameters (the first that moved or was
        updated in place); None if none did."""
        state = self._parameter_state(args)
        if state == self.parameter_state:
            return None
        if state and self.parameter_state and state[-1] != self.parameter_state[-1]:
            # (`program.unversioned_changes`: an optimizer step, a parameter's `.data`, parameters_changed())
            return "parameters changed where no version counter shows it (an optimizer step, a `.data` use)"
        for i, now, then in zip(self.read_parameters, state, self.parameter_state):
            if now != then:
                if now[0] != then[0]:
                    return f"parameter input {i} moved"
                if now[1] != then[1]:
                    return f"parameter input {i} was updated in place"
                return f"parameter input {i} was replaced"
        return "the parameters changed"

    def _capture(self, args: Sequence[object], why: str, settle: bool = True) -> object:
        """Capture the graph on `args` and replay it. `settle`: run it once first, outside the graph, so
        one-time work (parameter-derived steps) is not captured; a capture for written inputs alone
        skips it (the parameters are those of the last capture, their work is done)."""
        reason = _unsafe(args)
        if reason is not None:
            return self._refuse(reason, args)
        self._reclaim()  # the replaced graph's pool is freed below
        started = time.perf_counter()
        try:
            captured = [  # copies keep the inputs' layouts: a program reads padded rows to their tail
                a if in_place and not private else copy_out(a)
                for a, in_place, private in zip(args, self.in_place, self.private)
            ]  # fmt: skip
            written = {i for i, (m, p) in enumerate(zip(self.mutated, self.private)) if m and not p}
            self.static_inputs = [None if i in written else a for i, a in enumerate(captured)]
            self.input_storages = {a.untyped_storage().data_ptr() for a in captured}
            self.addresses = [a.data_ptr() for a in captured]
            if settle or self._parameter_state(args) != self.parameter_state:
                # on copies of the inputs the graph writes: this call is not the user's (a counter must
                # not be incremented twice)
                self.fn(*[a.clone() if m else a for a, m in zip(captured, self.mutated)])
            torch.cuda.synchronize()
            # a fresh memory pool per capture: re-capturing into the pool of a graph being replaced hit
            # an internal assert of PyTorch's caching allocator on the H200 (torch 2.11)
            self.static_outputs = None  # nothing keeps the replaced graph's memory alive
            self.spare = None  # (outputs the caller holds keep their memory; no graph writes it again)
            reserved = torch.cuda.memory_reserved()
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                outputs = self.fn(*captured)
            self.pool_bytes = max(torch.cuda.memory_reserved() - reserved, 0)
            # an output that is an input written in place is that input, whatever tensor the call brings
            self.static_outputs = _input_places(outputs, {id(captured[i]): i for i in written})
            self.baseline = _use_counts(self.static_outputs)
            del captured, outputs
            self.parameter_state = self._parameter_state(args)
            self.watched = None  # armed at the next call
        except Exception as e:  # capture must never cost the user their result
            self.graph = None
            return self._refuse(f"capture failed: {type(e).__name__}: {e}", args)
        self.captures += 1
        self.report["cudagraphs"] = f"captured ({self.captures} capture(s))"
        # what the captures cost the calls that made them (a settling run, the capture, instantiation)
        spent = self.report.get("capture_seconds", 0.0) + time.perf_counter() - started
        self.report["capture_seconds"] = round(spent, 4)
        reasons = self.report.setdefault("captured_because", [])
        reasons.append(why)
        if len(reasons) > MAX_REASONS:  # the first capture's reason and the latest ones
            del reasons[1]
        self.graph.replay()
        for arg, static, private in zip(args, self.static_inputs, self.private):
            if private:  # a written input held in a private buffer: the caller's tensor gets the update
                arg.copy_(static)
        return self._outputs(args)

    def _refuse(self, reason: str, args: Sequence[object], level: int = logging.WARNING) -> object:
        self.refused = reason
        self.kept.clear()  # never replayed from now on
        self.report["cudagraphs"] = f"refused: {reason}"
        log.log(level, "tilefuse: no CUDA graph for graph %s: %s", self.report.get("name"), reason)
        return self.fn(*args)


_DATA_PTR = torch.Tensor.data_ptr


def _unsafe_inputs(args: Sequence[object]) -> str | None:
    """Why these inputs cannot be captured, whenever it is tried; None if they can."""
    for i, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            return f"input {i} is a {type(a).__name__}, not a tensor"
        if not a.is_cuda:
            return f"input {i} is on {a.device}, not a CUDA device"
    return None


def _unsafe(args: Sequence[object]) -> str | None:
    reason = _unsafe_inputs(args)
    if reason is None and torch.cuda.is_current_stream_capturing():
        return "called while another CUDA graph is being captured"
    return reason


class _Input(int):
    """In captured outputs: the call's input at this position (an input written in place)."""


def _input_places(outputs: object, places: dict[int, int]) -> object:
    """`outputs` with each tensor whose id is in `places` replaced by its input position."""
    if isinstance(outputs, torch.Tensor):
        return _Input(places[id(outputs)]) if id(outputs) in places else outputs
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_input_places(o, places) for o in outputs)
    return outputs


def _tensors(outputs: object) -> list[torch.Tensor]:
    if isinstance(outputs, _Input):
        return []
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, (list, tuple)):
        return [t for o in outputs for t in _tensors(o)]
    return []


def _use_counts(outputs: object) -> dict[int, int]:
    """Each output storage's use count (tensors and views over it), by its address."""
    counts = {}
    for t in _tensors(outputs):
        storage = t.untyped_storage()
        counts[storage.data_ptr()] = torch._C._storage_Use_Count(storage._cdata)
    return counts


def _held(outputs: object, baseline: dict[int, int]) -> bool:
    """Whether the caller holds any of `outputs` (or a view of one): a storage used more than at capture."""
    return _use_counts(outputs) != baseline


def _each_output(outputs: object, args: Sequence[object], fn: Callable[[torch.Tensor], object]) -> object:
    """The captured `outputs` with `fn` of every tensor, and each input place the call's input."""
    if isinstance(outputs, _Input):
        return args[outputs]
    if isinstance(outputs, torch.Tensor):
        return fn(outputs)
    if isinstance(outputs, (list, tuple)):
        return type(outputs)(_each_output(o, args, fn) for o in outputs)
    return outputs


def _clone(outputs: object, args: Sequence[object]) -> object:
    """The captured `outputs` with every tensor cloned, and each input place the call's input."""
    return _each_output(outputs, args, copy_out)


def copy_out(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` with its layout (a replay's outputs, a capture's copies of its inputs). A
    row-major tensor with padded rows (a GEMM's or row kernel's output over an odd vocabulary,
    `program.output_strides`) is copied as the one span of memory it covers, padding included:
    `clone` would make it packed, through a strided copy kernel that writes unaligned rows (GPT-2's
    forward replayed took 0.2 ms more GPU time than unreplayed, its padded logits cloned: the suspect,
    not yet measured apart)."""
    if t.is_contiguous() or t.dim() < 2 or 0 in t.shape or not _padded_rows(t.shape, t.stride()):
        return t.clone()
    out = empty_padded(t.shape, t.stride(), t.dtype, t.device)
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    out.as_strided((span,), (1,)).copy_(t.as_strided((span,), (1,)))
    return out


def _padded_rows(shape: Sequence[int], strides: Sequence[int]) -> bool:
    """Whether `strides` lay `shape` out row-major with gaps between rows (no element shared)."""
    if strides[-1] != 1:
        return False
    return all(strides[d] >= shape[d + 1] * strides[d + 1] for d in range(len(shape) - 1))
