"""The runtime on a GPU: real models, direct launches, CUDA graph replay (skipped without CUDA)."""

from __future__ import annotations

import gc

import pytest
import torch

import tilefuse
from helpers import train_update
from tilefuse.backends.triton.launcher import BoundLaunch

pytestmark = pytest.mark.gpu

CUDA = "cuda"


def rel_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.double() - expected.double()).norm() / expected.double().norm()).item()


def _tiny(family: str, dtype: torch.dtype) -> torch.nn.Module:
    transformers = pytest.importorskip("transformers")
    common = dict(vocab_size=512, hidden_size=256, intermediate_size=688, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=256)  # fmt: skip
    config, model = {
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
    }[family]
    return model(config(**common)).to(CUDA, dtype).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_transformers_models_run_on_the_gpu_and_match_eager(family, dtype):
    model = _tiny(family, dtype)
    ids = torch.randint(0, 512, (2, 64), device=CUDA)
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        ref = model(ids).logits
        for _ in range(3):  # the first call writes the program; later calls take the direct launches
            out = compiled(ids).logits
    assert out.device.type == "cuda"
    assert rel_error(out, ref) < (2e-2 if dtype == torch.bfloat16 else 1e-4)
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    assert partitions and not [p for p in partitions if p.get("runtime_error")], partitions
    assert not [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["node"] == "<graph>"]


def test_launches_go_straight_to_the_compiled_binary(monkeypatch):
    # the kernels, not the measured choice: a group on the library path launches nothing, and the
    # selection's first pass over a program binds launches it never makes (freed at the next collection)
    monkeypatch.setenv("TILEFUSE_SELECT", "0")
    x, w = torch.randn(64, 128, device=CUDA), torch.randn(128, 96, device=CUDA)
    earlier = {id(o) for o in gc.get_objects() if type(o) is BoundLaunch}
    compiled = tilefuse.compile(lambda x, w: torch.relu(x @ w) * 2)
    for _ in range(3):
        torch.testing.assert_close(compiled(x, w), torch.relu(x @ w) * 2, rtol=1e-4, atol=1e-4)  # not SGEMM's order
    gc.collect()
    # every launch, the GEMM's included (it could read through TMA descriptors, not asked to)
    launches = [o for o in gc.get_objects() if type(o) is BoundLaunch and id(o) not in earlier and not o.empty]
    assert launches and all(launch.raw is not None for launch in launches), [
        (launch.kernel.name, launch.per_launch_tma) for launch in launches if launch.raw is None
    ]


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.RMSNorm(128)
        self.fc = torch.nn.Linear(128, 128)

    def forward(self, x):
        return x + torch.nn.functional.silu(self.fc(self.norm(x)))


def test_reduce_overhead_replays_keeps_outputs_and_sees_parameter_updates():
    model = _Block().to(CUDA)
    compiled = tilefuse.compile(model, mode="reduce-overhead")
    xs = [torch.randn(4, 32, 128, device=CUDA) for _ in range(6)]
    with torch.no_grad():
        outs = [compiled(x) for x in xs]
        for x, out in zip(xs, outs):  # every output survived the replays after it
            torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-4)
        assert compiled.tilefuse_reports[0]["cudagraphs"].startswith("captured")
        model.norm.weight.mul_(1.5)  # folded into the GEMM weight once: must be re-captured
        model.fc.bias.add_(0.25)
        torch.testing.assert_close(compiled(xs[0]), model(xs[0]), rtol=1e-4, atol=1e-4)
        assert "2 capture(s)" in compiled.tilefuse_reports[0]["cudagraphs"]


def test_reduce_overhead_keeps_the_last_result_alive_without_a_copy_each_replay():
    """`out = compiled(x)` in a loop holds the last result while the next call runs: it keeps its values
    (torch 2.13: a copy at the next call; 2.11: a second graph takes every other call, copied), and
    every call is replayed."""
    from tilefuse.compiler import cudagraphs

    model = _Block().to(CUDA)
    compiled = tilefuse.compile(model, mode="reduce-overhead")
    xs = [torch.randn(4, 32, 128, device=CUDA) for _ in range(cudagraphs.WARMUP_CALLS + 6)]
    with torch.no_grad():
        out = compiled(xs[0])
        for i in range(1, len(xs)):
            last, out = out, compiled(xs[i])  # `last` is held while this call replays
            torch.testing.assert_close(last, model(xs[i - 1]), rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(out, model(xs[i]), rtol=1e-4, atol=1e-4)
            del last  # (as `out = compiled(x)` rebinding would: one result held at a time)
        report = compiled.tilefuse_reports[0]
        assert report["cudagraphs"].startswith("captured") and "calls_not_replayed" not in report, report
        if cudagraphs.CAN_LEND:
            assert report["outputs_copied"] > 0
        else:
            assert report["second_graph"].startswith("captured"), report


def test_reduce_overhead_refuses_cpu_inputs_cleanly():
    compiled = tilefuse.compile(lambda x, y: x * 2 + y.to(x.device), mode="reduce-overhead")
    x, y = torch.randn(8, device=CUDA), torch.randn(8)
    for _ in range(4):
        torch.testing.assert_close(compiled(x, y), x * 2 + y.cuda())
    assert compiled.tilefuse_reports[0]["cudagraphs"].startswith("refused")


@pytest.mark.parametrize("shape", [(1024, 1024, 4096), (257, 129, 1000)], ids=str)
def test_fp32_at_highest_precision_is_as_accurate_as_sgemm(shape):
    """fp32 dots at "highest" are exact by default: no worse than SGEMM's error."""
    assert torch.get_float32_matmul_precision() == "highest"
    m, n, k = shape
    x, w = torch.randn(m, k, device=CUDA), torch.randn(k, n, device=CUDA)
    compiled = tilefuse.compile(lambda x, w: x @ w + 1)
    ref = x.double() @ w.double() + 1
    ours, sgemm = rel_error(compiled(x, w), ref), rel_error(x @ w + 1, ref)
    assert ours <= max(1.5 * sgemm, 1e-7), (ours, sgemm)


def test_a_training_graph_matches_eager_gradients_while_its_steps_are_measured_and_after():
    """Step 1 runs tilefuse's forward and compiles the backward; later steps alternate between the
    compiled forward and backward and Dynamo's graph in PyTorch until the faster is chosen
    (selection.TrainingSelection); gradients match eager's throughout."""
    model = _tiny("llama", torch.float32).train()
    ids = torch.randint(0, 512, (2, 32), device=CUDA)
    compiled = tilefuse.compile(model)
    from tilefuse.compiler.selection import TrainingSelection

    for _ in range(1 + TrainingSelection.SETTLE + 1 + 2 * TrainingSelection.ROUNDS + 2):
        compiled(input_ids=ids, labels=ids).loss.backward()
        ours = [p.grad.clone() for p in model.parameters()]
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()
        for got, expected in zip(ours, (p.grad for p in model.parameters())):
            assert rel_error(got, expected) < 1e-4
        model.zero_grad(set_to_none=True)
    assert any("chosen by measurement" in r.get("training", "") for r in compiled.tilefuse_reports)
    assert any(r.get("kind") == "backward" for r in compiled.tilefuse_reports)


@pytest.mark.parametrize("static", [False, True], ids=["dynamic cache", "static cache, reduce-overhead"])
def test_greedy_generation_gives_eager_tokens(static):
    """Both ways users compile generate: the forward with the dynamic KV cache (new shapes each
    step: one dynamic graph whose static islands run as kernels), and a static cache replayed as CUDA graphs (the cache is an
    input mutated in place: the replay must see and keep every step's update). The dynamic cache
    runs in float32: in bf16 the compiled prefill's rounding differs from eager's, and a random
    model's near-tied logits then picked another token on the H200 (a tie, not a wrong kernel)."""
    model = _tiny("llama", torch.bfloat16 if static else torch.float32)
    ids = torch.randint(1, 512, (2, 24), device=CUDA)
    kwargs = dict(max_new_tokens=12, do_sample=False, attention_mask=torch.ones_like(ids), pad_token_id=0)
    # eager is eager: with a static cache, transformers would otherwise compile it with torch.compile
    kwargs["disable_compile"] = True
    if static:
        kwargs["cache_implementation"] = "static"
    # long, short ones (a new cache each, used for one decode step: held in a private buffer), long
    # again (the cache in place again); each generate makes a new static cache
    lengths = (12, 12, 2, 2, 2, 12, 12)
    expected = {n: model.generate(ids, **{**kwargs, "max_new_tokens": n}) for n in set(lengths)}
    eager_forward = model.forward
    model.forward = tilefuse.compile(eager_forward, mode="reduce-overhead" if static else "default")
    try:
        for n in lengths:
            assert torch.equal(model.generate(ids, **{**kwargs, "max_new_tokens": n}), expected[n])
        # nothing fell back on the way: a program's constant once copied from host memory, which a
        # capture refuses, and its partition then ran in PyTorch for good
        reports = model.forward.tilefuse_reports
        assert not [p["runtime_error"] for r in reports for p in r["partitions"] if p.get("runtime_error")]
    finally:
        model.forward = eager_forward


@pytest.mark.parametrize("mode", ["default", "reduce-overhead"])
def test_inputs_updated_in_place_are_updated_once_a_call_in_place(mode):
    """A cache written at one position a step and a step counter, as a static KV cache does: each call
    updates them exactly once (the graph is neither timed twice in one call nor captured on copies),
    in place (no copy of the cache), and the CUDA graph is captured with them."""

    def step(cache, pos, new, q, counter):
        cache.index_copy_(2, pos, new)
        counter.add_(1)
        return torch.softmax(q @ cache.transpose(-1, -2) * 0.25, -1) @ cache * 2

    cache = torch.randn(2, 4, 64, 32, device=CUDA)
    counter = torch.zeros((), dtype=torch.int64, device=CUDA)
    ref_cache, ref_counter = cache.clone(), counter.clone()
    compiled = tilefuse.compile(step, mode=mode)
    with torch.no_grad():
        for i in range(12):  # past the warm-up, the measurement and the capture
            if i == 9:  # another counter tensor (a new generate's): its update still lands in it
                counter, ref_counter = counter.clone(), ref_counter.clone()
            pos = torch.tensor([i], device=CUDA)
            new, q = torch.randn(2, 4, 1, 32, device=CUDA), torch.randn(2, 4, 1, 32, device=CUDA)
            got = compiled(cache, pos, new, q, counter)
            want = step(ref_cache, pos, new, q, ref_counter)
            assert rel_error(got, want.double()) < 1e-5
            assert torch.equal(cache, ref_cache) and counter.item() == ref_counter.item() == i + 1
    (report,) = compiled.tilefuse_reports
    if mode == "reduce-overhead":  # captured on the caller's tensors, then once more on a private counter
        assert report["cudagraphs"] == "captured (2 capture(s))"


@pytest.mark.parametrize("update", ["adamw", "data"])
def test_an_fp32_gpt2_training_loop_matches_eager_step_for_step(update):
    """fp32 GPT-2's forward reads K-major copies of its Conv1D weights, derived from parameters
    (passes/operand_layout.py): each step ends with an update (AdamW, or `p.data.add_`, which
    leaves the version counters alone) and the compiled steps, while measured and after, give
    eager's losses on eager's parameters (program.Trained: recomputed once the graph trains)."""
    import copy

    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        vocab_size=512, n_embd=256, n_layer=2, n_head=8, n_positions=256, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0,
    )  # fmt: skip
    torch.manual_seed(0)
    eager = transformers.GPT2LMHeadModel(config).to(CUDA).train()
    model = copy.deepcopy(eager)
    compiled = tilefuse.compile(model)
    optimizers = {m: torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (eager, model)}
    ids = torch.randint(0, 512, (2, 64), device=CUDA)
    for step in range(12):
        losses = []
        for module, call in ((eager, eager), (model, compiled)):
            optimizer = optimizers[module] if update == "adamw" else None
            losses.append(train_update(module, call(input_ids=ids, labels=ids).loss, optimizer, lr=0.05))
        # AdamW's first steps turn rounding differences of near-zero gradients into lr-sized steps
        assert rel_error(losses[1], losses[0]) < (2e-3 if update == "adamw" else 1e-4), (step, losses)
    assert losses[0] < 0.8 * float(torch.log(torch.tensor(512.0)))  # it trained: from ln(512)


def test_fp32_gpt2_reads_its_conv1d_weights_k_major_and_matches_eager(tmp_path):
    """GPT-2's Conv1D weights are stored [K, N]; in fp32 on the GPU each is copied once, transposed, so
    the 3xTF32 GEMMs read them K-major (passes/operand_layout.py). The first call's output is the
    program's (the selection returns it while measuring)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=512, n_embd=256, n_layer=2, n_head=8, n_positions=256)
    model = transformers.GPT2LMHeadModel(config).to(CUDA).eval()
    ids = torch.randint(0, 512, (2, 64), device=CUDA)
    compiled = tilefuse.compile(model, dump=tmp_path)
    with torch.no_grad():
        ref = model(ids).logits
        outs = [compiled(ids).logits for _ in range(3)]
    assert all(rel_error(out, ref) < 1e-4 for out in outs), [rel_error(out, ref) for out in outs]
    (graph,) = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert (graph / "ein.kmajor-f32-weights.mlir").read_text().count("ein.view permute [1, 0] %") >= 8
    partitions = [p for r in compiled.tilefuse_reports for p in r["partitions"]]
    assert not [p for p in partitions if p.get("runtime_error")], partitions


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_padded_lm_head_gradient_rows_are_read_to_their_tail_on_the_gpu(monkeypatch, dtype):
    """GPT-2's LM-head weight gradient, g^T @ h + e, with g [2048, 50257] in rows 50304 apart holding NaN
    in the padding: the kernel reads the tails (vector loads), the library path splits K without a copy,
    and both match float64 (no NaN reaches the output)."""
    from tilefuse.backends.triton import launcher
    from tilefuse.compiler.group_selection import library_matmul

    decided = []
    original = launcher.tail_flags
    monkeypatch.setattr(launcher, "tail_flags", lambda k, t: decided.append(original(k, t)) or decided[-1])
    torch.manual_seed(0)
    vocab, stride = 50257, 50304
    storage = torch.full((2048 * stride,), float("nan"), device=CUDA, dtype=dtype)
    g = storage.as_strided((2048, vocab), (stride, 1))
    g.copy_(torch.randn(2048, vocab, device=CUDA))
    h, e = torch.randn(2048, 256, device=CUDA, dtype=dtype), torch.randn(vocab, 256, device=CUDA, dtype=dtype)
    want = g.double().t() @ h.double() + e.double()
    got = tilefuse.compile(lambda g, h, e: g.t() @ h + e)(g, h, e)
    assert got.isfinite().all() and rel_error(got, want) < 2e-2
    assert any(any(d.values()) for d in decided)  # the tail was taken
    w = torch.randn(vocab, 256, device=CUDA, dtype=dtype)
    dx = library_matmul(g, w, False, False)  # K = 50257 over aligned rows: split, no padded copy
    assert dx.isfinite().all() and rel_error(dx, g.double() @ w.double()) < 2e-2


def test_an_lm_loss_over_an_odd_vocabulary_matches_eager_on_the_gpu():
    """Logits over 50257 tokens (a GEMM's padded output) read by the loss's row kernels through their
    tails (vector loads, `other` selected over the tail), its softmax's rows stored to the row stride:
    the loss and the softmax as eager's, against float64."""
    torch.manual_seed(0)
    h = torch.randn(512, 256, device=CUDA, dtype=torch.bfloat16)
    w = torch.randn(50257, 256, device=CUDA, dtype=torch.bfloat16) / 16
    y = torch.randint(0, 50257, (512,), device=CUDA)

    def fn(h, w, y):
        logits = h @ w.t()
        return torch.nn.functional.cross_entropy(logits.float(), y), torch.softmax(logits, -1)

    got = tilefuse.compile(fn)(h, w, y)
    logits = h.double() @ w.double().t()
    want = torch.nn.functional.cross_entropy(logits, y), torch.softmax(logits, -1)
    assert rel_error(got[0], want[0]) < 1e-2 and rel_error(got[1], want[1]) < 2e-2
    assert got[1].isfinite().all()


def _vision_outputs(model: torch.nn.Module, pixels: torch.Tensor) -> tuple:
    """`model` compiled, its last hidden state after three calls (the program written, then its
    direct launches) and eager's, without gradients."""
    torch._dynamo.reset()
    compiled = tilefuse.compile(model)
    with torch.no_grad():
        ref = model(pixel_values=pixels).last_hidden_state
        for _ in range(3):
            out = compiled(pixel_values=pixels).last_hidden_state
    return compiled, out, ref


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_vit_inference_keeps_sdpa_fused(dtype, monkeypatch):
    """ViT under no_grad at 197 tokens: the all-visible mask transformers builds while tracing goes
    before AOTAutograd, so the aten graph holds a fused SDPA op, not the float32 math fallback
    (`_safe_softmax` between float32 batched GEMMs); eager's values."""
    transformers = pytest.importorskip("transformers")
    from tilefuse.compiler import backend

    config = transformers.ViTConfig(hidden_size=192, num_hidden_layers=2, num_attention_heads=3,
                                    intermediate_size=384, image_size=224, patch_size=16)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.ViTModel(config).to(CUDA, dtype).eval()
    pixels = torch.randn(2, 3, 224, 224, device=CUDA, dtype=dtype)
    real, targets = backend.compile_aten_graph, []

    def spy(aten, *args, **kwargs):
        targets.extend(str(n.target) for n in aten.graph.nodes if n.op == "call_function")
        return real(aten, *args, **kwargs)

    monkeypatch.setattr(backend, "compile_aten_graph", spy)
    compiled, out, ref = _vision_outputs(model, pixels)
    assert any("_scaled_dot_product_" in t for t in targets), sorted(set(targets))
    assert not any("safe_softmax" in t for t in targets)
    assert rel_error(out, ref) < (2e-2 if dtype == torch.bfloat16 else 1e-3)


def test_convnext_convolutions_read_eager_layouts():
    """ConvNeXt (bf16): every depthwise convolution reads a channels-last tensor as in eager (the
    compiled residual sums written NHWC and viewed back: conv_layout._channels_last_input), so
    cuDNN's NHWC kernels run them; eager's values and output strides."""
    transformers = pytest.importorskip("transformers")
    from torch.profiler import ProfilerActivity, profile

    config = transformers.ConvNextConfig(depths=[2, 2], hidden_sizes=[32, 64], num_stages=2, image_size=64)
    torch.manual_seed(0)
    model = transformers.ConvNextModel(config).to(CUDA, torch.bfloat16).eval()
    pixels = torch.randn(2, 3, 64, 64, device=CUDA, dtype=torch.bfloat16)
    compiled, out, ref = _vision_outputs(model, pixels)
    with torch.no_grad():
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            compiled(pixel_values=pixels)
            torch.cuda.synchronize()
    kernels = [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert not [k for k in kernels if "conv_depthwise2d" in k], kernels  # ATen's NCHW depthwise kernel
    assert out.stride() == ref.stride()
    assert rel_error(out, ref) < 2e-2


def test_a_resnet_training_step_runs_its_kernels_and_matches_eager(monkeypatch):
    """A ResNet's training BatchNorms over more elements a channel than a row kernel holds (looped
    row kernels that write their statistics, then read the norm's weight): on the H200 their
    launches once received their arguments out of order and six partitions went back to PyTorch.
    The compiled forward and backward run (none fails at run time) and match eager's gradients,
    running statistics and batch counters."""
    transformers = pytest.importorskip("transformers")
    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # exact fp32 convolutions on both sides
    torch._dynamo.reset()
    config = transformers.ResNetConfig(
        embedding_size=32, hidden_sizes=[64, 128], depths=[1, 1], num_labels=10
    )
    torch.manual_seed(0)
    model = transformers.ResNetForImageClassification(config).to(CUDA).train()
    ref = transformers.ResNetForImageClassification(config).to(CUDA).train()
    ref.load_state_dict(model.state_dict())
    x = torch.randn(8, 3, 112, 112, device=CUDA)  # the stem's BatchNorm: 8 x 56 x 56 = 25088 a channel
    labels = torch.randint(0, 10, (8,), device=CUDA)
    compiled = tilefuse.compile(model)
    for _ in range(2):
        compiled(pixel_values=x, labels=labels).loss.backward()
        ref(pixel_values=x, labels=labels).loss.backward()
    errors = {
        name: rel_error(p.grad, q.grad) for (name, p), q in zip(model.named_parameters(), ref.parameters())
    }
    assert max(errors.values()) < 1e-3, sorted(errors.items(), key=lambda e: -e[1])[:8]
    for (name, b), c in zip(model.named_buffers(), ref.buffers()):
        torch.testing.assert_close(b, c, rtol=1e-4, atol=1e-5, msg=name)
    reports = compiled.tilefuse_reports
    assert any(r.get("kind") == "backward" for r in reports)
    failed = [p for r in reports for p in r.get("partitions", []) if "runtime_error" in p]
    assert not failed, failed
