"""Training pipeline on tiny models: parameters change, outputs reload and generate, loss matches
the straightforward path, SIGKILL + resume is bit-exact, NaN stops with a message (CLI tests: tests/test_cli.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from neftune.config import load_config
from neftune.errors import TrainingDiverged
from neftune.train import list_checkpoints, train

DATA = str(Path(__file__).parent / "assets" / "tiny_alpaca.jsonl")


def cfg_for(model_dir, out, *extra):
    return load_config(
        None,
        [
            f"model={model_dir}",
            f"output_dir={out}",
            f"data.path={DATA}",
            "data.eval_size=4",
            "data.max_length=256",
            "max_steps=6",
            "per_device_train_batch_size=4",
            "learning_rate=1e-3",
            "save_steps=2",
            "logging_steps=1",
            "clean_loss_steps=2",
            "report_to=[jsonl]",
            "neftune_noise_alpha=5",
            *extra,
        ],
    )


def losses(run):
    return [
        (r["step"], r["loss"], r.get("clean_loss"))
        for r in map(json.loads, Path(run, "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]


def test_full_finetune_changes_params_reloads_and_generates(tmp_path, tiny_llama_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    summary = train(cfg_for(tiny_llama_dir, tmp_path / "run"))
    before, after = (
        load_file(Path(tiny_llama_dir) / "model.safetensors"),
        load_file(tmp_path / "run" / "model.safetensors"),
    )
    changed = [k for k in before if k in after and not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2
    assert summary["steps"] == 6 and summary["heldout_loss"] > 0
    assert (tmp_path / "run" / "config.yaml").exists() and (tmp_path / "run" / "data" / "heldout.jsonl").exists()
    m = AutoModelForCausalLM.from_pretrained(tmp_path / "run")
    tok = AutoTokenizer.from_pretrained(tmp_path / "run")
    out = m.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False)
    assert out.shape[1] > 1
    recs = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(abs(r["noise_energy_ratio_mean"] - 1) < 0.5 for r in recs if "noise_energy_ratio_mean" in r)
    assert any("clean_loss" in r for r in recs) and recs[-1].get("heldout_loss") is not None


def test_lora_gemma_adapter_reloads(tmp_path, tiny_gemma_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    train(cfg_for(tiny_gemma_dir, tmp_path / "run", "lora.r=4", "data.packing=true", "max_steps=3"))
    assert (tmp_path / "run" / "adapter_config.json").exists()
    adapter = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert any(("lora_B" in k) and v.abs().sum() > 0 for k, v in adapter.items())  # B starts at 0
    m = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gemma_dir), tmp_path / "run")
    assert m.generate(input_ids=torch.tensor([[1, 5, 6]]), max_new_tokens=2).shape[1] == 5


def _cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run(
        [sys.executable, "-m", "neftune.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_sigkill_and_resume_is_bit_exact(tmp_path, tiny_llama_dir):
    base = [
        f"model={tiny_llama_dir}",
        f"data.path={DATA}",
        "data.eval_size=4",
        "data.max_length=256",
        "max_steps=6",
        "per_device_train_batch_size=4",
        "learning_rate=1e-3",
        "save_steps=2",
        "clean_loss_steps=2",
        "report_to=[jsonl]",
        "neftune_noise_alpha=5",
        "seed=3",
    ]
    ref = _cli(["train", f"output_dir={tmp_path / 'ref'}", *base])
    assert ref.returncode == 0, ref.stderr[-2000:]
    # killed (-9) after step 5: checkpoints 2 and 4 exist
    k = _cli(["train", f"output_dir={tmp_path / 'b'}", *base], {"NEFTUNE_FAILPOINT": "after_step:5"})
    assert k.returncode == -9
    assert [p.name for p in list_checkpoints(tmp_path / "b")] == ["checkpoint-2", "checkpoint-4"]
    first_leg = json.loads((tmp_path / "b" / "checkpoint-4" / "trainer_state.json").read_text())
    r = _cli(["train", f"output_dir={tmp_path / 'b'}", "resume_from_checkpoint=latest", *base])
    assert r.returncode == 0, r.stderr[-2000:]
    assert losses(tmp_path / "b") == losses(tmp_path / "ref")  # bit for bit, noise included
    # token counts continue from the checkpoint; wall time is the sum of the segments
    s_ref, s_b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "b"))
    assert (s_b["train_tokens"], s_b["supervised_tokens"]) == (s_ref["train_tokens"], s_ref["supervised_tokens"])
    assert 0 < first_leg["wall_time_s"] < s_b["wall_time_s"] and "resumed_world_size" not in s_b
    # killed during the save of checkpoint-4: the half-written one is never loaded
    k = _cli(["train", f"output_dir={tmp_path / 'c'}", *base], {"NEFTUNE_FAILPOINT": "during_save:4"})
    assert k.returncode == -9 and (tmp_path / "c" / ".tmp-checkpoint-4").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "c")] == ["checkpoint-2"]
    r = _cli(["train", f"output_dir={tmp_path / 'c'}", "resume_from_checkpoint=latest", *base])
    assert r.returncode == 0 and "removing incomplete checkpoint" in r.stdout + r.stderr
    assert losses(tmp_path / "c") == losses(tmp_path / "ref")


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, tiny_llama_dir):
    cfg = cfg_for(tiny_llama_dir, tmp_path / "run", "learning_rate=1e30", "max_grad_norm=0", "save_steps=1")
    with pytest.raises(TrainingDiverged, match=r"step \d+: non-finite") as e:
        train(cfg)
    assert list_checkpoints(tmp_path / "run")
    assert "Last good checkpoint" in str(e.value)


def _delta(model_dir, run):
    before, after = load_file(Path(model_dir) / "model.safetensors"), load_file(Path(run) / "model.safetensors")
    return torch.cat([(after[k].float() - before[k].float()).flatten() for k in sorted(before)])


def test_bf16_mixed_precision_moves_params_like_fp32(tmp_path, tiny_llama_dir):
    """dtype=bfloat16 is autocast over float32 master weights: at lr 5e-5 the update is as in float32
    (AdamW steps of ~5e-5 vanish in bf16 weights of |w| >= 0.016). Tolerance: relative L2 error of the
    parameter change 10%, and its norm within 5%."""
    from neftune.modeling import load_trained

    args = [
        "learning_rate=5e-5",
        "max_steps=3",
        "save_steps=0",
        "clean_loss_steps=0",
        "neftune_noise_alpha=0",
        "lr_scheduler_type=constant",
        "warmup_ratio=0",
    ]
    s32 = train(cfg_for(tiny_llama_dir, tmp_path / "fp32", *args))
    s16 = train(cfg_for(tiny_llama_dir, tmp_path / "bf16", "dtype=bfloat16", *args))
    assert s16["mixed_precision"] == "bf16" and s32["mixed_precision"] == "no"
    d32, d16 = _delta(tiny_llama_dir, tmp_path / "fp32"), _delta(tiny_llama_dir, tmp_path / "bf16")
    assert float((d16 - d32).norm() / d32.norm()) < 0.10
    assert float(d16.norm() / d32.norm()) == pytest.approx(1, abs=0.05)
    model, tok, _ = load_trained(tmp_path / "bf16")  # evaluation loads the run in its compute dtype
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False).shape[1] > 1


def test_half_precision_trainable_weights_are_refused():
    from neftune.errors import NeftuneError
    from neftune.train import check_master_weights

    with pytest.raises(NeftuneError, match="ulp"):
        check_master_weights([torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    check_master_weights([torch.nn.Parameter(torch.zeros(3))])


def test_baseline_logs_clean_loss_in_eval_mode_and_records_the_examples_it_trained_on(tmp_path, tiny_llama_dir):
    """clean_loss is logged for alpha=0 too (the paired baseline), with dropout off (eval mode); and
    data/trained.jsonl holds exactly the examples of the batches the run optimised on."""
    from neftune.data import build_datasets, make_batches
    from neftune.data.coverage import trained_records
    from neftune.modeling import load_model, load_tokenizer, supervised_loss

    cfg = cfg_for(
        tiny_llama_dir,
        tmp_path / "run",
        "neftune_noise_alpha=0",
        "model_dropout=0.5",
        "max_steps=1",
        "clean_loss_steps=1",
        "logging_steps=5",
        "save_steps=0",
    )
    train(cfg)
    clean = [
        r["clean_loss"]
        for r in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines())
        if "clean_loss" in r
    ]
    tok = load_tokenizer(tiny_llama_dir)
    data = build_datasets(cfg, tok)
    batches, idx = make_batches(
        data.train_examples,
        4,
        packing=False,
        max_length=256,
        pad_token_id=tok.pad_token_id,
        seed=cfg.seed,
        epoch=0,
        return_indices=True,
    )
    model = load_model(tiny_llama_dir, attention_dropout=0.5).eval()  # step 1's clean loss: the initial weights
    with torch.no_grad():
        expected = float(supervised_loss(model, batches[0])[0])
    assert len(clean) == 1 and abs(clean[0] - expected) < 1e-5
    trained = [json.loads(l) for l in (tmp_path / "run" / "data" / "trained.jsonl").read_text().splitlines()]
    train_recs = [json.loads(l) for l in (tmp_path / "run" / "data" / "train.jsonl").read_text().splitlines()]
    assert [r["source"] for r in trained] == [train_recs[i]["source"] for i in sorted(idx[0])]
    assert all(r["id"] for r in trained) and len(trained) == 4
    # a run that reached a second epoch trained on everything
    assert len(trained_records(train_recs, n_micro=len(batches), per_epoch=len(batches), indices=None)) == len(
        train_recs
    )
