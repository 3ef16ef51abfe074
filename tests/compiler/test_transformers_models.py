"""`transformers` models (random init from tiny configs, fp32, CPU) compiled whole: the generated
kernels, run in Triton's interpreter, match eager, in one partition with nothing left to PyTorch.

One architecture per family: Llama (grouped-query attention, RoPE), Qwen2 (q/k/v biases), GPT-2
(LayerNorm, Conv1D, tied embeddings, learned positions), BERT (encoder, padding mask, token
types) and Phi (partial rotary, parallel attention and MLP, gelu).
"""

from __future__ import annotations

import pytest
import torch
from tiny_models import MODELS, _gpt2, _inputs

import tilefuse


@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_eager_as_generated_kernels(name):
    model = MODELS[name]().eval()
    inputs = _inputs(name)
    key = "last_hidden_state" if name == "bert" else "logits"
    with torch.no_grad():
        expected = model(**inputs)
        compiled = tilefuse.compile(model)
        actual = compiled(**inputs)
    torch.testing.assert_close(actual[key], expected[key], rtol=1e-4, atol=1e-5)
    if name != "bert":  # the decoders' key/value caches are outputs of the graph too
        for got, want in zip(actual.past_key_values.layers, expected.past_key_values.layers, strict=True):
            torch.testing.assert_close(got.keys, want.keys, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(got.values, want.values, rtol=1e-4, atol=1e-5)

    (report,) = compiled.tilefuse_reports  # one graph: no graph breaks
    assert not [f for f in report["fallbacks"] if f["node"] == "<graph>"], report["fallbacks"]
    assert report["fallbacks"] == []  # embeddings, masks, positions: all compiled
    (partition,) = report["partitions"]
    kernels = [g for g in partition["groups"] if g["kernel"] is not None]
    assert len(kernels) >= 14  # GPT-2's 2 layers: 16 (its LayerNorms are row kernels, not folded)
    assert [g["not_a_kernel_because"] for g in partition["groups"] if g["kernel"] is None] == []


def test_gpt2_in_training_mode_draws_eagers_dropout_masks():
    """Dropout (embeddings, attention probabilities, residuals) keeps only its masks in PyTorch:
    the same random draws as eager, and the graph stays one partition."""
    model = _gpt2().train()
    inputs = _inputs("gpt2")
    with torch.no_grad():
        compiled = tilefuse.compile(model)
        torch.manual_seed(3)
        actual = compiled(**inputs).logits
        torch.manual_seed(3)
        expected = model(**inputs).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    (report,) = compiled.tilefuse_reports
    assert len(report["partitions"]) == 1
    in_pytorch = {f["op"] for f in report["fallbacks"]}
    assert in_pytorch == {"aten.native_dropout.default", "aten.full.default"}


def test_compiling_a_model_or_its_forward_turns_transformers_own_compile_off():
    """With a static cache, `generate` would compile the forward with torch.compile itself and run
    Inductor's kernels instead of tilefuse's."""
    for wrap in (lambda m: m, lambda m: m.forward):
        model = MODELS["llama"]().eval()
        assert not model.generation_config.disable_compile
        tilefuse.compile(wrap(model))
        assert model.generation_config.disable_compile


def test_gpt2_loss_is_one_graph_with_its_forward():
    """GPT2LMHeadModel's class name has no loss type, so transformers' `loss_function` calls
    `logger.warning_once`; Dynamo broke the graph there, and the training forward was two graphs
    with the logits an output between them. The once-only log calls are traced through."""
    model = _gpt2().eval()  # dropout off: the same loss as eager's
    ids = _inputs("gpt2")["input_ids"]
    compiled = tilefuse.compile(model)
    loss = compiled(input_ids=ids, labels=ids).loss
    expected = model(input_ids=ids, labels=ids).loss
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    assert len(compiled.tilefuse_reports) == 1


def test_once_logging_is_traced_through_and_a_block_can_have_dynamos_own_handling():
    """`tilefuse.compile` sets Dynamo process-wide; `once_logging_as_dynamo_has_it` gives a block
    (a benchmark's torch.compile row) Dynamo's own graph break back."""
    from transformers.utils import logging as hf_logging

    from tilefuse.compiler.api import _trace_through_once_logging, once_logging_as_dynamo_has_it

    logger = hf_logging.get_logger("tilefuse-test")

    def f(x):
        y = x + 1
        logger.warning_once("once")
        return y * 2

    def graphs() -> int:
        torch._dynamo.reset()
        seen = []
        compiled = torch.compile(f, backend=lambda gm, _: seen.append(gm) or gm.forward)
        torch.testing.assert_close(compiled(torch.ones(3)), torch.full((3,), 4.0))
        return len(seen)

    _trace_through_once_logging()
    assert graphs() == 1
    with once_logging_as_dynamo_has_it():
        assert graphs() == 2
    assert graphs() == 1


def test_once_logging_leaves_dynamos_set_sortable():
    """torch 2.11's Dynamo logs each compile's metrics with its config as JSON, sets sorted: functions in
    the set it traces as no-op logging made every compile in the process log a TypeError traceback.
    tilefuse's entries are strings to sorting, copying, JSON and pickle, and the functions to `in`."""
    import copy
    import json
    import logging
    import pickle

    from tilefuse.compiler.api import _once_logging_methods, _trace_through_once_logging

    _trace_through_once_logging()
    ignored, methods = _once_logging_methods()
    assert methods and all(m in ignored for m in methods)
    assert logging.Logger.warning_once in ignored  # Dynamo's test on a logger method's call
    # what torch 2.11's metrics logging does with its config copy: raised TypeError (sorting two
    # functions), then "Object of type _lru_cache_wrapper is not JSON serializable" with one
    json.dumps(sorted(copy.deepcopy(ignored)))
    assert all(type(name) is str for name in pickle.loads(pickle.dumps(ignored)))


@pytest.mark.parametrize("name, causal", [("bert", False), ("llama", True)])
def test_training_attention_takes_the_mask_transformers_built_while_tracing_as_none(
    name, causal, monkeypatch
):
    """transformers builds BERT's all-visible mask and a decoder's causal mask as tensors while
    Dynamo traces (eager passes none): in a training graph they go before AOTAutograd picks SDPA's
    kernel (compiler/causal_masks.py, `constant_attention_masks`), and the gradients are eager's."""
    from tilefuse.benchmarks.training import build, step
    from tilefuse.benchmarks.transformers_models import MODELS as SPECS
    from tilefuse.compiler.attention_dropout import SDPA, attention_for_tracing

    model, ids = build(SPECS[name], True, torch.device("cpu"), torch.float32)
    seen = []

    def capture(gm, example_inputs):
        seen.extend((n.kwargs.get("attn_mask"), n.kwargs.get("is_causal"))
                    for n in attention_for_tracing(gm, training=True).graph.nodes if n.target is SDPA)  # fmt: skip
        return gm.forward

    torch._dynamo.reset()
    torch.compile(model, backend=capture)(input_ids=ids, labels=ids)
    assert seen and set(seen) == {(None, causal)}

    monkeypatch.setenv("TILEFUSE_TRAINING", "compile")
    torch._dynamo.reset()
    want_loss, want = step(model, model, ids)
    got_loss, got = step(tilefuse.compile(model), model, ids)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_inference_attention_takes_the_all_visible_mask_built_while_tracing_as_none(monkeypatch):
    """ViT under `torch.no_grad()`: transformers builds an all-visible mask while Dynamo traces (eager
    passes none); it goes before AOTAutograd picks SDPA's kernel (on the H200 the mask sent ViT-base
    to the float32 math fallback: FFMA batched GEMMs where eager ran cuDNN's attention), and the
    output is eager's."""
    import transformers as T

    from tilefuse.compiler import backend
    from tilefuse.compiler.attention_dropout import SDPA

    cfg = T.ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      image_size=16, patch_size=8)  # fmt: skip
    torch.manual_seed(0)
    model = T.ViTModel(cfg).eval()
    pixels = torch.randn(2, 3, 16, 16)
    real, seen = backend.attention_for_tracing, []

    def spy(gm, training):
        traced = real(gm, training)
        before = [n.kwargs.get("attn_mask") for n in gm.graph.nodes if n.target is SDPA]
        after = [n.kwargs.get("attn_mask") for n in traced.graph.nodes if n.target is SDPA]
        seen.append((training, before, after))
        return traced

    monkeypatch.setattr(backend, "attention_for_tracing", spy)
    torch._dynamo.reset()
    with torch.no_grad():
        got = tilefuse.compile(model)(pixel_values=pixels).last_hidden_state
        want = model(pixel_values=pixels).last_hidden_state
    [(training, before, after)] = seen
    assert not training and before and all(m is not None for m in before) and after == [None] * len(before)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_generate_at_a_second_batch_size_keeps_the_batch_static():
    """`generate` at batch 3 after batch 1 (dynamic cache): tilefuse marks a transformers model's batch
    dim static, so Dynamo compiles the new batch's graphs with only the lengths symbolic, and the decode
    graph's static islands still compile (with the batch symbolic too, nothing was static: the decode ran in
    PyTorch, at eager's speed on the H200). Greedy tokens as eager's at both sizes."""
    import re

    from tilefuse.benchmarks.generation import build

    model = build(True, torch.device("cpu"), torch.float32)
    options = dict(do_sample=False, pad_token_id=0, disable_compile=True, max_new_tokens=4, min_new_tokens=4)

    def generate(batch: int) -> torch.Tensor:
        ids = torch.randint(1, 200, (batch, 10), generator=torch.Generator().manual_seed(batch))
        return model.generate(ids, attention_mask=torch.ones_like(ids), **options)

    expected = {batch: generate(batch) for batch in (1, 3)}
    model.forward = tilefuse.compile(model.forward)
    for batch in (1, 3):
        before = len(model.forward.tilefuse_reports)
        assert torch.equal(generate(batch), expected[batch])
    new = model.forward.tilefuse_reports[before:]
    assert any(r["partitions"] for r in new), new
    reasons = [f["reason"] for r in new for f in r["fallbacks"]]
    batch_symbolic = [r for r in reasons if re.search(r"dynamic shape \(s\d+[^,)]*, ", r)]  # 2-d or more
    assert not batch_symbolic, reasons


@pytest.mark.parametrize("cache", ["dynamic", "static"])
def test_generate_of_a_compiled_model_runs_its_compiled_forward(cache):
    """`tilefuse.compile(model).generate(...)`: `generate` calls the model itself, so the compiled
    module's `generate` (the model's, through torch.compile's wrapper) decoded in eager PyTorch,
    and with transformers' own static-cache compile turned off, a static cache too. It now runs with
    the forward compiled; the graphs join the compiled module's reports, and the model itself stays
    as it was (its `forward` restored, its own `generate` eager). Greedy tokens as eager's."""
    from tilefuse.benchmarks.generation import build

    model = build(True, torch.device("cpu"), torch.float32)
    ids = torch.randint(1, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    options = dict(do_sample=False, pad_token_id=0, max_new_tokens=4, min_new_tokens=4,
                   attention_mask=torch.ones_like(ids))  # fmt: skip
    if cache == "static":
        options["cache_implementation"] = "static"
    expected = model.generate(ids, **options, disable_compile=True)
    compiled = tilefuse.compile(model)
    assert torch.equal(compiled.generate(ids, **options), expected)
    reports = compiled.tilefuse_reports
    assert len(reports) >= 2 and all(r["partitions"] for r in reports), reports  # prefill and decode
    assert "forward" not in vars(model) and not hasattr(model, "tilefuse_reports")
    assert torch.equal(model.generate(ids, **options), expected)
    assert len(compiled.tilefuse_reports) == len(reports)  # the model's own generate compiled nothing


def test_two_compiles_of_one_model_keep_their_own_reports():
    """torch 2.13's compiled-module wrapper passes unknown attributes on to the model: the second
    compile's `tilefuse_reports` replaced the first's."""
    from tiny_models import MODELS

    model = MODELS["llama"]().eval()
    first, second = tilefuse.compile(model), tilefuse.compile(model, dynamic=False)
    with torch.no_grad():
        first(**_inputs("llama"))
    assert len(first.tilefuse_reports) == 1 and second.tilefuse_reports == []


def test_a_sliding_window_decode_runs_its_partitions_as_kernels():
    """Gemma2 with a sliding window shorter than the prompt plus the new tokens: past the window, a
    decode graph's mask partition takes the window's key length as an input, a SymInt of constant
    value (`Sym(15)`) beside static tensors; its program, static, takes the tensors only (it was
    handed the size too and failed at run time, "too many values to unpack", every decode step then
    running in PyTorch). Greedy tokens as eager's, and no partition fails."""
    import transformers

    config = transformers.Gemma2Config(
        vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        head_dim=8, intermediate_size=64, max_position_embeddings=128, sliding_window=16,
        attn_implementation="sdpa", pad_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    model = transformers.Gemma2ForCausalLM(config).eval()
    ids = torch.randint(3, 128, (1, 9), generator=torch.Generator().manual_seed(0))
    reports = _generate_as_eager(model, ids, dict(max_new_tokens=8, do_sample=False, pad_token_id=0))
    assert any(p["groups"] for r in reports for p in r["partitions"])


def _generate_as_eager(model, ids: torch.Tensor, options: dict) -> list[dict]:
    """`model.generate(ids, **options)` with its forward compiled gives eager's tokens, and no partition
    fails at run time; the compiled forward's reports."""
    with torch.no_grad():
        expected = model.generate(ids, **options)
        model.forward = tilefuse.compile(model.forward)
        got = model.generate(ids, **options)
    assert torch.equal(got, expected)
    reports = model.forward.tilefuse_reports
    failed = [p.get("runtime_error") for r in reports for p in r["partitions"] if p.get("runtime_error")]
    assert not failed, failed
    return reports


@pytest.mark.parametrize("name", ["gpt_neo", "bigbird", "electra", "reformer", "bart"])
def test_kernelbench_level4_families_match_eager(name):
    """KernelBench level 4's families, as its files call them (`model(x).logits`), from the
    benchmark's tiny configs: GPT-Neo's alternating local attention, BigBird and Reformer (attention
    as matmuls and a softmax: no SDPA path in transformers 5), ELECTRA's projected embeddings, BART's
    decoder as a causal LM. They match eager as generated kernels; Reformer breaks its graph (its
    hash seed, `.item()` on positions) and keeps its LSH bucketing's random rotations and sorts in
    PyTorch, but no graph falls back whole."""
    from tilefuse.benchmarks.transformers_models import MODELS as SPECS
    from tilefuse.benchmarks.transformers_models import build_model

    model, inputs = build_model(SPECS[name], True, torch.device("cpu"), torch.float32)
    ids = inputs["input_ids"]
    with torch.no_grad():
        expected = model(ids).logits
        compiled = tilefuse.compile(model)
        actual = compiled(ids).logits
        again = compiled(ids).logits
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(again, expected, rtol=1e-4, atol=1e-5)
    reports = compiled.tilefuse_reports
    assert not [f for r in reports for f in r["fallbacks"] if f["node"] == "<graph>"]
    assert not [p["runtime_error"] for r in reports for p in r["partitions"] if p.get("runtime_error")]
    kernels = [g for r in reports for p in r["partitions"] for g in p["groups"] if g["kernel"] is not None]
    assert len(kernels) >= 10
    if name != "reformer":
        (report,) = reports  # one graph, one partition, nothing in PyTorch
        assert len(report["partitions"]) == 1 and report["fallbacks"] == []


def test_beam_search_generate_of_a_compiled_forward_gives_eagers_tokens():
    """`generate` with two beams (the cache reordered between steps, the batch doubled) on a compiled
    forward: the same tokens as eager's, and no partition fails at run time."""
    torch.manual_seed(0)
    model = MODELS["llama"]().eval()
    ids = torch.randint(1, 128, (1, 7), generator=torch.Generator().manual_seed(1))
    _generate_as_eager(model, ids, dict(max_new_tokens=3, num_beams=2, do_sample=False, pad_token_id=0))


def test_eager_attention_returns_its_probabilities_and_hidden_states_under_inference_mode():
    """`output_attentions` and `output_hidden_states` with the eager attention and a padding mask,
    under `torch.inference_mode()`: every returned tensor is eager's (the softmax's probabilities are
    an output of the graph as well as read by the product after it)."""
    torch.manual_seed(0)
    model = MODELS["llama"]().eval()
    model.config._attn_implementation = "eager"
    inputs = _inputs("llama")
    mask = torch.ones_like(inputs["input_ids"])
    mask[1, :5] = 0
    kwargs = dict(attention_mask=mask, output_attentions=True, output_hidden_states=True)
    with torch.inference_mode():
        expected = model(inputs["input_ids"], **kwargs)
        compiled = tilefuse.compile(model)
        got = compiled(inputs["input_ids"], **kwargs)
    torch.testing.assert_close(got.logits, expected.logits, rtol=1e-4, atol=1e-5)
    for name in ("attentions", "hidden_states"):
        for a, e in zip(getattr(got, name), getattr(expected, name), strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-5)
    assert not [f for r in compiled.tilefuse_reports for f in r["fallbacks"] if f["node"] == "<graph>"]
