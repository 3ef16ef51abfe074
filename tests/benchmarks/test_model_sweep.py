"""The sweep over transformers' causal-LM families on the CPU: small configs build for families of
different kinds (GQA decoder, hybrid linear attention, latent attention, mixture of experts), a few
run end to end through tilefuse (kernels in Triton's interpreter) against eager in float32 and
bfloat16, and a failure of tilefuse, of the config or of a child process is a row, never the end
of the sweep."""

from __future__ import annotations

import pytest
import torch
import transformers

import tilefuse
from tilefuse.benchmarks import model_sweep
from tilefuse.benchmarks.model_sweep import (
    SweepRow,
    family_names,
    main,
    run_family,
    seq2seq_names,
    small_config,
)

CPU = torch.device("cpu")


def test_the_families_are_transformers_causal_lms_and_encoder_decoders():
    names = family_names()
    assert {"LlamaForCausalLM", "Qwen2ForCausalLM", "GPT2LMHeadModel", "MixtralForCausalLM"} <= set(names)
    assert names == sorted(names) and not any(n.startswith("Auto") for n in names)
    seq2seq = set(seq2seq_names())
    assert {"T5ForConditionalGeneration", "BartForConditionalGeneration", "MarianMTModel"} <= seq2seq
    assert seq2seq <= set(names)
    assert not seq2seq & {"WhisperForConditionalGeneration", "LlavaForConditionalGeneration"}  # audio, images


@pytest.mark.parametrize(
    ("name", "what"),
    [
        ("T5ForConditionalGeneration", "forward"),
        ("T5ForConditionalGeneration", "training"),
        ("T5ForConditionalGeneration", "generate"),
        ("M2M100ForConditionalGeneration", "training"),
    ],
)
def test_encoder_decoders_match_eager_in_float32(name, what):
    """The decoder reads the encoder's ids; M2M100's LayerDrop (layers skipped at random in training) is
    off, as its dropout is."""
    row = run_family(name, what, torch.float32, CPU, 32, 7)
    assert row.status == "ok", row
    if what != "generate":
        assert row.error < 1e-4
    assert row.graphs >= 1 and row.kernels > 0


@pytest.mark.parametrize(
    "name",
    [
        "LlamaForCausalLM",
        "Qwen3_5ForCausalLM",
        "DeepseekV3ForCausalLM",
        "JambaForCausalLM",
        "GPT2LMHeadModel",
    ],
)
def test_small_configs_build_small_models_that_run_eagerly(name):
    config = small_config(name, 64)
    torch.manual_seed(0)
    model = getattr(transformers, name)(config).eval()
    assert sum(p.numel() for p in model.parameters()) < 2_000_000
    for key in ("attention_dropout", "hidden_dropout", "resid_pdrop"):
        assert getattr(config, key, 0.0) in (0.0, None)
    ids = torch.randint(3, 256, (2, 9))
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    assert logits.shape[:2] == (2, 9) and torch.isfinite(logits).all()


def test_small_configs_turn_off_every_dropout_spelling():
    """SeedOss spells its dropout `residual_dropout`: left on, a training row compared two different
    random masks and read as wrong."""
    config = small_config("SeedOssForCausalLM", 64)
    rates = {k: v for k, v in config.to_dict().items() if "dropout" in k and isinstance(v, float)}
    assert rates and set(rates.values()) == {0.0}, rates


def test_hybrid_configs_keep_one_full_attention_layer():
    kinds = small_config("Qwen3_5ForCausalLM", 64).layer_types
    assert kinds[0] == "linear_attention" and kinds[1] != "linear_attention"


@pytest.mark.parametrize("what", ["forward", "training", "generate"])
def test_a_llama_matches_eager_in_float32(what):
    row = run_family("LlamaForCausalLM", what, torch.float32, CPU, 32, 7)
    assert row.status == "ok", row
    if what != "generate":
        assert row.error < 1e-4
    assert row.graphs >= 1 and row.kernels > 0


def test_bfloat16_is_judged_against_float64_beside_eager():
    row = run_family("Qwen2ForCausalLM", "forward", torch.bfloat16, CPU, 32, 7)
    assert row.status == "ok", row
    assert (
        0 < row.eager_error < 0.05
        and row.error <= 10 * row.eager_error + model_sweep.TOLERANCE[torch.bfloat16]
    )


def test_a_tilefuse_failure_is_a_crash_row(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("injected")

    monkeypatch.setattr(tilefuse, "compile", broken)
    row = run_family("LlamaForCausalLM", "forward", torch.float32, CPU, 32, 7)
    assert row.status == "crash" and "injected" in row.note


def _logits_plus_one(compile_fn):
    """`compile_fn` whose compiled model's logits come out 1.0 too large."""

    def compile_(model, **kwargs):
        compiled = compile_fn(model, **kwargs)

        def call(**inputs):
            out = compiled(**inputs)
            out.logits = out.logits + 1.0
            return out

        return call

    return compile_


def test_wrong_results_are_wrong_rows(monkeypatch):
    monkeypatch.setattr(tilefuse, "compile", _logits_plus_one(tilefuse.compile))
    row = run_family("LlamaForCausalLM", "forward", torch.float32, CPU, 32, 7)
    assert row.status == "wrong" and row.error > 1e-3


def test_what_dynamo_captures_differently_from_eager_is_a_dynamo_row(monkeypatch):
    """UMT5 under Dynamo differs from eager (torch.compile's eager backend by as much): tilefuse, which
    matches that, is not wrong."""
    monkeypatch.setattr(tilefuse, "compile", _logits_plus_one(tilefuse.compile))
    monkeypatch.setattr(model_sweep, "dynamo_eager", _logits_plus_one(lambda model: model))
    row = run_family("LlamaForCausalLM", "forward", torch.float32, CPU, 32, 7)
    assert row.status == "dynamo" and "tilefuse matches it" in row.note, row


def test_a_config_that_does_not_build_is_not_a_tilefuse_result(monkeypatch):
    def unsuitable(name, hidden):
        raise ValueError("no such layout")

    monkeypatch.setattr(model_sweep, "small_config", unsuitable)
    row = run_family("LlamaForCausalLM", "forward", torch.float32, CPU, 32, 7)
    assert row.status == "config" and "no such layout" in row.note


def test_isolated_rows_come_back_from_the_child(monkeypatch):
    class Done:
        returncode, stderr = 0, ""
        stdout = 'noise\n{"family": "LlamaForCausalLM", "what": "forward", "status": "ok", "error": 1e-7}\n'

    monkeypatch.setattr(model_sweep.subprocess, "run", lambda *a, **k: Done())
    args = model_sweep.parse_args(["--families", "LlamaForCausalLM", "--device", "cpu"])
    assert model_sweep.run_isolated("LlamaForCausalLM", "forward", args) == SweepRow(
        "LlamaForCausalLM", "forward", "ok", 1e-7
    )

    class Died:
        returncode, stdout, stderr = -9, "", "Killed\n"

    monkeypatch.setattr(model_sweep.subprocess, "run", lambda *a, **k: Died())
    row = model_sweep.run_isolated("LlamaForCausalLM", "forward", args)
    assert row.status == "crash" and "code -9" in row.note and "Killed" in row.note


def test_the_table_counts_each_kind_and_unknown_names_are_refused(tmp_path, capsys):
    out = tmp_path / "sweep.md"
    main(
        [
            "--families",
            "LlamaForCausalLM",
            "--device",
            "cpu",
            "--hidden",
            "32",
            "--tokens",
            "5",
            "--out",
            str(out),
        ]
    )
    text = out.read_text()
    assert "- forward: 1 ok" in text and "| LlamaForCausalLM | forward | ok |" in text
    with pytest.raises(SystemExit):
        main(["--families", "NotAModelForCausalLM"])
    assert "not a causal-LM or encoder-decoder class" in capsys.readouterr().err


def test_a_model_without_float64_kernels_is_judged_against_float32(monkeypatch):
    real = model_sweep._result

    def no_float64(model, ids, what):
        if next(model.parameters()).dtype == torch.float64:
            raise RuntimeError("Expected mat_a to be Float32, BFloat16 or Float16 matrix, got Double")
        return real(model, ids, what)

    monkeypatch.setattr(model_sweep, "_result", no_float64)
    row = run_family("Qwen2ForCausalLM", "forward", torch.bfloat16, CPU, 32, 7)
    assert row.status == "ok" and row.note.startswith("against float32 (float64: RuntimeError")
    assert 0 < row.eager_error < 0.05
