"""Errors that carry a message meant for the user (CLI prints it and exits 2)."""


class UserError(Exception):
    """Bad input from the user: config, data, paths, checkpoints.

    The message is one line that says what is wrong and what to do.
    """


class ConfigError(UserError):
    """An unknown key, a wrong type or an out-of-range value in the config."""


class DataError(UserError):
    """The dataset cannot be read or is unusable for training."""


class CheckpointError(UserError):
    """A checkpoint is missing, truncated or does not match the config."""


class OutputError(UserError, OSError):
    """A file cannot be written: a read-only or missing folder, a folder in the way, a full disk.

    Also an OSError, so the callers that already continue without an optional file (the decode
    cache, run.json at the end of a run, the studio's exports) keep doing so."""


class TrainingError(Exception):
    """A step failed (NaN loss, out of memory); the message says what to change."""


class Cancelled(Exception):
    """A long job (a linear probe) was cancelled by its caller."""
