"""Records -> token ids + labels, with exact prompt/answer boundaries.

A conversation is rendered as a list of segments (prompt text, answer text, special token ids)
and each segment is tokenized on its own (add_special_tokens=False): a token therefore never
straddles a prompt/answer boundary and the label mask is exact by construction. The same segments
give the generation prompt (`prompt_ids` / `prompt_text`), so eval sees exactly the training prefix.

Templates
  alpaca  the Stanford Alpaca / NEFTune paper prompt; a system message replaces the header
          sentence; later turns append "\\n\\n### Instruction:\\n{user}\\n\\n### Response:\\n" after
          the previous answer's EOS.
  chat    the tokenizer's own chat template; answer spans are found by rendering growing prefixes
          of the conversation and diffing the strings.
"""

from __future__ import annotations

from typing import Optional

from ..errors import ConfigError, DataError

ALPACA_PROMPT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
ALPACA_PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
_HEADER_INPUT = ALPACA_PROMPT.split("\n\n### Instruction:")[0]
_HEADER_NO_INPUT = ALPACA_PROMPT_NO_INPUT.split("\n\n### Instruction:")[0]
TEMPLATES = ("alpaca", "chat")

# Segment kinds: PROMPT text (not trained on unless train_on_inputs), ANSWER text (trained), or
# an int token id with its own kind.
PROMPT, ANSWER, CHAT_ANSWER = "prompt", "answer", "chat_answer"


def _where(record) -> tuple:
    """(path, line) from a record's "path:line" source, for error messages."""
    src = str(record.get("source", record.get("id", "?")))
    path, _, line = src.rpartition(":")
    return (path, int(line)) if path and line.isdigit() else (src, None)


def _split_input(msg: dict) -> tuple[str, str]:
    """(instruction, input) of a user message; alpaca records carry their input separately."""
    inp, content = msg.get("input") or "", msg["content"]
    if inp and content.endswith("\n\n" + inp):
        return content[: -len(inp) - 2], inp
    return content, inp


def _alpaca_block(msg: dict, header: Optional[str]) -> str:
    instruction, inp = _split_input(msg)
    head = "" if header is None else header
    return (
        f"{head}\n\n### Instruction:\n{instruction}\n\n" + (f"### Input:\n{inp}\n\n" if inp else "") + "### Response:\n"
    )


def _alpaca_segments(messages: list, tokenizer) -> list:
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    segs, first = [], True
    if tokenizer.bos_token_id is not None:
        segs.append((tokenizer.bos_token_id, PROMPT))
    for m in messages:
        if m["role"] == "user":
            if first:
                header = system if system is not None else (_HEADER_INPUT if _split_input(m)[1] else _HEADER_NO_INPUT)
                segs.append((_alpaca_block(m, header), PROMPT))
                first = False
            else:
                segs.append((_alpaca_block(m, None), PROMPT))
        elif m["role"] == "assistant":
            segs.append((m["content"], ANSWER))
            if tokenizer.eos_token_id is not None:
                segs.append((tokenizer.eos_token_id, ANSWER))
    return segs


def _render(tokenizer, messages, gen: bool, record) -> str:
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    try:
        return tokenizer.apply_chat_template(plain, tokenize=False, add_generation_prompt=gen)
    except Exception as e:  # jinja's TemplateError/raise_exception: e.g. "system role not supported"
        raise DataError(
            *_where(record), "unknown_role", f"the chat template rejected the conversation: {str(e)[:200]}"
        ) from None


def _chat_segments(messages: list, tokenizer, record) -> list:
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("data.template=chat but the tokenizer has no chat template; use data.template=alpaca")
    segs, done = [], ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        prefix, full = (
            _render(tokenizer, messages[:i], True, record),
            _render(tokenizer, messages[: i + 1], False, record),
        )
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ConfigError(
                "the chat template is not prefix-stable (earlier turns render differently "
                "once later turns are added); use data.template=alpaca"
            )
        segs += [(prefix[len(done) :], PROMPT), (full[len(prefix) :], CHAT_ANSWER)]
        done = full
    if not messages or messages[-1]["role"] != "assistant":  # eval prompt: add the generation prompt
        segs.append((_render(tokenizer, messages, True, record)[len(done) :], PROMPT))
    bos = tokenizer.bos_token
    if tokenizer.bos_token_id is not None and not (segs and isinstance(segs[0][0], str) and segs[0][0].startswith(bos)):
        segs.insert(0, (tokenizer.bos_token_id, PROMPT))
    return segs


def _segments(record: dict, tokenizer, template: str) -> list:
    if template == "alpaca":
        return _alpaca_segments(record["messages"], tokenizer)
    if template == "chat":
        return _chat_segments(record["messages"], tokenizer, record)
    raise ConfigError(f"unknown template {template!r} (alpaca | chat)")


def _special_ids(tokenizer) -> set:
    ids = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if getattr(t, "special", False)}
    return ids | {i for i in (tokenizer.eos_token_id,) if i is not None}


def _encode(segs: list, tokenizer) -> tuple[list, list]:
    """Token ids and per-token "is answer" flags."""
    ids, sup = [], []
    special = None
    for piece, kind in segs:
        if isinstance(piece, int):
            toks, flags = [piece], [kind != PROMPT]
        else:
            toks = tokenizer.encode(piece, add_special_tokens=False) if piece else []
            flags = [kind != PROMPT] * len(toks)
            if kind == CHAT_ANSWER:
                # The answer span ends with the template's end-of-turn marker (EOS, <end_of_turn>,
                # <|im_end|>, ...): train through the first special token after the content, not on
                # the whitespace the template puts after it (never generated). No marker: add EOS.
                special = special if special is not None else _special_ids(tokenizer)
                end = next((k for k, t in enumerate(toks) if t in special), None)
                if end is None and tokenizer.eos_token_id is not None:
                    toks, flags, end = toks + [tokenizer.eos_token_id], flags + [True], len(toks)
                if end is not None:
                    flags = [k <= end for k in range(len(toks))]
        ids += toks
        sup += flags
    return ids, sup


def tokenize_example(
    record: dict,
    tokenizer,
    template: str = "alpaca",
    max_length: int = 512,
    train_on_inputs: bool = False,
    truncation: bool = False,
) -> dict:
    """-> {"input_ids", "labels"}: labels are -100 on prompt tokens (unless train_on_inputs) and
    the token ids of every assistant turn plus the EOS closing it.

    Longer than max_length: truncation=False -> DataError "too_long"; truncation=True -> keep the
    first max_length tokens, "too_long" again if no answer token is left.
    """
    ids, sup = _encode(_segments(record, tokenizer, template), tokenizer)
    if len(ids) > max_length:
        if not truncation:
            raise DataError(*_where(record), "too_long", f"{len(ids)} tokens > max_length {max_length}")
        ids, sup = ids[:max_length], sup[:max_length]
        if not any(sup):
            raise DataError(
                *_where(record), "too_long", f"no response token left after truncation to max_length {max_length}"
            )
    labels = [t if (s or train_on_inputs) else -100 for t, s in zip(ids, sup)]
    return {"input_ids": ids, "labels": labels}


def _prompt_segments(record: dict, tokenizer, template: str) -> list:
    """Segments up to where the last assistant answer starts (all + generation prompt if none)."""
    msgs = record["messages"]
    if msgs and msgs[-1]["role"] == "assistant":
        segs = _segments(record, tokenizer, template)
        last = max(k for k, (_, kind) in enumerate(segs) if kind == PROMPT)
        return segs[: last + 1]
    return _segments(record, tokenizer, template)


def prompt_ids(record: dict, tokenizer, template: str = "alpaca") -> list[int]:
    """Token ids the model is given at generation time: exactly the training prefix."""
    return _encode(_prompt_segments(record, tokenizer, template), tokenizer)[0]


def prompt_text(record: dict, tokenizer, template: str = "alpaca") -> str:
    """The generation prompt as text, special tokens (BOS, previous EOS) written out: tokenize it
    with add_special_tokens=False (or use `prompt_ids`) to get the training prefix."""
    return "".join(
        p if isinstance(p, str) else tokenizer.convert_ids_to_tokens(p)
        for p, _ in _prompt_segments(record, tokenizer, template)
    )


def reference(record: dict) -> Optional[str]:
    """The reference answer: an explicit "reference" key (eval sets), else the last assistant message."""
    if "reference" in record:
        return record["reference"]
    msgs = record.get("messages") or []
    return msgs[-1]["content"] if msgs and msgs[-1]["role"] == "assistant" else None
