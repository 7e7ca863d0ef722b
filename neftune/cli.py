"""`neftune train|eval|compare [CONFIG.yaml] [key=value ...]` — the help text of each command is
generated from the typed config's attribute docstrings (neftune/config.py)."""

from __future__ import annotations

import os
import re
import sys

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from .config import help_text, load_config  # noqa: E402
from .errors import NeftuneError  # noqa: E402

USAGE = {
    "train": "neftune train [CONFIG.yaml] [key=value ...]\n  Finetune a model (LoRA or full) with NEFTune noise.",
    "eval": "neftune eval RUN_DIR [--against OTHER_RUN_DIR] [CONFIG.yaml] [key=value ...]\n"
    "  Generate, score and (with --against) judge a finished run; writes RUN_DIR/eval/.\n"
    "  The model, data.template, data.max_length, seed and every training key come from\n"
    "  RUN_DIR/config.yaml; CONFIG.yaml and key=value may set only the keys below (eval.* and how\n"
    "  eval-set files are read): a value that would change any other key is refused.",
    "compare": "neftune compare [CONFIG.yaml] [key=value ...]\n"
    "  Baseline (alpha=0) vs NEFTune variants over seeds, evaluation, alpha selection, report.",
}
TOP_FIELDS = {
    "train": None,
    "eval": {"eval"},  # + the data.* keys of evaluation.sets.EVAL_DATA_KEYS (evaluation/run.py eval_config)
    "compare": None,
}


def _help(cmd: str) -> str:
    text = help_text(only=TOP_FIELDS[cmd])
    if cmd == "eval":
        from .config import DataConfig
        from .evaluation.sets import EVAL_DATA_KEYS

        entries = re.split(r"\n(?=  data\.)", help_text(DataConfig, prefix="data."))
        text += (
            "\n\ndata.*  (eval: only how eval-set files are read; unset, they are the run's own values)\n"
            + "\n".join(e for e in entries if e.strip().split(" ")[0] in EVAL_DATA_KEYS)
        )
    return f"usage: {USAGE[cmd]}\n\nConfig keys (YAML or key=value, dotted for nested):\n{text}\n"


def _split(argv):
    cfg_file, overrides, rest = None, [], []
    for a in argv:
        if "=" in a and not a.startswith("-"):
            overrides.append(a)
        elif a.endswith((".yaml", ".yml")) and cfg_file is None:
            cfg_file = a
        else:
            rest.append(a)
    return cfg_file, overrides, rest


def _no_unknown_options(cmd: str, rest: list) -> None:
    """A mistyped option (`--agaisnt x`) is named, not reported as a stray positional argument."""
    for a in rest:
        if a.startswith("-"):
            raise NeftuneError(f"unknown option {a!r} for `neftune {cmd}`; see `neftune {cmd} --help`")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in USAGE:
        print("usage: neftune {train,eval,compare} [-h] ...\n\n" + "\n\n".join(USAGE.values()))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    cmd, args = argv[0], argv[1:]
    if "-h" in args or "--help" in args:
        print(_help(cmd))
        return 0
    try:
        cfg_file, overrides, rest = _split(args)
        if cmd == "train":
            _no_unknown_options(cmd, rest)
            if rest:
                raise NeftuneError(f"unexpected arguments: {rest}")
            from .train import train

            train(load_config(cfg_file, overrides))
        elif cmd == "eval":
            against = None
            if "--against" in rest:
                i = rest.index("--against")
                if i + 1 >= len(rest):
                    raise NeftuneError("--against needs a run dir")
                against = rest[i + 1]
                rest = rest[:i] + rest[i + 2 :]
            _no_unknown_options(cmd, rest)
            if len(rest) != 1:
                raise NeftuneError("neftune eval needs exactly one RUN_DIR")
            from .evaluation.run import evaluate_cli

            evaluate_cli(rest[0], against=against, cfg_file=cfg_file, overrides=overrides)
        else:
            _no_unknown_options(cmd, rest)
            if rest:
                raise NeftuneError(f"unexpected arguments: {rest}")
            from .compare import compare

            compare(load_config(cfg_file, overrides))
    except NeftuneError as e:
        # one line, no traceback: every NeftuneError names the file/key and the problem; notes (e.g.
        # which sweep stage and run failed, added by launch.run_jobs) are part of that line
        text = " ".join([str(e), *(f"({n})" for n in getattr(e, "__notes__", ()))])
        print(f"neftune: error: {' '.join(text.split())}", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "neftune":
            raise
        extra = "train" if cmd == "train" else "all"
        print(
            f"neftune: error: `neftune {cmd}` needs the package '{e.name}': pip install 'neftune[{extra}]'",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print(f"neftune {cmd}: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
