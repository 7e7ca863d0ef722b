"""The drop-in: TRL SFTTrainer with packing=True gets alpha^2/3 per packed sequence with
NEFTuneCallback, where transformers' own neftune_noise_alpha gives about alpha^2/(3k)."""

import pytest
import torch

trl = pytest.importorskip("trl")
from datasets import Dataset  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from neftune import NEFTuneCallback  # noqa: E402
from neftune.noise import NEFTune, document_ids  # noqa: E402

ALPHA = 5.0


def _run(tmp_path, model_dir, tok, use_callback):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    emb = model.get_input_embeddings()
    energies = []
    batch = {}

    def pre(mod, args, kwargs):
        batch.update(
            position_ids=kwargs.get("position_ids"),
            attention_mask=kwargs.get("attention_mask"),
            input_ids=kwargs.get("input_ids"),
        )

    def measure(mod, inputs, output):
        if not mod.training:
            return
        clean = torch.nn.functional.embedding(inputs[0], mod.weight)
        sq = (output.detach() - clean.detach()).pow(2).sum(-1)
        doc, valid = document_ids(sq.shape, batch.get("attention_mask"), batch.get("position_ids"))
        per_doc = torch.zeros_like(sq).scatter_add_(1, doc, sq * valid)
        cnt = torch.zeros_like(sq).scatter_add_(1, doc, valid.float())
        energies.extend((per_doc[cnt > 0] / (ALPHA**2 / 3)).tolist())

    model.model.register_forward_pre_hook(pre, with_kwargs=True)
    texts = [" ".join(["hello world"] * (3 + i % 5)) for i in range(64)]
    ds = Dataset.from_dict({"text": texts})
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=1,
        packing=True,
        max_length=128,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        neftune_noise_alpha=None if use_callback else ALPHA,
        dataset_text_field="text",
    )
    cb = NEFTuneCallback(alpha=ALPHA, seed=0)
    trainer = trl.SFTTrainer(
        model=model, args=args, train_dataset=ds, processing_class=tok, callbacks=[cb] if use_callback else None
    )
    # our measuring hook must run after the noise hook: register it once training has started
    orig = trainer.callback_handler.on_train_begin

    def begin(*a, **k):
        out = orig(*a, **k)
        emb.register_forward_hook(measure)
        return out

    trainer.callback_handler.on_train_begin = begin
    trainer.train()
    assert cb.handle is None  # removed at train end
    return torch.tensor(energies), trainer


def test_sfttrainer_packing_callback_vs_builtin(tmp_path, tiny_llama_dir, tiny_tokenizer):
    ours, trainer = _run(tmp_path / "ours", tiny_llama_dir, tiny_tokenizer, use_callback=True)
    theirs, _ = _run(tmp_path / "theirs", tiny_llama_dir, tiny_tokenizer, use_callback=False)
    assert ours.numel() > 4 and theirs.numel() > 4  # several sequences per packed row
    k = ours.numel() / 2  # documents per row (2 steps x 1 row)
    assert abs(float(ours.mean()) - 1) < 0.25, ours
    assert float(theirs.mean()) < 0.5 * float(ours.mean())  # ~1/k of the paper's energy
    assert float(theirs.mean()) == pytest.approx(1 / k, rel=0.5)
    logged = [h for h in trainer.state.log_history if "neftune/noise_energy_ratio_mean" in h]
    assert logged and abs(logged[0]["neftune/noise_energy_ratio_mean"] - 1) < 0.3


def test_callback_refuses_double_noise(tmp_path, tiny_llama_dir, tiny_tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, neftune_noise_alpha=5.0, report_to=[], use_cpu=True)
    with pytest.raises(ValueError, match="neftune_noise_alpha"):
        NEFTuneCallback(5.0).on_train_begin(args, None, None, model=model)


def test_callback_placement_uses_the_trainers_labels(tmp_path, tiny_llama_dir):
    """A Trainer calls model(input_ids, attention_mask, labels): prompt-only noise reads those labels."""
    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).train()
    args = trl.SFTConfig(output_dir=str(tmp_path), max_steps=1, report_to=[], use_cpu=True)
    cb = NEFTuneCallback(5.0, placement="prompt", seed=0)
    cb.on_train_begin(args, None, None, model=model)
    ids = torch.randint(3, 100, (1, 9))
    labels = torch.cat([torch.full((1, 4), -100), ids[:, 4:]], 1)
    got = {}
    h = model.get_input_embeddings().register_forward_hook(lambda m, i, o: got.setdefault("e", o.detach().clone()))
    model(input_ids=ids, labels=labels, use_cache=False)
    h.remove()
    cb.handle.remove()
    diff = got["e"] - model.get_input_embeddings()(ids)
    assert torch.all(diff[0, :4].abs().sum(-1) > 0) and torch.all(diff[0, 4:] == 0)


def _sft(tmp_path, model, tok, cb, trainer_cls=None, **cfg):
    texts = [" ".join(["hello world"] * (3 + i % 5)) for i in range(64)]
    args = trl.SFTConfig(
        output_dir=str(tmp_path),
        max_steps=2,
        per_device_train_batch_size=1,
        packing=True,
        max_length=128,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        dataset_text_field="text",
        **cfg,
    )
    return (trainer_cls or trl.SFTTrainer)(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}), processing_class=tok, callbacks=[cb]
    )


def test_stats_reach_tensorboard(tmp_path, tiny_llama_dir, tiny_tokenizer):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    trainer = _sft(tmp_path, model, tiny_tokenizer, NEFTuneCallback(alpha=ALPHA, seed=0), report_to=["tensorboard"])
    trainer.train()
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events
    tags = set()
    for e in events:
        acc = EventAccumulator(str(e))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
        if "train/neftune/noise_energy_ratio_mean" in acc.Tags()["scalars"]:
            values = [s.value for s in acc.Scalars("train/neftune/noise_energy_ratio_mean")]
    assert "train/neftune/noise_energy_ratio_mean" in tags, sorted(tags)
    assert len(values) == 2 and all(abs(v - 1) < 0.3 for v in values)


def test_hooks_and_generate_removed_when_training_raises(tmp_path, tiny_llama_dir, tiny_tokenizer):
    class Boom(trl.SFTTrainer):
        def compute_loss(self, model, inputs, *args, **kwargs):
            model(**{k: v for k, v in inputs.items() if k != "labels"})  # the noised forward ran
            raise RuntimeError("boom")

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir)
    emb = model.get_input_embeddings()
    cb = NEFTuneCallback(alpha=ALPHA)
    trainer = _sft(tmp_path, model, tiny_tokenizer, cb, trainer_cls=Boom, report_to=[])
    with pytest.raises(RuntimeError, match="boom"):
        trainer.train()
    assert cb.handle is None
    hooks = [h for m in model.modules() for d in (m._forward_hooks, m._forward_pre_hooks) for h in d.values()]
    assert not [h for h in hooks if isinstance(getattr(h, "__self__", None), NEFTune)]
    assert getattr(emb, "_neftune_handle", None) is None
    assert "generate" not in vars(model) and model.generate.__func__ is type(model).generate
