"""Templates: exact paper prompt, labels cover exactly the assistant answers (+EOS), truncation rule."""

from pathlib import Path

import pytest

from neftune.data import (
    ALPACA_PROMPT,
    ALPACA_PROMPT_NO_INPUT,
    load_records,
    prompt_ids,
    prompt_text,
    reference,
    tokenize_example,
)
from neftune.errors import DataError

DATA = Path(__file__).resolve().parents[1] / "assets" / "data"


def supervised_runs(tok, ex):
    """Decoded text of every contiguous run of supervised tokens."""
    runs, cur = [], []
    for t, lab in zip(ex["input_ids"], ex["labels"]):
        if lab != -100:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(cur)
            cur = []
    if cur:
        runs.append(cur)
    return [tok.decode(r) for r in runs]


def answers(rec):
    return [m["content"] for m in rec["messages"] if m["role"] == "assistant"]


def test_paper_template_strings():
    # Stanford Alpaca train.py PROMPT_DICT, as used by the NEFTune paper.
    assert ALPACA_PROMPT_NO_INPUT == (
        "Below is an instruction that describes a task. Write a response that appropriately completes the request."
        "\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    )
    assert ALPACA_PROMPT == (
        "Below is an instruction that describes a task, paired with an input that provides further context. "
        "Write a response that appropriately completes the request.\n\n### Instruction:\n{instruction}\n\n"
        "### Input:\n{input}\n\n### Response:\n"
    )


def test_alpaca_exact_prompt_and_labels(tiny_tokenizer):
    tok = tiny_tokenizer
    recs = load_records(DATA / "alpaca.json")
    for rec, inp in zip(recs, [None, "Hello world!", None]):
        ex = tokenize_example(rec, tok)
        instr = rec["messages"][0]["content"].split("\n\n")[0]
        prompt = (
            ALPACA_PROMPT.format(instruction=instr, input=inp)
            if inp
            else ALPACA_PROMPT_NO_INPUT.format(instruction=instr)
        )
        assert ex["input_ids"][0] == tok.bos_token_id and ex["input_ids"][-1] == tok.eos_token_id
        assert tok.decode(ex["input_ids"]) == "<s>" + prompt + answers(rec)[0] + "</s>"
        assert supervised_runs(tok, ex) == [answers(rec)[0] + "</s>"]
        assert prompt_text(rec, tok) == "<s>" + prompt
        p = prompt_ids(rec, tok)  # exactly the unsupervised prefix
        assert p == ex["input_ids"][: len(p)] and set(ex["labels"][: len(p)]) == {-100} and ex["labels"][len(p)] != -100


def test_alpaca_system_and_multiturn(tiny_tokenizer):
    tok = tiny_tokenizer
    (rec,) = [r for r in load_records(DATA / "messages.jsonl") if r["id"] == "m2"]
    ex = tokenize_example(rec, tok)
    text = tok.decode(ex["input_ids"])
    assert text == (
        "<s>Be brief.\n\n### Instruction:\nName a color.\n\n### Response:\nBlue.</s>"
        "\n\n### Instruction:\nAnother one?\n\n### Response:\nRed.</s>"
    )
    assert supervised_runs(tok, ex) == ["Blue.</s>", "Red.</s>"]
    # generation prompt == training prefix up to the last answer
    p = prompt_ids(rec, tok)
    assert p == ex["input_ids"][: len(p)] and tok.decode(ex["input_ids"][len(p) :]) == "Red.</s>"
    assert prompt_text(rec, tok) == text[: -len("Red.</s>")]


@pytest.mark.parametrize("name", ["sharegpt.json", "messages.jsonl", "prompt_completion.jsonl", "alpaca.jsonl"])
def test_chat_template_labels_exactly_assistant(tiny_tokenizer, name):
    tok = tiny_tokenizer
    for rec in load_records(DATA / name):
        ex = tokenize_example(rec, tok, template="chat")
        assert supervised_runs(tok, ex) == [a + "</s>" for a in answers(rec)]
        assert ex["input_ids"].count(tok.bos_token_id) == 1 and ex["input_ids"][0] == tok.bos_token_id
        # the rendered chat template, token for token
        rendered = tok.apply_chat_template(
            [{"role": m["role"], "content": m["content"]} for m in rec["messages"]], tokenize=False
        )
        assert tok.decode(ex["input_ids"]) == rendered
        p = prompt_ids(rec, tok, "chat")
        assert p == ex["input_ids"][: len(p)] and tok.decode(ex["input_ids"][len(p) :]) == answers(rec)[-1] + "</s>"
        assert prompt_text(rec, tok, "chat").endswith("<|assistant|>\n")


@pytest.mark.parametrize("template", ["alpaca", "chat"])
def test_train_on_inputs(tiny_tokenizer, template):
    rec = load_records(DATA / "alpaca.json")[1]
    ex = tokenize_example(rec, tiny_tokenizer, template=template, train_on_inputs=True)
    assert ex["labels"] == ex["input_ids"]


def test_truncation(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = load_records(DATA / "alpaca.json")[0]
    full = tokenize_example(rec, tok)
    n = len(full["input_ids"])
    with pytest.raises(DataError) as ei:
        tokenize_example(rec, tok, max_length=n - 1)
    assert ei.value.reason == "too_long" and f"alpaca.json:2: too_long ({n} tokens > max_length {n - 1})" in str(
        ei.value
    )
    cut = tokenize_example(rec, tok, max_length=n - 3, truncation=True)
    assert cut["input_ids"] == full["input_ids"][: n - 3] and cut["labels"] == full["labels"][: n - 3]
    n_prompt = full["labels"].count(-100)
    with pytest.raises(DataError, match="no response token left"):
        tokenize_example(rec, tok, max_length=n_prompt, truncation=True)
    assert len(tokenize_example(rec, tok, max_length=n_prompt + 1, truncation=True)["input_ids"]) == n_prompt + 1


def test_prompt_only_record_and_reference(tiny_tokenizer):
    tok = tiny_tokenizer
    rec = {"messages": [{"role": "user", "content": "Name a fruit."}], "source": "q.jsonl:1", "id": "q"}
    assert prompt_text(rec, tok) == "<s>" + ALPACA_PROMPT_NO_INPUT.format(instruction="Name a fruit.")
    assert prompt_text(rec, tok, "chat") == "<s><|user|>\nName a fruit.<|assistant|>\n"
    assert reference(rec) is None
    assert reference({**rec, "reference": "Apple."}) == "Apple."
    assert reference(load_records(DATA / "alpaca.json")[2]) == "Paris."


def test_no_bos_tokenizer(tiny_tokenizer):
    import copy

    tok = copy.deepcopy(tiny_tokenizer)
    tok.bos_token = None
    rec = load_records(DATA / "alpaca.json")[2]
    ex = tokenize_example(rec, tok)
    assert ex["input_ids"][0] != tiny_tokenizer.bos_token_id
    assert supervised_runs(tok, ex) == ["Paris.</s>"]


def test_chat_without_template_is_config_error(tiny_tokenizer):
    import copy

    from neftune.errors import ConfigError

    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = None
    with pytest.raises(ConfigError):
        tokenize_example(load_records(DATA / "alpaca.json")[0], tok, template="chat")


def test_chat_template_refusal_and_unstable_template(tiny_tokenizer):
    import copy

    from neftune.errors import ConfigError

    tok = copy.deepcopy(tiny_tokenizer)
    rec = [r for r in load_records(DATA / "messages.jsonl") if r["id"] == "m2"][0]  # has a system message
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role "
        "not supported') }}{% endif %}{{ m['content'] }}{% endfor %}"
    )
    with pytest.raises(DataError, match=r"messages.jsonl:2: unknown_role .*System role not supported"):
        tokenize_example(rec, tok, template="chat")
    tok.chat_template = "{{ messages | length }}{% for m in messages %}{{ m['content'] }}{% endfor %}"
    with pytest.raises(ConfigError, match="prefix-stable"):
        tokenize_example(rec, tok, template="chat")
