"""Config: YAML + key=value overrides, typed validation, and fuzzing: every input either loads or
raises ConfigError naming the file / override and the problem."""

import string
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neftune.config import Config, field_docs, from_dict, load_config, save_config
from neftune.errors import ConfigError


def test_yaml_overrides_and_roundtrip(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("learning_rate: 1e-4\ndata:\n  max_length: 128\nlora: {r: 8}\n")
    cfg = load_config(str(p), ["data.packing=true", "report_to=[none]", "compare.seeds=[1,2,3]"])
    assert cfg.learning_rate == 1e-4 and cfg.data.max_length == 128 and cfg.lora.r == 8
    assert cfg.data.packing is True and cfg.report_to == ["none"] and cfg.compare.seeds == [1, 2, 3]
    save_config(cfg, tmp_path / "out.yaml")
    assert from_dict(yaml.safe_load((tmp_path / "out.yaml").read_text())) == cfg


@pytest.mark.parametrize(
    "text,needle",
    [
        ("learning_rate: [1, 2]\n", "learning_rate"),
        ("data: 3\n", "data"),
        ("nope: 1\n", "unknown config key 'nope'"),
        ("a: [\n", "c.yaml:"),
        ("neftune_noise_alpha: -1\n", "neftune_noise_alpha"),
        ("data:\n  max_lenght: 3\n", "did you mean 'data.max_length'"),
        # errors about a key the file set name its line
        ("seed: 1\n\nnope: 1\n", "c.yaml:3: unknown config key 'nope'"),
        ("seed: 1\ndata:\n  packing: true\n  max_length: abc\n", "c.yaml:4: data.max_length: expected an integer"),
        ("seed: 1\nlora: 3\n", "c.yaml:2: lora must be a mapping"),
        ("seed: 1\nlogging_steps: 0\n", "c.yaml:2: logging_steps must be >= 1"),
        ("eval:\n  judge: none\n  top_p: 2\n", "c.yaml:3: eval.top_p must be in [0, 1]"),
        ("seed: 1\nlr_scheduler_type: cosin\n", "c.yaml:2: lr_scheduler_type: 'cosin'"),
        ("compare:\n  seeds: [0]\n  variants:\n    - {name: x, lora: {r: -1}}\n", "c.yaml:3: compare.variants[0] (x)"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, text, needle):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(p))
    assert needle in str(e.value), str(e.value)


def test_every_field_has_a_docstring():
    from dataclasses import fields

    from neftune.config import CompareConfig, DataConfig, EvalConfig, LoraConfig

    for cls in (Config, DataConfig, LoraConfig, EvalConfig, CompareConfig):
        docs = field_docs(cls)
        assert {f.name for f in fields(cls)} <= set(docs), cls


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.dictionaries(
            st.sampled_from(["learning_rate", "data", "lora", "max_steps", "x", "report_to", "seed"]),
            st.one_of(
                st.none(),
                st.integers(),
                st.floats(allow_nan=True),
                st.text(max_size=5),
                st.lists(st.integers(), max_size=3),
                st.dictionaries(st.text(string.ascii_lowercase, max_size=8), st.integers(), max_size=2),
            ),
            max_size=4,
        ).map(lambda d: yaml.safe_dump(d).encode()),
    )
)
def test_fuzz_config_files(tmp_path, data):
    p = tmp_path / "fuzz.yaml"
    p.write_bytes(data)
    try:
        load_config(str(p))
    except ConfigError as e:
        assert "fuzz.yaml" in str(e)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_overrides(text):
    try:
        load_config(None, [text])
    except ConfigError as e:
        assert "override" in str(e)


def test_closed_choices_come_from_the_literal_types():
    from neftune.config import Config, choices

    assert choices(Config, "eval.parts") == ("generate", "metrics", "loss", "overfit", "judge", "capability", "exact")
    assert choices(Config(), "neftune_distribution") == ("uniform", "gaussian", "symmetric")
    assert "none" in choices(Config, "report_to")


@pytest.mark.parametrize(
    "override, needles",
    [
        ("eval.parts=[generate, judg]", ["eval.parts", "'judg' is not one of", "did you mean 'judge'"]),
        ("eval.judge=gpt4", ["eval.judge", "offline|llm|none"]),
        ("data.template=chatml", ["data.template", "alpaca|chat"]),
        ("compare.select_by=winrate", ["compare.select_by", "did you mean 'win_rate'"]),
        ("report_to=[wandb]", ["report_to", "jsonl|tensorboard|none"]),
        ("lr_scheduler_type=cosin", ["lr_scheduler_type", "did you mean 'cosine'"]),
        ("data.eval_size=0", ["data.eval_size"]),
        ("compare.variants=[{name: x, lora: {r: -1}}]", ["compare.variants[0] (x)", "lora.r must be >= 0"]),
    ],
)
def test_bad_choices_fail_at_load_naming_key_and_values(override, needles):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    for needle in needles:
        assert needle in str(e.value)


def test_eval_size_count_fraction_or_auto():
    from neftune.config import eval_count

    assert load_config(None, ["data.eval_size=0.25"]).data.eval_size == 0.25
    assert load_config(None, ["data.eval_size=7"]).data.eval_size == 7
    assert eval_count(None, 32) == 3 and eval_count(None, 5) == 1 and eval_count(None, 5000) == 64
    assert eval_count(0.25, 40) == 10 and eval_count(0.01, 10) == 1 and eval_count(7, 100) == 7


def test_training_identity_ignores_where_and_how_a_run_is_saved_and_evaluated():
    from neftune.config import training_identity

    a = load_config(None, ["output_dir=a", "eval.judge=none", "save_steps=5", "logging_steps=3"])
    b = load_config(None, ["output_dir=b", "compare.seeds=[7]", "report_to=[jsonl]"])
    assert training_identity(a) == training_identity(b)
    assert training_identity(a) != training_identity(load_config(None, ["neftune_noise_alpha=1"]))
    assert "data" in training_identity(a) and "output_dir" not in training_identity(a)


def test_sweep_long_extends_the_demo_so_its_runs_are_reused():
    """configs/sweep-long.yaml is run on top of `make demo` (output_dir=runs/demo): the runs they share
    (baseline and alpha5, seeds 0-1) must train and be evaluated identically, or the sweep would mix
    settings (compare refuses) or redo the demo's work."""
    from neftune.config import to_dict, training_identity, variant_config

    root = Path(__file__).resolve().parents[1] / "configs"
    demo, long = load_config(str(root / "default.yaml")), load_config(str(root / "sweep-long.yaml"))
    assert set(demo.compare.seeds) <= set(long.compare.seeds)
    by_name = {v["name"]: v for v in long.compare.variants}
    for v in demo.compare.variants:
        assert training_identity(variant_config(demo, v)) == training_identity(variant_config(long, by_name[v["name"]]))
    assert training_identity(demo) == training_identity(long)  # the baseline's config (alpha is overridden by compare)
    assert to_dict(demo.eval) == to_dict(long.eval)


@pytest.mark.parametrize(
    "override, needle", [("data=3", "data must be a mapping"), ("eval=[1]", "eval must be a mapping")]
)
def test_a_section_that_is_not_a_mapping_is_named_without_a_trailing_dot(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert needle in str(e.value), str(e.value)


# Each of these used to load and then crash (or silently misbehave) mid-run: a ZeroDivisionError after
# the first step, a ValueError from noise.py after the model loaded, a negative slice dropping prompts...
BAD_VALUES = [
    "logging_steps=0",
    "neftune_noise_alpha=.inf",
    "compare.seeds=[a]",
    "compare.seeds=[-1]",
    "seed=-1",
    "seed=4294967296",
    "compare.data_fractions=[abc]",
    "compare.data_fractions=[1.5]",
    "compare.data_fractions=[0]",
    "eval.max_new_tokens=0",
    "eval.batch_size=0",
    "num_train_epochs=0",
    "num_train_epochs=.nan",
    "max_steps=0",
    "learning_rate=.inf",
    "r3f_lambda=.inf",
    "weight_decay=-0.1",
    "weight_decay=.nan",
    "warmup_ratio=1.5",
    "max_grad_norm=-1",
    "max_grad_norm=.inf",
    "save_steps=-1",
    "clean_loss_steps=-1",
    "save_total_limit=-1",
    "data.num_train_samples=0",
    "data.sharegpt_size=0",
    "lora.alpha=0",
    "lora.dropout=1",
    "eval.num_samples=-1",
    "eval.overfit_samples=-1",
    "eval.train_loss_samples=-1",
    "eval.exact_samples=-1",
    "eval.capability_samples=-1",
    "eval.temperature=0",
    "eval.top_p=1.5",
    "eval.repetition_penalty=0",
    "eval.judge_max_retries=-1",
    "eval.judge_timeout=0",
    "eval.tie_margin=-0.1",
    "eval.tie_margin=.inf",
    "eval.bootstrap=0",
]


@pytest.mark.parametrize("override", BAD_VALUES)
def test_out_of_range_values_fail_at_load_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    prefix = f"override '{override}': "
    msg = str(e.value)
    assert msg.startswith(prefix) and key in msg[len(prefix) :], msg  # the key named by the check itself


def test_compare_seeds_and_fractions_are_typed():
    cfg = load_config(None, ["compare.seeds=[3, 4.0]", "compare.data_fractions=[0.5, 1]"])
    assert cfg.compare.seeds == [3, 4] and all(type(s) is int for s in cfg.compare.seeds)
    assert cfg.compare.data_fractions == [0.5, 1.0] and all(type(f) is float for f in cfg.compare.data_fractions)


def test_help_says_zero_means_all_where_it_does():
    """eval.num_samples=0 and save_total_limit=0 keep everything (like HF's save_total_limit <= 0)."""
    from neftune.config import help_text

    lines = help_text().splitlines()
    for key in ("save_total_limit", "eval.num_samples"):
        doc = lines[next(i for i, ln in enumerate(lines) if ln.startswith(f"  {key} (")) + 1]
        assert "0 = all" in doc, (key, doc)


def test_a_bad_override_of_a_file_key_names_the_override_not_the_line(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("seed: 1\nlogging_steps: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(p), ["logging_steps=0"])
    assert "override 'logging_steps=0'" in str(e.value) and "c.yaml:2" not in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "sets, needle",
    [
        ("[a/test.json,b/test.json]", "share the set name 'test'"),
        ("[heldout,heldout]", "share the set name 'heldout'"),
        ("[train]", "reserved"),
        ("[data/exact.jsonl]", "reserved"),
    ],
)
def test_eval_sets_that_would_share_a_slot_fail_at_load(sets, needle):
    """Checked when the config loads, so `neftune compare` stops before training, not at its first generation."""
    with pytest.raises(ConfigError, match="eval.sets") as e:
        load_config(None, [f"eval.sets={sets}"])
    assert needle in str(e.value)


def test_a_bad_value_names_the_override_that_set_it_not_every_override():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["logging_steps=2", "eval.num_samples=4", "logging_steps=0"])
    assert str(e.value).startswith("override 'logging_steps=0': logging_steps must be >= 1"), str(e.value)
