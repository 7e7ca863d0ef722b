"""One typed config for every flow (train, eval, compare), litgpt-style.

Attribute docstrings below become `neftune <cmd> --help`. A run is configured by an optional YAML
file plus `key=value` overrides with dotted keys (`data.max_length=256`, `lora.r=16`); values are
parsed as YAML (`report_to=[tensorboard]`). The resolved config is saved as `config.yaml` beside
every output.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from .config_typing import (  # noqa: F401  (importable from here)
    _apply,
    _coerce,
    _is_dc,
    _one_of,
    choices,
    field_docs,
    type_name,
)
from .config_validate import (  # noqa: F401  (importable from here)
    _check_launcher,
    _check_scheduler,
    validate,
    variant_config,
)
from .errors import ConfigError

# Closed choices: one Literal each drives coercion, validation, `--help` and `choices()`. To add a
# value (e.g. a new noise distribution), add it here and handle it where it is used.
Distribution = Literal["uniform", "gaussian", "symmetric"]
Placement = Literal["all", "prompt", "response"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"]
Template = Literal["alpaca", "chat"]
OnBadRecord = Literal["error", "skip"]
Judge = Literal["offline", "llm", "none"]
Preset = Literal["greedy", "original"]
EvalPart = Literal["generate", "metrics", "loss", "overfit", "judge", "capability", "exact"]
# the comparison table's metrics (neftune/compare.py PER_SET + PER_RUN)
SelectMetric = Literal[
    "lc_win_rate",
    "win_rate",
    "avg_chars",
    "diversity",
    "rouge_l",
    "bleu",
    "heldout_loss",
    "capability",
    "train_loss",
    "clean_loss",
    "train_wall_time_s",
]
Dtype = Literal["float32", "bfloat16", "float16", "auto"]
ReportSink = Literal["jsonl", "tensorboard", "none"]
Launcher = Literal["serial", "ray"]


@dataclass
class DataConfig:
    path: str = "sharegpt"
    """Training data: a .json/.jsonl/.parquet/.csv file, a saved `datasets` dir, a hub id (online), or the embedded name `sharegpt`."""
    format: DataFormat = "auto"
    """Record format: alpaca | sharegpt | messages | prompt_completion | auto (detected from the first record)."""
    columns: dict = field(default_factory=dict)
    """Column mapping from your names to the format's, e.g. {instruction: question, output: answer}."""
    template: Template = "alpaca"
    """Prompt template: `alpaca` (the paper's) or `chat` (the tokenizer's chat template)."""
    train_on_inputs: bool = False
    """Also train on prompt tokens. Default: loss on every assistant turn only."""
    max_length: int = 512
    """Max tokens per example (and per packed row)."""
    truncation: bool = False
    """False: an example longer than max_length is a bad record. True: keep its first max_length tokens (dropped if no response token is left)."""
    packing: bool = False
    """Pack examples padding-free into rows of max_length tokens (position_ids restart per document; noise stays per document)."""
    eval_size: Optional[Union[int, float]] = None
    """Held-out examples split off the training file (fixed by data.split_seed): a count (int >= 1), a fraction of the usable records (0 < x < 1, at least 1), or None = auto: 10% of the records, at least 1, at most 64."""
    split_seed: int = 1234
    """Seed of the train/held-out split (independent of the training seed, so every run sees the same split)."""
    num_train_samples: Optional[int] = None
    """Use only the first N training examples after the split (data-size studies); None = all."""
    on_bad_record: OnBadRecord = "error"
    """error: stop at the first bad record naming file and line. skip: skip it, count per reason, report in the run summary."""
    sharegpt_size: int = 2000
    """Embedded `sharegpt` only: how many cleaned first-turn conversations to build (train + held-out)."""


@dataclass
class LoraConfig:
    r: int = 0
    """LoRA rank; 0 = full finetuning."""
    alpha: int = 32
    """LoRA scaling alpha (lora_alpha)."""
    dropout: float = 0.0
    """LoRA dropout."""
    target_modules: Union[str, list] = "all-linear"
    """Modules to adapt: `all-linear` or a list of names."""


@dataclass
class EvalConfig:
    sets: list = field(default_factory=lambda: ["heldout", "mt-bench"])
    """Eval prompt sets: heldout (the run's held-out split), mt-bench (80 first turns), or paths of data files (saved
    under the file's stem: names must be distinct, and no file may be named heldout/mt-bench/train/trained/exact)."""
    num_samples: Optional[int] = 32
    """Prompts per set (first N, fixed order); None or 0 = all."""
    parts: list[EvalPart] = field(
        default_factory=lambda: ["generate", "metrics", "loss", "overfit", "judge", "capability", "exact"]
    )
    """Which parts to run: generate, metrics, loss, overfit, judge, capability, exact."""
    preset: Preset = "greedy"
    """Decoding preset: greedy | original (the NEFTune repo's eval: greedy with repetition_penalty 1.2)."""
    max_new_tokens: int = 128
    """Max generated tokens per answer."""
    batch_size: int = 16
    """Generation batch size (prompts are length-sorted, left-padded)."""
    pack_weights: bool = True
    """CPU fp32 generation: linear layers run on oneDNN-packed weight copies (decode ~2x faster; one
    extra copy of the weights in memory while generating). Same tokens; false if memory is tight."""
    do_sample: bool = False
    """Sample instead of greedy decoding."""
    temperature: float = 0.7
    """Sampling temperature (do_sample only)."""
    top_p: float = 0.9
    """Nucleus sampling (do_sample only)."""
    repetition_penalty: Optional[float] = None
    """Override the preset's repetition penalty."""
    judge: Judge = "offline"
    """Pairwise judge: offline (MiniLM similarity to the reference answer) | llm (OpenAI-compatible endpoint) | none."""
    judge_base_url: Optional[str] = None
    """Base URL of the OpenAI-compatible endpoint (llm judge)."""
    judge_model: str = "gpt-4o-mini"
    """Judge model name (llm judge)."""
    judge_api_key_env: str = "OPENAI_API_KEY"
    """Name of the env var holding the judge's API key. The key itself is never written anywhere."""
    judge_max_retries: int = 5
    """Retries per judge call (exponential backoff)."""
    judge_timeout: float = 60.0
    """Seconds per judge call."""
    tie_margin: float = 0.01
    """Offline judge: cosine-similarity difference under which the verdict is a draw."""
    overfit_samples: int = 32
    """Training prompts answered for the ROUGE-L/BLEU overlap with training answers."""
    train_loss_samples: int = 64
    """Trained examples (data/trained.jsonl) whose clean per-example loss is measured after training (0 = none)."""
    exact_samples: int = 48
    """Generated arithmetic/unit-conversion questions of the exact-answer set (part `exact`)."""
    exact_code: bool = True
    """Add the code-output questions to the exact-answer set."""
    capability_samples: int = 57
    """Multiple-choice questions for capability retention."""
    bootstrap: int = 1000
    """Bootstrap resamples for win-rate intervals."""


@dataclass
class CompareConfig:
    variants: list = field(
        default_factory=lambda: [
            {"name": "alpha5", "neftune_noise_alpha": 5.0},
            {"name": "alpha10", "neftune_noise_alpha": 10.0},
            {"name": "alpha15", "neftune_noise_alpha": 15.0},
            {"name": "alpha5-gauss", "neftune_noise_alpha": 5.0, "neftune_distribution": "gaussian"},
        ]
    )
    """NEFTune variants trained beside the alpha=0 baseline: each a dict of config overrides plus a `name`."""
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    """Training seeds; every variant is judged against the baseline of the same seed."""
    data_fractions: list[float] = field(default_factory=list)
    """Extra data-size study: fractions of the training data (e.g. [0.25, 0.5]) for the baseline, the chosen variant
    and the best regularizer baseline (alpha-0 variant); [] = off."""
    select_by: SelectMetric = "lc_win_rate"
    """The decision's metric (paired per-item differences). lc_win_rate: the judge's verdicts length-adjusted by
    each run's LC fit (their mean is the run's LC win rate); without per-item answer lengths the raw margin/verdicts,
    and the decision sentence says so. win_rate: the judge's margin where it has one, else its verdicts."""
    tie_break: SelectMetric = "heldout_loss"
    """Kept for old configs; unused: the decision reads ties from the paired intervals."""
    launcher: Launcher = "serial"
    """How the sweep's independent runs train and generate: serial (one after another, here) | ray (Ray tasks, `pip install 'neftune[ray]'`)."""
    workers: int = 1
    """ray: runs at once. With GPUs each run takes one GPU (8 GPUs: workers=8); on CPUs each gets cores/workers threads."""
    ray_address: Optional[str] = None
    """ray: an existing Ray cluster to join (`ray start --head` prints it; 'auto' = this node's); null = start Ray here."""


@dataclass
class Config:
    model: str = "gemma-3-270m"
    """Model: an embedded name (gemma-3-270m, smollm2-135m-instruct), a local HF model dir, or a hub id (online)."""
    output_dir: str = "runs/default"
    """Where checkpoints, the final model/adapter, metrics and config.yaml go."""
    overwrite_output_dir: bool = False
    """Train from scratch into an output_dir that holds a previous run (summary.json, weights, checkpoint-N/): its artefacts are deleted first. False: refuse (resume it with resume_from_checkpoint=latest, or use a new output_dir)."""
    neftune_noise_alpha: float = 5.0
    """NEFTune alpha; 0 = no noise. Noise U(-1,1)*alpha/sqrt(L*d) per sequence, L its real token count."""
    neftune_distribution: Distribution = "uniform"
    """uniform (the paper's) | gaussian | symmetric (+-1 Rademacher); all with expected energy alpha^2/3 per sequence."""
    neftune_placement: Placement = "all"
    """Which tokens get NEFTune noise: all | prompt | response (from labels; L counts the noised tokens, energy stays alpha^2/3)."""
    r3f_lambda: float = 0.0
    """R3F-style consistency: weight of the symmetric KL between noisy and clean next-token distributions (per supervised token); 0 = off."""
    model_dropout: float = 0.0
    """The model's own dropout (attention_dropout, resid_pdrop, ... whichever its config has) during training; 0 = the checkpoint's values."""
    clean_loss_steps: int = 10
    """Every N steps also log the same batch's loss without noise (`clean_loss`, no grad); 0 = off."""
    learning_rate: float = 2e-4
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    warmup_ratio: float = 0.03
    """Fraction of steps of linear warmup before the cosine decay."""
    lr_scheduler_type: str = "cosine"
    """transformers scheduler name (cosine, linear, constant_with_warmup, ...)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm; 0 = off."""
    num_train_epochs: float = 1.0
    """Epochs over the training data (ignored when max_steps > 0)."""
    max_steps: int = -1
    """Total optimizer steps; -1 = from num_train_epochs."""
    per_device_train_batch_size: int = 4
    """Examples (or packed rows) per micro-batch per process."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    seed: int = 0
    """Seed of initialisation, data order and NEFTune noise."""
    dtype: Dtype = "float32"
    """Compute dtype: float32 | bfloat16 | float16 | auto (the checkpoint's). Half precision is autocast
    (accelerate mixed_precision) over float32 trainable weights; a LoRA run's frozen base is stored in it."""
    logging_steps: int = 1
    """Log metrics every N optimizer steps."""
    save_steps: int = 50
    """Write checkpoint-N/ every N steps; 0 = only the final save."""
    save_total_limit: Optional[int] = 2
    """Keep only the newest N checkpoints; None or 0 = all (like HF's save_total_limit)."""
    resume_from_checkpoint: Optional[str] = None
    """`latest` (the newest complete checkpoint in output_dir), a checkpoint path, or None."""
    report_to: list[ReportSink] = field(default_factory=lambda: ["jsonl", "tensorboard"])
    """Metric sinks: jsonl (metrics.jsonl, always written), tensorboard, none."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data options."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA options."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation options (`neftune eval`)."""
    compare: CompareConfig = field(default_factory=CompareConfig)
    """Sweep options (`neftune compare`)."""


# ------------------------------------------- help / load (typing: config_typing.py, checks: config_validate.py)
def help_text(cls=Config, prefix: str = "", only: Optional[set] = None) -> str:
    """Every field as `key (type, default): doc`, nested fields with dotted keys."""
    lines = []
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if only is not None and not prefix and f.name not in only:
            continue
        tp = hints[f.name]
        if _is_dc(tp):
            lines.append(f"\n{prefix}{f.name}.*  {docs.get(f.name, '')}")
            lines.append(help_text(tp, prefix=f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        tname = type_name(tp)
        lines.append(f"  {prefix}{f.name} ({tname}, default {default!r})\n      {docs.get(f.name, '')}")
    return "\n".join(lines)


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override '{text}': expected key=value")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"override '{text}': empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: Optional[str] = None, overrides: list[str] = (), base: Optional[Config] = None) -> Config:
    """YAML file (optional) then key=value overrides, validated against the dataclasses."""
    cfg = base if base is not None else Config()
    lines: dict[str, int] = {}
    if path:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f":{mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"{path}{line}: invalid YAML: {getattr(e, 'problem', e)}") from None
        lines = _key_lines(p.read_text(encoding="utf-8"))
        if raw is not None:
            _apply(cfg, raw, str(path), lines=lines)
    overridden = []
    for ov in overrides:
        keys, value = parse_override(ov)
        overridden.append(".".join(keys))
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested, f"override '{ov}'")
    try:
        validate(cfg)
    except ConfigError as e:
        key = getattr(e, "key", None)  # set by validate's checks: the key whose value is bad
        setters = [ov for ov, o in zip(overrides, overridden) if key and (key == o or key.startswith(o + "."))]
        if setters:  # the last override that set the key (its value is the one in force), not all of them
            raise ConfigError(f"override '{setters[-1]}': {e}") from None
        if path and key in lines:
            raise ConfigError(f"{path}:{lines[key]}: {e}") from None  # the file's value
        src = " + ".join(([str(path)] if path else []) + [f"override '{o}'" for o in overrides]) or "config"
        raise ConfigError(f"{src}: {e}") from None
    return cfg


def _key_lines(text: str) -> dict[str, int]:
    """{dotted key: line} of a YAML file's mapping keys (from the composed nodes' marks), so an error
    about a key the file set can name its line."""
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(k, yaml.ScalarNode):
                    lines[prefix + k.value] = k.start_mark.line + 1
                    walk(v, f"{prefix}{k.value}.")

    try:
        walk(yaml.compose(text, Loader=yaml.SafeLoader), "")
    except yaml.YAMLError:  # a file that loads but will not compose (e.g. several documents): no lines
        pass
    return lines


def eval_count(eval_size, n_records: int) -> int:
    """How many of n_records data.eval_size holds out: a count as is, a fraction of n (at least 1),
    None = 10% of n, at least 1, at most 64 (like `datasets`' test_size, capped for big files)."""
    if eval_size is None:
        return min(64, max(1, round(0.1 * n_records)))
    if isinstance(eval_size, float):
        return max(1, round(eval_size * n_records))
    return int(eval_size)


# Keys that do not change what a run trains: where it goes and how it is saved, logged, evaluated, swept.
NOT_TRAINING = (
    "output_dir",
    "overwrite_output_dir",
    "resume_from_checkpoint",
    "eval",
    "compare",
    "report_to",
    "save_steps",
    "save_total_limit",
    "logging_steps",
)


def training_identity(cfg: Config) -> dict:
    """The config keys that define what a run *trains* (the model, data, noise, optimisation, seed):
    two configs with equal identities train the same run, so `compare` may reuse or resume it."""
    d = to_dict(cfg)
    for k in NOT_TRAINING:
        d.pop(k, None)
    return d


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")


def from_dict(d: dict) -> Config:
    cfg = Config()
    _apply(cfg, d, "saved config")
    return cfg
