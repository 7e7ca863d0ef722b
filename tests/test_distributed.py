"""Multi-process training (2 CPU processes over gloo, `accelerate launch`) trains what the config
says: the same learning rate at every step and the same loss as one process with the same global
batch, and a resume under a different world size is reported."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neftune.config import load_config
from neftune.train import train

DATA = str(Path(__file__).parent / "assets" / "tiny_alpaca.jsonl")
COMMON = [
    f"data.path={DATA}",
    "data.eval_size=4",
    "data.max_length=256",
    "max_steps=4",
    "per_device_train_batch_size=2",
    "learning_rate=1e-3",
    "lr_scheduler_type=cosine",
    "warmup_ratio=0.25",
    "logging_steps=1",
    "clean_loss_steps=0",
    "report_to=[jsonl]",
    "neftune_noise_alpha=0",
    "seed=1",
]  # no noise: each rank draws its own stream


def launch(nproc, *args, extra_launch=("--multi_gpu",), port="29531"):
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_processes",
        str(nproc),
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *extra_launch,
        "-m",
        "neftune.cli",
        "train",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": port}
    r = subprocess.run(cmd, env=env, check=False, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


def metrics(run):
    return [json.loads(line) for line in Path(run, "metrics.jsonl").read_text().splitlines()]


def steps(run):
    return [r for r in metrics(run) if "loss" in r]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory, tiny_llama_dir):
    out = tmp_path_factory.mktemp("ddp") / "run"
    launch(2, f"model={tiny_llama_dir}", f"output_dir={out}", "save_steps=2", *COMMON)
    return out


def test_two_processes_equal_one_process_with_accumulation(tmp_path, ddp_run, tiny_llama_dir):
    # rank r of step s takes global batch 2(s-1)+r; one process with 2 accumulation takes both
    train(
        load_config(
            None,
            [
                f"model={tiny_llama_dir}",
                f"output_dir={tmp_path / 'one'}",
                "gradient_accumulation_steps=2",
                "save_steps=0",
                *COMMON,
            ],
        )
    )
    one, two = steps(tmp_path / "one"), steps(ddp_run)
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    assert [r["learning_rate"] for r in one] == pytest.approx([r["learning_rate"] for r in two], rel=1e-9, abs=0)
    assert one[1]["learning_rate"] == pytest.approx(1e-3)  # warmup 1 step, then cosine from the peak
    assert [r["loss"] for r in one] == pytest.approx([r["loss"] for r in two], rel=1e-5)
    assert [r["grad_norm"] for r in one] == pytest.approx([r["grad_norm"] for r in two], rel=1e-4)
    s1, s2 = (json.loads(Path(d, "summary.json").read_text()) for d in (tmp_path / "one", ddp_run))
    assert s1["supervised_tokens"] == s2["supervised_tokens"] and s1["train_tokens"] == s2["train_tokens"]
    assert s1["heldout_loss"] == pytest.approx(s2["heldout_loss"], rel=1e-5)


def test_resume_with_another_world_size_is_reported(tmp_path, ddp_run, tiny_llama_dir, capsys):
    ckpt = ddp_run / "checkpoint-2"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["world_size"] == 2 and state["supervised_tokens"] > 0
    summary = train(
        load_config(
            None,
            [
                f"model={tiny_llama_dir}",
                f"output_dir={tmp_path / 'r'}",
                "gradient_accumulation_steps=2",
                f"resume_from_checkpoint={ckpt}",
                "save_steps=0",
                *COMMON,
            ],
        )
    )
    assert "world size changed on resume" in capsys.readouterr().out
    assert summary["resumed_world_size"] == 2 and summary["world_size"] == 1
    done = json.loads((ddp_run / "summary.json").read_text())
    assert summary["supervised_tokens"] == done["supervised_tokens"]  # counts continue from the checkpoint


FSDP2 = [
    "--use_fsdp",
    "--fsdp_version",
    "2",
    "--fsdp_auto_wrap_policy",
    "TRANSFORMER_BASED_WRAP",
    "--fsdp_transformer_layer_cls_to_wrap",
    "LlamaDecoderLayer",
    "--fsdp_state_dict_type",
    "FULL_STATE_DICT",
    "--fsdp_reshard_after_forward",
    "true",
]


# accelerate enables FSDP only for GPU-like device types: with Accelerator(cpu=True) under
# `accelerate launch --use_fsdp` it silently runs MULTI_CPU (DDP) instead (accelerate 1.15,
# AcceleratorState.__init__), although torch's fully_shard itself runs on CPU/gloo.
@pytest.mark.skipif(
    torch.cuda.device_count() < 2, reason="accelerate runs FSDP on GPUs only (on CPU it falls back to DDP)"
)
def test_fsdp_two_processes_train_log_clean_loss_and_save_a_reloadable_model(tmp_path, tiny_llama_dir):
    """FSDP2 (fully_shard) on 2 CPU processes: the embedding, final norm and head live in the root's
    shard, so clean_loss, held-out loss and the saved state dict must go through the wrapped model."""
    from transformers import AutoModelForCausalLM

    out = tmp_path / "fsdp"
    launch(
        2,
        f"model={tiny_llama_dir}",
        f"output_dir={out}",
        "save_steps=0",
        *COMMON[:-1],
        "neftune_noise_alpha=5",
        "clean_loss_steps=1",
        "max_steps=2",
        extra_launch=FSDP2,
        port="29533",
    )
    recs = metrics(out)
    assert all("clean_loss" in r for r in recs if "loss" in r) and len([r for r in recs if "loss" in r]) == 2
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["distributed_type"] == "FSDP" and summary["heldout_loss"] > 0
    m = AutoModelForCausalLM.from_pretrained(out)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    moved = [k for k, v in m.state_dict().items() if not torch.equal(v, base.state_dict()[k])]
    assert "model.embed_tokens.weight" in moved and "lm_head.weight" in moved


def test_two_process_ddp_run_end_to_end(tmp_path, tiny_llama_dir):
    """`accelerate launch` with 2 CPU processes (gloo) runs the CLI end to end, with noise, checkpoints and
    a saved model; each rank draws its own noise stream."""
    out = tmp_path / "ddp"
    launch(
        2,
        f"model={tiny_llama_dir}",
        f"output_dir={out}",
        f"data.path={DATA}",
        "data.eval_size=4",
        "data.max_length=256",
        "max_steps=3",
        "per_device_train_batch_size=2",
        "save_steps=2",
        "report_to=[jsonl]",
        "neftune_noise_alpha=5",
        port="29517",
    )
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 3
    s0, s1 = (torch.load(out / "checkpoint-2" / f"rng_state_{r}.pth", weights_only=False)["noise"] for r in (0, 1))
    assert not torch.equal(s0, s1)
    assert (out / "model.safetensors").exists()
