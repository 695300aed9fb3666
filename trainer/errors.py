"""The errors that bad input raises: each message is one paragraph naming the problem and the fix. They live here,
apart from the modules that raise them, so that the command lines can catch them without importing torch."""


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or impossible; the message says how to fix it."""


class DataError(RuntimeError):
    """The dataset cannot be found or read; the message says how to fix it."""


class CheckpointError(ValueError):
    """A weights or checkpoint file cannot be used; the message says why and what to do."""
