"""The typed-dataclass machinery under neftune/config.py (generic: it knows no config class):
attribute docstrings (field_docs), how a type reads in `--help` (type_name), closed choices from
Literal types (choices), value coercion with one-line ConfigErrors (_coerce, _one_of), applying a
nested mapping to a dataclass (_apply). Parsing `key=value` overrides (YAML) stays in config.py.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import inspect
import textwrap
import typing
from typing import Any, Literal, Optional, Union

from .errors import ConfigError


def field_docs(cls) -> dict[str, str]:
    """Attribute docstrings of a dataclass: the string literal right after each field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = " ".join(str(nxt.value.value).split())
    return docs


def _is_dc(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def type_name(tp) -> str:
    """How `--help` shows a type: choices spelled out (`uniform|gaussian`, `list of jsonl|tensorboard|none`)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "|".join(map(str, args))
    if origin is list and args:
        return f"list of {type_name(args[0])}"
    if origin is Union:
        return " or ".join(type_name(a) for a in args)
    return "None" if tp is type(None) else getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def choices(cls, key: str) -> tuple:
    """The allowed values of a closed-choice key, e.g. `choices(Config, "eval.judge")`, read from its Literal."""
    tp: Any = cls if isinstance(cls, type) else type(cls)
    for part in key.split("."):
        tp = typing.get_type_hints(tp)[part]
    while typing.get_origin(tp) in (list, Union):
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    if typing.get_origin(tp) is not Literal:
        raise KeyError(f"{key} is not a closed choice")
    return typing.get_args(tp)


def _one_of(value: Any, allowed: tuple, key: str):
    if isinstance(value, str) and value in allowed:
        return value
    close = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"{key}: {value!r} is not one of {'|'.join(map(str, allowed))}{hint}")


def _coerce(value: Any, tp, key: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return _one_of(value, args, key)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if tp is list or origin is list:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return [_coerce(value, args[0], key)] if args else [value]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], key) for v in value] if args else list(value)
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    return value


def _apply(obj, mapping: dict, where: str, prefix: str = "", lines: Optional[dict] = None):
    """Set the keys of a nested mapping on the dataclass `obj`, coerced to their types. `lines`
    ({dotted key: line}, a YAML file's) puts the line that set a bad key into the error: `file:3: ...`."""

    def at(key: str) -> str:
        return f"{where}:{lines[key]}" if lines and key in lines else where

    if not isinstance(mapping, dict):
        section = prefix.rstrip(".") or "config"  # prefix is the dotted path so far: "data." -> "data"
        raise ConfigError(f"{at(section)}: {section} must be a mapping, got {type(mapping).__name__}")
    hints = typing.get_type_hints(type(obj))
    names = [f.name for f in dataclasses.fields(obj)]
    for key, value in mapping.items():
        full = f"{prefix}{key}"
        if not isinstance(key, str) or key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ConfigError(f"{at(full)}: unknown config key '{full}'{hint}")
        tp = hints[key]
        if _is_dc(tp):
            _apply(getattr(obj, key), value if value is not None else {}, where, prefix=f"{full}.", lines=lines)
        else:
            setattr(obj, key, _coerce(value, tp, f"{at(full)}: {full}"))


def differing_keys(old: dict, new: dict, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every key whose value differs between two config dicts
    (to_dict / training_identity), nested sections key by key (data.max_length), new's keys first."""
    out = []
    for k in list(new) + [k for k in old if k not in new]:
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differing_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append((f"{prefix}{k}", a, b))
    return out
