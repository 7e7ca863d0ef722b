"""Generation and training levers measured for issue 14 and dropped, each as a probe (run by hand, not in CI).

  python bench/probe_levers.py [--model gemma-3-270m] [--n 16] [--max-new-tokens 48] [--answers GLOB ...]

kernels    the tied 262144 x 640 head on this box at 1 and 16 rows: fp32 F.linear (MKL), oneDNN on a
           packed weight (what generation runs on), int8 weight-only (torch._weight_int8pack_mm), fbgemm
           dynamic int8 (quantized::linear_dynamic); and the training head's input gradient (128 x 262144
           by 262144 x 640) on MKL vs oneDNN with a packed transposed copy.
int8 bound exact greedy through an int8 head: the int8 product plus a rigorous per-token error bound leaves
           a candidate set that must be re-scored in fp32. How big that set is on the model's own decode
           hidden states (MT-Bench prompts + its greedy answers) decides whether the lever can pay.
lookup     prompt-lookup (n-gram) drafting for exact speculative greedy decoding: new tokens per verify
           forward, on the model's answers (or on --answers, e.g. a run dir's eval/generations/*.json).
"""

from __future__ import annotations

import argparse
import glob
import json
import sys
import time
import warnings
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
from bench_generate import ALPACA, loadavg, mtbench_first_turns  # noqa: E402

from neftune.evaluation.generate import encode_prompt, generate_answers  # noqa: E402
from neftune.modeling import load_model, load_tokenizer  # noqa: E402


def best_ms(fn, reps: int = 4) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * min(times)


def probe_kernels(head: torch.Tensor) -> None:
    """Head product at decode batch sizes, and the training head's input-gradient product."""
    vocab, width = head.shape
    scales = head.abs().amax(1) / 127
    w_int8 = torch.round(head / scales[:, None]).clamp(-127, 127).to(torch.int8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fbgemm = torch.ops.quantized.linear_prepack(
            torch.quantize_per_channel(head, scales, torch.zeros_like(scales, dtype=torch.long), 0, torch.qint8), None
        )
    print("\n[kernels] head product, ms (best of 4)")
    for rows in (1, 16):
        x = torch.randn(rows, width)
        packed = torch.ops.mkldnn._reorder_linear_weight(head, rows)
        row = {
            "F.linear (MKL)": best_ms(lambda x=x: torch.nn.functional.linear(x, head)),
            "oneDNN packed": best_ms(
                lambda x=x, packed=packed: torch.ops.mkldnn._linear_pointwise(x, packed, None, "none", [], "")
            ),
            "int8 weight-only": best_ms(lambda x=x: torch._weight_int8pack_mm(x, w_int8, scales), reps=2),
            "fbgemm dynamic int8": best_ms(lambda x=x: torch.ops.quantized.linear_dynamic(x, fbgemm, True)),
        }
        print(f"  {rows:2d} rows: " + ", ".join(f"{k} {v:.0f}" for k, v in row.items()))
    grad = torch.randn(128, vocab)
    packed_t = torch.ops.mkldnn._reorder_linear_weight(head.t().contiguous(), 128)
    flop = 2 * 128 * vocab * width
    mkl = best_ms(lambda: grad @ head)
    onednn = best_ms(lambda: torch.ops.mkldnn._linear_pointwise(grad, packed_t, None, "none", [], ""))
    print(
        f"  training head input gradient (128 rows): MKL {mkl:.0f} ms ({flop / mkl / 1e6:.0f} GFLOP/s), "
        f"oneDNN on a packed transposed copy {onednn:.0f} ms ({flop / onednn / 1e6:.0f} GFLOP/s)"
    )


def decode_hidden(model, tok, prompts: list[str], answers: list[str]) -> torch.Tensor:
    """The head's inputs at the positions that predicted each answer token (what a decode step sees)."""
    seen = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, i, o: seen.append(i[0][0].detach()))
    try:
        with torch.inference_mode():
            for p, a in zip(prompts, answers):
                ids_p = encode_prompt(tok, p)
                ids = ids_p + tok(a, add_special_tokens=False)["input_ids"]
                model(torch.tensor([ids]), logits_to_keep=0)
                seen[-1] = seen[-1][len(ids_p) - 1 : -1]
    finally:
        hook.remove()
    return torch.cat(seen)


def candidates(x: torch.Tensor, head: torch.Tensor, levels: int, per_row: bool) -> torch.Tensor:
    """Tokens per row that a rigorous bound cannot rule out when logits come from int8 weights (per-row
    scale) times x quantized to `levels` steps (per tensor, as fbgemm's dynamic linear does, or per row).
    |x.w - xq.wq| <= |x - xq|_inf * |w|_1 + |xq|_1 * s_w / 2; a token is a candidate while its upper bound
    reaches the best lower bound."""
    s_w = head.abs().amax(1) / 127
    w_q = torch.round(head / s_w[:, None]).clamp(-127, 127) * s_w[:, None]
    lo = x.amin(1, keepdim=True).clamp(max=0) if per_row else x.min().clamp(max=0)
    hi = x.amax(1, keepdim=True).clamp(min=0) if per_row else x.max().clamp(min=0)
    s_x = (hi - lo) / levels
    x_q = torch.round((x - lo) / s_x) * s_x + lo
    approx = x_q @ w_q.T
    err_x = (x - x_q).abs().amax(1, keepdim=True)
    bound = err_x * head.abs().sum(1)[None, :] + x_q.abs().sum(1, keepdim=True) * (s_w / 2)[None, :]
    best_lower = (approx - bound).amax(1, keepdim=True)
    return ((approx + bound) >= best_lower).sum(1)


def probe_int8_bound(x: torch.Tensor, head: torch.Tensor) -> None:
    print(
        f"\n[int8 bound] {x.shape[0]} decode hidden states; |x| max {x.abs().max():.1f}, mean {x.abs().mean():.2f} "
        f"(outlier channels set the per-tensor activation scale)"
    )
    for levels, per_row, name in ((127, False, "fbgemm (per tensor, 7-bit)"), (255, True, "per-row 8-bit (best case)")):
        c = torch.cat([candidates(x[i : i + 16], head, levels, per_row) for i in range(0, len(x), 16)]).float()
        print(
            f"  {name}: candidates per row median {c.median():.0f}, mean {c.mean():.0f}, max {c.max():.0f} "
            f"of {head.shape[0]} (each re-scored in fp32)"
        )


def lookup_tokens_per_verify(context: list[int], answer: list[int], draft: int, ngram: int = 3) -> tuple[int, int]:
    """Greedy prompt-lookup: draft the tokens that followed the latest earlier occurrence of the last n-gram
    (n = ngram..1) in prompt + answer so far; a verify forward accepts the matching prefix plus one token."""
    steps, t = 0, 0
    while t < len(answer):
        seq, proposal = context + answer[:t], []
        for n in range(min(ngram, len(seq)), 0, -1):
            tail = seq[-n:]
            for s in range(len(seq) - n - 1, -1, -1):
                if seq[s : s + n] == tail:
                    proposal = seq[s + n : s + n + draft]
                    break
            if proposal:
                break
        accepted = 0
        while accepted < len(proposal) and t + accepted < len(answer) and answer[t + accepted] == proposal[accepted]:
            accepted += 1
        t, steps = t + accepted + 1, steps + 1
    return len(answer), steps


def probe_lookup(tok, pairs: list[tuple[str, str]], source: str) -> None:
    ids = [(encode_prompt(tok, p), tok(a, add_special_tokens=False)["input_ids"]) for p, a in pairs]
    line = []
    for draft in (2, 4, 8):
        tokens = steps = 0
        for ctx, ans in ids:
            n, s = lookup_tokens_per_verify(ctx, ans, draft)
            tokens, steps = tokens + n, steps + s
        line.append(f"draft {draft}: {tokens / max(steps, 1):.2f}")
    print(
        f"\n[lookup] {source}: {sum(len(a) for _, a in ids)} answer tokens; new tokens per verify forward: "
        + ", ".join(line)
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gemma-3-270m")
    ap.add_argument("--n", type=int, default=16, help="MT-Bench first turns")
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--answers", nargs="*", default=[], help="generations JSON globs ([{instruction, output}])")
    args = ap.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, loadavg {loadavg()}", flush=True)
    tok, model = load_tokenizer(args.model), load_model(args.model).eval()
    head = model.get_output_embeddings().weight.detach()
    probe_kernels(head)
    prompts = [ALPACA.format(q=q) for q in mtbench_first_turns()[: args.n]]
    answers = generate_answers(model, tok, prompts, max_new_tokens=args.max_new_tokens, progress=False)
    probe_int8_bound(decode_hidden(model, tok, prompts, answers), head)
    probe_lookup(tok, list(zip(prompts, answers)), f"{args.model}'s own greedy answers ({len(prompts)})")
    for pattern in args.answers:
        recs = [r for f in sorted(glob.glob(pattern)) for r in json.loads(Path(f).read_text(encoding="utf-8"))]
        probe_lookup(tok, [(r["instruction"], r["output"]) for r in recs], f"{pattern} ({len(recs)})")
    print(f"\nloadavg at end {loadavg()}")


if __name__ == "__main__":
    main()
