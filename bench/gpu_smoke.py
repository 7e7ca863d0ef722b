"""GPU smoke test of the training paths a CPU box cannot run (run by hand on any CUDA machine):

  1. one GPU: the embedded default (configs/default.yaml, shortened) in bf16 mixed precision
  2. 2-process DDP, where two GPUs exist
  3. FSDP2 (fully_shard via accelerate), full finetuning, on the GPUs there are (1 or 2)

Prints per run: the loss curve, the LR trace, supervised tokens/s and peak GPU memory.
    python bench/gpu_smoke.py [--steps 20] [--out /tmp/neftune-gpu-smoke] [--layer-cls Gemma3DecoderLayer]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(name, launch, overrides, out, env):
    cmd = [
        sys.executable,
        *launch,
        "-m",
        "neftune.cli",
        "train",
        str(ROOT / "configs" / "default.yaml"),
        f"output_dir={out / name}",
        *overrides,
    ]
    print(f"\n=== {name}: {' '.join(cmd)}", flush=True)
    r = subprocess.run(cmd, env=env, check=False)
    if r.returncode != 0:
        print(f"=== {name}: FAILED (exit {r.returncode})")
        return False
    recs = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    summary = json.loads((out / name / "summary.json").read_text())
    print(f"=== {name}: {summary['distributed_type']} x{summary['world_size']}, precision {summary['mixed_precision']}")
    print("loss      ", " ".join(f"{r['loss']:.3f}" for r in steps))
    print("clean_loss", " ".join(f"{r['clean_loss']:.3f}" for r in steps if "clean_loss" in r))
    print("lr        ", " ".join(f"{r['learning_rate']:.2e}" for r in steps))
    tps = [r["supervised_tokens_per_s"] for r in steps[1:] if "supervised_tokens_per_s" in r]  # step 1 warms up
    print(
        f"supervised tokens/s {sum(tps) / max(len(tps), 1):.0f}, held-out loss {summary['heldout_loss']:.4f}, "
        f"peak memory {summary.get('peak_memory_gb')} GiB (rank 0), wall {summary['wall_time_s']} s"
    )
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("/tmp/neftune-gpu-smoke"))
    ap.add_argument("--layer-cls", default="Gemma3DecoderLayer", help="decoder layer class FSDP shards")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "gpu_smoke.py needs a CUDA GPU (torch.cuda.is_available() is False); the CPU paths are "
            "covered by tests/test_distributed.py"
        )
    n = min(torch.cuda.device_count(), 2)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    common = [
        "overwrite_output_dir=true",  # a second run into the same --out retrains instead of being refused
        f"max_steps={a.steps}",
        "dtype=bfloat16",
        "save_steps=0",
        "logging_steps=1",
        "clean_loss_steps=5",
        "report_to=[jsonl]",
        "warmup_ratio=0.2",
    ]
    acc = [
        "-m",
        "accelerate.commands.launch",
        "--num_machines",
        "1",
        "--dynamo_backend",
        "no",
        "--mixed_precision",
        "no",
    ]
    ok = {"bf16-1gpu": run("bf16-1gpu", [], common, a.out, env)}
    if n >= 2:
        ok["ddp-2gpu"] = run("ddp-2gpu", [*acc, "--multi_gpu", "--num_processes", "2"], common, a.out, env)
    else:
        print("\n=== ddp-2gpu: skipped (one GPU)")
    fsdp = [
        *acc,
        "--num_processes",
        str(n),
        "--use_fsdp",
        "--fsdp_version",
        "2",
        "--fsdp_auto_wrap_policy",
        "TRANSFORMER_BASED_WRAP",
        "--fsdp_transformer_layer_cls_to_wrap",
        a.layer_cls,
        "--fsdp_state_dict_type",
        "FULL_STATE_DICT",
        "--fsdp_reshard_after_forward",
        "true",
    ]
    ok[f"fsdp-{n}gpu"] = run(f"fsdp-{n}gpu", fsdp, [*common, "lora.r=0"], a.out, env)
    print("\n" + "  ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in ok.items()))
    sys.exit(0 if all(ok.values()) else 1)


if __name__ == "__main__":
    main()
