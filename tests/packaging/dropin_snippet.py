"""The README's drop-in snippet (TRL SFTTrainer + NEFTuneCallback, packing=True) on a tiny random
Llama built here, for the fresh-venv packaging test. Needs only torch, transformers, trl and the
neftune core. Prints the trainer's log history as JSON on the last line."""

import json
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from neftune import NEFTuneCallback


def tiny_tokenizer(corpus):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def main(out_dir: str) -> None:
    texts = [f"Question {i}: what is {i} plus {i}? Answer: {2 * i}. " * (1 + i % 3) for i in range(24)]
    tok = tiny_tokenizer(texts)
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=256,
            pad_token_id=tok.pad_token_id,
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
        )
    )
    ds = Dataset.from_list([{"text": t} for t in texts])

    # --- the README snippet ---
    trainer = SFTTrainer(
        model=model,
        train_dataset=ds,
        processing_class=tok,
        args=SFTConfig(
            output_dir=out_dir,
            packing=True,
            max_length=64,
            max_steps=3,
            per_device_train_batch_size=2,
            logging_steps=1,
            report_to="none",
            save_strategy="no",
            bf16=False,
            use_cpu=True,
            disable_tqdm=True,
        ),
        callbacks=[NEFTuneCallback(alpha=5)],
    )
    trainer.train()
    print(json.dumps(trainer.state.log_history))


if __name__ == "__main__":
    main(sys.argv[1])
