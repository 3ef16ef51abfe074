"""Tiny `transformers` models from configs (random init) and their inputs, for the CPU tests: one
architecture per family (see tests/compiler/test_transformers_models.py)."""

from __future__ import annotations

import torch
import transformers

VOCAB, HIDDEN, LAYERS, HEADS, BATCH, SEQ = 128, 64, 2, 4, 2, 16
COMMON = dict(
    vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
    max_position_embeddings=64,
)  # fmt: skip
# a decoder's options for the architecture sweeps (test_more_architectures.py, test_model_families.py)
DECODER = dict(COMMON, intermediate_size=128, vocab_size=256)


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
