"""The errors that mean "the input is wrong", not "stts is wrong".

    try:
        stts.load_model("model.pt")
    except stts.errors.UserError as e:      # a bad file, key or value; the message names it
        print(f"error: {e}")

Every user-facing error derives from `UserError`; `stts.cli.main` catches it once and prints
`error: <message>` (exit status 2) instead of a traceback. Anything else that escapes is a bug in
stts and keeps its traceback. Each subclass also keeps the built-in base it had before (ValueError,
RuntimeError), so `except ValueError` callers still work.

Library code turns low-level failures (OSError for a missing file, a safetensors or YAML error, a
ValueError from a value the user typed) into one of these where it knows which file, key or value it
was: the message names it.
"""

from __future__ import annotations

__all__ = ["UserError", "ConfigError", "CheckpointError", "DataError", "BadDataError", "UsageError",
           "NonFiniteError", "MissingExtraError"]


class UserError(Exception):
    """A user's mistake: a file, key or value that cannot be used. The message names it."""


class ConfigError(UserError, ValueError):
    """A bad run config; the message names the source (file, command line), the key and the value."""


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be read (or not safely) or does not fit the model; the message names the file."""


class DataError(UserError, ValueError):
    """An unusable data setting or file (annotations, classes, labels); the message names the key or file."""


class BadDataError(UserError, RuntimeError):
    """Too many bad samples (or annotation entries): the message names the count, the fraction and
    the last reasons."""


class UsageError(UserError, ValueError):
    """A bad argument of a command or function (a model name, a size, a device); the message names it."""


class NonFiniteError(UserError, RuntimeError):
    """Training produced a non-finite loss (the weights or the selectors' scores diverged); the message
    names the step."""


class MissingExtraError(UserError, ImportError):
    """An optional extra a feature needs is not installed; the message names the packages and the
    `pip install 'stts-video[EXTRA]'` line."""
