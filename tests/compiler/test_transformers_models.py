"""`transformers` models (random init from tiny configs, fp32, CPU) compiled whole: the generated
kernels, run in Triton's interpreter, match eager, in one partition with nothing left to PyTorch.

One architecture per family: Llama (grouped-query attention, RoPE), Qwen2 (q/k/v biases), GPT-2
(LayerNorm, Conv1D, tied embeddings, learned positions), BERT (encoder, padding mask, token
types) and Phi (partial rotary, parallel attention and MLP, gelu).
"""

from __future__ import annotations

import pytest
import torch
import transformers

import tilefuse

VOCAB, HIDDEN, LAYERS, HEADS, BATCH, SEQ = 128, 64, 2, 4, 2, 16
COMMON = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
    max_position_embeddings=64,
)  # fmt: skip


def _llama():
    config = transformers.LlamaConfig(intermediate_size=128, num_key_value_heads=2, **COMMON)
    return transformers.LlamaForCausalLM(config)


def _qwen2():
    config = transformers.Qwen2Config(intermediate_size=128, num_key_value_heads=2, **COMMON)
    return transformers.Qwen2ForCausalLM(config)


def _gpt2():
    config = transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS, n_positions=64,
        bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    return transformers.GPT2LMHeadModel(config)


def _bert():
    return transformers.BertModel(transformers.BertConfig(intermediate_size=128, **COMMON))


def _phi():
    return transformers.PhiForCausalLM(transformers.PhiConfig(intermediate_size=128, **COMMON))


MODELS = {"llama": _llama, "qwen2": _qwen2, "gpt2": _gpt2, "bert": _bert, "phi": _phi}


def _inputs(name: str) -> dict[str, torch.Tensor]:
    inputs = {"input_ids": torch.randint(0, VOCAB, (BATCH, SEQ))}
    if name == "bert":  # the second sequence is padded: its last five keys are masked off
        mask = torch.ones(BATCH, SEQ, dtype=torch.long)
        mask[1, SEQ - 5 :] = 0
        inputs["attention_mask"] = mask
    return inputs


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
    assert len(kernels) >= 20
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
