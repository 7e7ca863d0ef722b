"""NEFTune core: per-sequence energy alpha^2/3, zero on padding / eval / generate, packing-invariant."""

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

import neftune
from neftune.noise import (
    DISTRIBUTIONS,
    PLACEMENTS,
    document_ids,
    neftune_noise,
    per_token_length,
    placement_mask,
    sequence_energy,
)

VAR_X2 = {"uniform": 0.8, "gaussian": 2.0, "symmetric": 0.0}


def _labels_for(lengths, T, rng, packed=False):
    """Labels with a random prompt/response split per sequence (>= 1 token each): -100 = prompt."""
    rows = []
    for L in lengths:
        k = int(torch.randint(1, L, (1,), generator=rng)) if L > 1 else 1
        rows.append(torch.tensor([-100] * k + [7] * (L - k) + [-100] * ((0 if packed else T) - L * (not packed))))
    return torch.cat(rows).unsqueeze(0) if packed else torch.stack(rows)


def _energy_ratios(alpha, dist, B, T, d, lengths, trials, gen, token_mask=None):
    mask = torch.zeros(B, T, dtype=torch.long)
    for b, L in enumerate(lengths):
        mask[b, :L] = 1
    out = []
    for _ in range(trials):
        n = neftune_noise(
            torch.zeros(B, T, d), alpha, attention_mask=mask, distribution=dist, generator=gen, token_mask=token_mask
        )
        assert torch.all(n[mask == 0] == 0)
        if token_mask is not None:
            assert torch.all(n[~token_mask] == 0)
        out.append(sequence_energy(n, attention_mask=mask, token_mask=token_mask) / (alpha**2 / 3))
    return torch.stack(out)


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_energy_per_sequence_is_alpha2_over_3_for_many_shapes(dist, placement):
    gen = torch.Generator().manual_seed(0)
    rng = torch.Generator().manual_seed(1)
    lo = 1 if placement == "all" else 2  # a split needs a prompt and a response token
    for _ in range(12):
        B = int(torch.randint(1, 5, (1,), generator=rng))
        T = int(torch.randint(lo + 1, 40, (1,), generator=rng))
        d = int(torch.randint(8, 96, (1,), generator=rng))
        alpha = float(torch.empty(1).uniform_(1, 15, generator=rng))
        lengths = torch.randint(lo, T + 1, (B,), generator=rng).tolist()
        tmask = placement_mask(_labels_for(lengths, T, rng), placement)
        r = _energy_ratios(alpha, dist, B, T, d, lengths, trials=60, gen=gen, token_mask=tmask)
        # each sequence separately, averaged over trials: within 4 standard errors of 1. A sequence's
        # ratio is the mean of n*d iid x^2/E[x^2] (n = its noised tokens), whose variance is
        # E[x^4]/E[x^2]^2 - 1: 0.8 uniform, 2 gaussian, 0 symmetric (+-1: the energy is exact)
        n = tmask if tmask is not None else torch.ones(B, T, dtype=torch.bool)
        n = torch.stack([n[b, :L].sum() for b, L in enumerate(lengths)]).float()
        se = torch.sqrt(VAR_X2[dist] / (n * d * 60))
        assert torch.all((r.mean(0) - 1).abs() <= 4 * se + 1e-5), (B, T, d, lengths, r.mean(0), se)


def test_transformers_row_length_scaling_is_what_we_fix():
    """Under the padded-row scaling the energy of a short sequence would be L/T of alpha^2/3."""
    n = neftune_noise(
        torch.zeros(1, 100, 64), 5.0, attention_mask=torch.cat([torch.ones(1, 10), torch.zeros(1, 90)], 1)
    )
    L = per_token_length(*document_ids((1, 100), torch.cat([torch.ones(1, 10), torch.zeros(1, 90)], 1)))
    assert L[0, 0] == 10 and n[0, 10:].abs().sum() == 0


@pytest.mark.parametrize("placement", PLACEMENTS)
@pytest.mark.parametrize("dist", DISTRIBUTIONS)
def test_packed_documents_each_get_their_own_energy(dist, placement):
    gen = torch.Generator().manual_seed(0)
    lens = [3, 17, 1, 40, 9] if placement == "all" else [3, 17, 2, 40, 9]
    pos = torch.cat([torch.arange(L) for L in lens]).unsqueeze(0)
    tmask = placement_mask(_labels_for(lens, None, torch.Generator().manual_seed(1), packed=True), placement)
    ratios = []
    for _ in range(200):
        n = neftune_noise(
            torch.zeros(1, pos.shape[1], 32), 5.0, position_ids=pos, generator=gen, distribution=dist, token_mask=tmask
        )
        if tmask is not None:
            assert torch.all(n[~tmask] == 0)
        e = sequence_energy(n, position_ids=pos, token_mask=tmask)
        assert e.numel() == len(lens)
        ratios.append(e / (25 / 3))
    mean = torch.stack(ratios).mean(0)
    assert torch.allclose(mean, torch.ones(len(lens)), atol=0.06), mean


def test_same_scale_padded_packed_and_padding_free():
    lens = [4, 7, 2]
    T = max(lens)
    mask = torch.zeros(len(lens), T, dtype=torch.long)
    for b, L in enumerate(lens):
        mask[b, :L] = 1
    padded = per_token_length(*document_ids((3, T), attention_mask=mask))
    pos = torch.cat([torch.arange(L) for L in lens]).unsqueeze(0)
    packed = per_token_length(*document_ids((1, sum(lens)), position_ids=pos))
    # padding-free with a trailing pad region and both mask and position ids
    pos2 = torch.cat([pos, torch.zeros(1, 3, dtype=torch.long)], 1)
    mask2 = torch.cat([torch.ones(1, sum(lens)), torch.zeros(1, 3)], 1)
    packed2 = per_token_length(*document_ids((1, sum(lens) + 3), attention_mask=mask2, position_ids=pos2))
    expect = torch.cat([torch.full((L,), float(L)) for L in lens])
    assert torch.equal(padded[mask.bool()], expect)
    assert torch.equal(packed[0], expect)
    assert torch.equal(packed2[0, : sum(lens)], expect)
    # identical noise magnitude: |noise| <= alpha/sqrt(L d) and the bound is attained per sequence
    n = neftune_noise(torch.zeros(1, sum(lens), 1000), 5.0, position_ids=pos)
    for s, L in zip([0, 4, 11], lens):
        m = n[0, s : s + L].abs().max()
        assert 0.95 * 5 / math.sqrt(L * 1000) < m <= 5 / math.sqrt(L * 1000) + 1e-7


def test_zero_alpha_empty_rows_and_bad_alpha():
    assert torch.equal(neftune_noise(torch.randn(2, 5, 8), 0.0), torch.zeros(2, 5, 8))
    n = neftune_noise(torch.randn(2, 5, 8), 5.0, attention_mask=torch.tensor([[1, 1, 0, 0, 0], [0] * 5]))
    assert torch.isfinite(n).all() and n[1].abs().sum() == 0
    for bad in (-1.0, float("nan"), float("inf"), "x"):
        with pytest.raises(ValueError, match="alpha"):
            neftune_noise(torch.zeros(1, 2, 4), bad)
    with pytest.raises(ValueError, match="distribution"):
        neftune_noise(torch.zeros(1, 2, 4), 1.0, distribution="laplace")
    with pytest.raises(ValueError, match="token_mask"):
        neftune_noise(torch.zeros(1, 2, 4), 1.0, token_mask=torch.ones(1, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="placement"):
        placement_mask(torch.zeros(1, 2), "middle")


def test_symmetric_is_plus_minus_one_times_the_scale():
    n = neftune_noise(torch.zeros(1, 10, 64), 5.0, distribution="symmetric")
    assert torch.allclose(n.abs(), torch.full_like(n, 5.0 / math.sqrt(3 * 10 * 64)))
    frac_pos = float((n > 0).float().mean())
    assert 0.4 < frac_pos < 0.6


def test_dtype_preserved():
    n = neftune_noise(torch.zeros(2, 3, 8, dtype=torch.bfloat16), 5.0)
    assert n.dtype == torch.bfloat16 and n.abs().sum() > 0


# ----------------------------------------------------------------------------- hooks on real models
# every distribution and every placement at least once through the hook (the function-level tests above
# cover all 9 combinations statistically; these check the wiring, and forwards are slow on CPU)
HOOK_CASES = [("uniform", "all"), ("gaussian", "prompt"), ("symmetric", "response")]


@pytest.fixture(params=["llama", "gemma"])
def model(request, tiny_llama_dir, tiny_gemma_dir):
    path = tiny_llama_dir if request.param == "llama" else tiny_gemma_dir
    return AutoModelForCausalLM.from_pretrained(path)


def _embeds(model, ids, **kw):
    captured = {}
    h = model.get_input_embeddings().register_forward_hook(lambda m, i, o: captured.setdefault("e", o.detach().clone()))
    model(input_ids=ids, use_cache=False, **kw)
    h.remove()
    return captured["e"]


@pytest.mark.parametrize("dist,placement", HOOK_CASES)
def test_hook_noise_train_only_zero_on_padding(model, dist, placement):
    ids = torch.randint(3, 100, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[1, 5:] = 0
    labels = torch.full((2, 12), -100)
    labels[0, 4:], labels[1, 2:5] = ids[0, 4:], ids[1, 2:5]
    noised = mask.bool() & (placement_mask(labels, placement) if placement != "all" else True)
    model.train()
    clean = _embeds(model, ids, attention_mask=mask)
    with neftune.activate(model, 5.0, distribution=dist, placement=placement) as h:
        noisy = _embeds(model, ids, attention_mask=mask, labels=labels)
        diff = noisy - clean
        assert torch.all(diff[~noised] == 0) and torch.all(diff[noised].abs().sum(-1) > 0)
        stats = h.pop_stats()
        assert stats["noise_sequences"] == 2
        model.eval()
        assert torch.equal(_embeds(model, ids, attention_mask=mask), clean)
        model.train()
        # generate() in train mode adds nothing: greedy output equals the no-hook output
        out_noisy = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
        assert h._in_generate == 0
    out_clean = model.generate(ids[:1], max_new_tokens=4, do_sample=False)
    assert torch.equal(out_noisy, out_clean)
    assert torch.equal(_embeds(model, ids, attention_mask=mask), clean)  # hooks gone


def test_gemma_noise_is_in_table_space(tiny_gemma_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_gemma_dir).train()
    emb = model.get_input_embeddings()
    scale = float(emb.embed_scale)
    assert scale > 1
    ids = torch.randint(3, 100, (1, 30))
    clean = _embeds(model, ids)
    ratios = []
    with neftune.activate(model, 5.0, generator=torch.Generator().manual_seed(0)) as h:
        for _ in range(100):
            noise_out = _embeds(model, ids) - clean
            ratios.append(float(noise_out.pow(2).sum()) / scale**2 / (25 / 3))
        stats = h.pop_stats()
    assert abs(sum(ratios) / len(ratios) - 1) < 0.05
    assert abs(stats["noise_energy_ratio_mean"] - 1) < 0.05
    # the logged ratio is relative to the *table* rows, i.e. independent of Gemma's sqrt(d)
    table_norm = emb.weight[ids[0]].detach().norm()
    assert stats["noise_to_token_norm"] == pytest.approx(math.sqrt(25 / 3) / float(table_norm), rel=0.1)


def test_hooks_removed_on_exception_and_never_stack(model):
    emb = model.get_input_embeddings()
    n_hooks = len(emb._forward_hooks)
    with pytest.raises(KeyError):
        with neftune.activate(model, 5.0):
            assert len(emb._forward_hooks) == n_hooks + 1
            raise KeyError("boom")
    assert len(emb._forward_hooks) == n_hooks
    assert not hasattr(model, "generate") or "generate" not in model.__dict__
    with neftune.activate(model, 5.0):
        with pytest.raises(RuntimeError, match="already active"):
            neftune.activate(model, 5.0)
    assert len(emb._forward_hooks) == n_hooks


@pytest.mark.parametrize("dist,placement", HOOK_CASES)
def test_packed_forward_per_document_stats(model, dist, placement):
    model.train()
    lens = [5, 9, 3, 7]
    pos = torch.cat([torch.arange(L) for L in lens]).unsqueeze(0)
    ids = torch.randint(3, 100, (1, sum(lens)))
    labels = _labels_for(lens, None, torch.Generator().manual_seed(2), packed=True)
    with neftune.activate(
        model, 5.0, generator=torch.Generator().manual_seed(0), distribution=dist, placement=placement
    ) as h:
        for _ in range(100):
            model(input_ids=ids, position_ids=pos, use_cache=False, labels=labels)
        s = h.pop_stats()
    assert s["noise_sequences"] == 100 * len(lens)
    assert abs(s["noise_energy_ratio_mean"] - 1) < 0.05


def test_gradients_flow_and_gradient_checkpointing(model):
    model.train()
    model.gradient_checkpointing_enable()
    ids = torch.randint(3, 100, (2, 10))
    with neftune.activate(model, 5.0):
        loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)


def test_lora_peft_model(tiny_llama_dir):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=4, target_modules="all-linear")
    )
    model.train()
    ids = torch.randint(3, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with neftune.activate(model, 5.0) as h:
        loss = model(input_ids=ids, attention_mask=mask, labels=ids, use_cache=False).loss
        loss.backward()
        assert h.pop_stats()["noise_sequences"] == 2
    lora_grads = [p.grad for n, p in model.named_parameters() if "lora_" in n]
    assert lora_grads and all(g is not None for g in lora_grads)


def test_placement_without_labels_raises_and_set_labels_feeds_the_backbone(tiny_llama_dir):
    from neftune.modeling import supervised_loss

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).train()
    ids = torch.randint(3, 100, (1, 8))
    labels = torch.cat([torch.full((1, 3), -100), ids[:, 3:]], 1)
    with neftune.activate(model, 5.0, placement="prompt") as h:
        with pytest.raises(ValueError, match="placement='prompt' needs the batch's labels"):
            model(input_ids=ids, use_cache=False)
        # our loss runs the backbone directly: labels arrive through set_labels, used for one forward
        h.set_labels(labels)
        supervised_loss(model, {"input_ids": ids, "labels": labels})
        assert h.pop_stats()["noise_sequences"] == 1
        with pytest.raises(ValueError, match="needs the batch's labels"):
            supervised_loss(model, {"input_ids": ids, "labels": labels})


def _noise_of(model, ids, mask):
    """The noise the hook added to the embedding output of one training forward."""
    emb = model.get_input_embeddings()
    got = {}
    h = emb.register_forward_hook(
        lambda m, i, o: got.setdefault("n", (o - torch.nn.functional.embedding(i[0], m.weight)).detach())
    )
    try:
        model(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        h.remove()
    return got["n"]


def test_prefix_tuning_cache_in_training_is_noised_per_sequence(tiny_llama_dir):
    """peft prefix-tuning passes past_key_values (its virtual tokens) in training: noise the real
    tokens with their own lengths (the mask peft extends by the prefix), never skip silently."""
    from peft import PrefixTuningConfig, get_peft_model

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        PrefixTuningConfig(num_virtual_tokens=4, task_type="CAUSAL_LM"),
    ).train()
    ids = torch.randint(3, 100, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with neftune.activate(model, 5.0, generator=torch.Generator().manual_seed(0)) as h:
        noise = _noise_of(model, ids, mask)
        stats = h.pop_stats()
    assert stats["noise_sequences"] == 2
    assert torch.all(noise[1, 6:] == 0) and torch.all(noise[1, :6] != 0) and torch.all(noise[0] != 0)
    # per-sequence scale: |noise| <= alpha/sqrt(L d), L = 10 and 6 real tokens
    d = noise.shape[-1]
    assert float(noise[0].abs().max()) <= 5 / math.sqrt(10 * d) + 1e-6
    assert 5 / math.sqrt(10 * d) < float(noise[1].abs().max()) <= 5 / math.sqrt(6 * d) + 1e-6


def _tiny_llava(tiny_llama_dir):
    from transformers import AutoConfig, CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration

    text = AutoConfig.from_pretrained(tiny_llama_dir)
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=16,
        patch_size=8,
        projection_dim=16,
    )
    torch.manual_seed(0)
    return LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision, image_token_index=3))


def test_multimodal_embeds_outside_backbone_never_use_a_stale_mask(tiny_llama_dir):
    model = _tiny_llava(tiny_llama_dir).train()
    assert model.get_input_embeddings() is model.model.language_model.embed_tokens
    ids = torch.randint(10, 100, (2, 10))
    first, second = torch.ones_like(ids), torch.ones_like(ids)
    second[0, 4:] = 0  # the previous batch (first) had no padding where this one has
    with neftune.activate(model, 5.0):
        _noise_of(model, ids, first)
        noise = _noise_of(model, ids, second)
    assert torch.all(noise[0, 4:] == 0) and torch.all(noise[0, :4] != 0) and torch.all(noise[1] != 0)


def test_capture_records_labels_of_the_model_input(model):
    model.train()
    ids = torch.randint(3, 100, (2, 8))
    seen = []
    with neftune.activate(model, 5.0) as h:
        emb = model.get_input_embeddings()
        pre = emb.register_forward_pre_hook(lambda m, i: seen.append(h._batch.get("labels")))
        model(input_ids=ids, labels=ids, use_cache=False)
        pre.remove()
        assert h._batch == {}  # forgotten when the forward ends
    assert seen and torch.equal(seen[0], ids)


def test_hooks_module_keeps_the_old_import_paths():
    """activate/NEFTune moved to neftune/hooks.py (noise.py keeps the math); `from neftune.noise import
    activate` still works and is the same object, and unknown names still raise AttributeError."""
    import neftune.hooks
    import neftune.noise
    from neftune.noise import NEFTune, activate

    assert activate is neftune.hooks.activate is neftune.activate
    assert NEFTune is neftune.hooks.NEFTune
    with pytest.raises(AttributeError):
        neftune.noise.no_such_name  # noqa: B018
