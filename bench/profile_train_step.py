"""Where one training step of ours spends its time: torch.profiler around the third optimizer step's
forward + backward (run by hand, not in CI).

    python bench/profile_train_step.py [--model gemma-3-270m] [--batch-size 2] [--rows 22]

Same setup as `bench_train.py --only ours` (the demo's data and LoRA); prints the profiler's table of ops by
self CPU time. The first two steps are warm-up (allocator, oneDNN primitive caches, the packed head).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import bench_train as BT  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

import neftune.train as T  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--config", default="configs/default.yaml")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--alpha", type=float, default=5.0)
    ap.add_argument("--rows", type=int, default=22, help="rows of the profiler table")
    ap.add_argument("--by-shape", action="store_true", help="also group ops by input shapes")
    args = ap.parse_args()
    os.chdir(ROOT)
    from neftune.config import load_config

    sharegpt_size = load_config(str(ROOT / args.config)).data.sharegpt_size
    orig, calls = T._forward_backward, {"n": 0}

    def forward_backward(run, micro, n_step):
        calls["n"] += 1
        if calls["n"] != 3:
            return orig(run, micro, n_step)
        with profile(activities=[ProfilerActivity.CPU], record_shapes=args.by_shape) as prof:
            out = orig(run, micro, n_step)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows), flush=True)
        if args.by_shape:
            by_shape = prof.key_averages(group_by_input_shape=True)
            print(by_shape.table(sort_by="self_cpu_time_total", row_limit=args.rows), flush=True)
        return out

    T._forward_backward = forward_backward
    bench_args = argparse.Namespace(
        model=args.model,
        config=args.config,
        batch_size=args.batch_size,
        alpha=args.alpha,
        warmup=1,
        steps_ours=3,
        steps_hf=1,
        steps_trl=1,
        sharegpt_size=sharegpt_size,
        tiny_tokenizer="gemma",
        matmul_n=2048,
        only="ours",
        verbose=False,
    )
    with tempfile.TemporaryDirectory(prefix="profile_train_") as tmp:
        BT.run_ours(bench_args, Path(tmp), args.alpha)


if __name__ == "__main__":
    main()
