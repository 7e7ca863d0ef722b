"""Greedy decoding without `generate`'s per-step machinery, token-for-token equal to it.

`model.generate` spends most of a CPU decode step outside the matmuls: logits processors and
stopping criteria over the full vocabulary, a float32 copy of every row's 262k logits, and padded
rows that keep decoding after they have finished. Greedy needs none of that. This loop calls the
model's own forward with the model's own KV cache (so attention, masks and positions are computed by
the same code as in `generate`), and per step:

- prefill and decode ask for the logits of the last position only (`logits_to_keep=1`);
- the next token is the argmax of those logits (what greedy `generate` picks: processors are empty);
- rows that emitted an EOS (or hit the cap) leave the batch, and their KV rows leave the cache, so
  the batch shrinks instead of decoding padding.

Positions follow the attention mask exactly like `generate` (cumsum of the mask − 1), so a
left-padded row decodes like the same prompt alone; tests compare against per-prompt `generate`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _new_cache(model):
    from transformers import DynamicCache

    try:
        return DynamicCache(config=model.config)  # per-layer sliding windows (Gemma 3), as generate builds it
    except TypeError:  # older signatures
        return DynamicCache()


def greedy_generate(
    model,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    eos_ids: Sequence[int],
    pad_id: int,
    device: torch.device,
    shrink: bool = True,
) -> list[list[int]]:
    """New token ids per prompt (EOS included when one was emitted), greedy, one left-padded batch.

    shrink: drop finished rows from the batch (and the cache) as soon as they finish.
    """
    n = len(prompts)
    width = max(len(p) for p in prompts)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for row, p in enumerate(prompts):  # left padding: every row's last prompt token at the same column
        ids[row, width - len(p) :] = torch.as_tensor(list(p), dtype=torch.long)
        mask[row, width - len(p) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
    eos = torch.as_tensor(list(eos_ids), dtype=torch.long, device=device)
    out: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n, device=device)  # original row of each row still in the batch
    cache = _new_cache(model)
    if max_new_tokens <= 0:
        return out
    finished = torch.zeros(n, dtype=torch.bool, device=device)  # only used when not shrinking
    with torch.inference_mode():
        logits = model(
            input_ids=ids, attention_mask=mask, position_ids=pos, cache=cache, use_cache=True, logits_to_keep=1
        ).logits
        for step in range(max_new_tokens):
            nxt = logits[:, -1].argmax(-1)
            if not shrink:
                nxt = nxt.masked_fill(finished, pad_id)  # finished rows decode padding, like generate
            for r, t, f in zip(alive.tolist(), nxt.tolist(), finished.tolist()):
                if not f:
                    out[r].append(t)
            done = torch.isin(nxt, eos) | finished
            if step + 1 == max_new_tokens or bool(done.all()):
                break
            if shrink and bool(done.any()):
                keep = (~done).nonzero().squeeze(-1)
                cache.batch_select_indices(keep)
                alive, nxt, mask, pos, finished = alive[keep], nxt[keep], mask[keep], pos[keep], finished[keep]
            elif not shrink:
                finished = done
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            pos = pos[:, -1:] + 1
            logits = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=pos,
                cache=cache,
                use_cache=True,
                logits_to_keep=1,
            ).logits
    return out
