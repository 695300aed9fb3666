"""The errors that bad input raises, and how a command line ends on them: each message is one paragraph naming the
problem and the fix, printed once, with exit status 2. They live here, apart from the modules that raise them, so
that the command lines can catch them without importing torch."""

import os
import sys


class ConfigError(ValueError):
    """A setting is unknown, of the wrong type, or impossible; the message says how to fix it."""


class DataError(RuntimeError):
    """The dataset cannot be found or read; the message says how to fix it."""


class CheckpointError(ValueError):
    """A weights or checkpoint file cannot be used; the message says why and what to do."""


def run_cleanly(entry) -> int:
    """Runs `entry()` and returns its exit code; bad input becomes one paragraph on stderr and exit code 2."""
    try:
        return entry()
    except (ConfigError, DataError, CheckpointError) as error:
        if int(os.environ.get("RANK", "0")) == 0:  # every process of a run finds the same problem: say it once
            print(f"error: {error}", file=sys.stderr)
        return 2


def exit_cleanly(entry) -> None:
    """run_cleanly, then exit, cleanly also from multi-process runs."""
    code = run_cleanly(entry)
    torch = sys.modules.get("torch")  # not imported by --help and by bad settings
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        # Some gloo runs abort at interpreter exit ("terminate called without an active exception")
        # even after destroy_process_group(); leaving at once after it avoids that.
        torch.distributed.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
