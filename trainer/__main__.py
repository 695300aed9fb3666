"""`python -m trainer` and `convmixer-train`: the training command line (trainer/cli.py), then the run
(trainer/main.py). torch and Accelerate are imported after the command line is read: --help and a mistyped setting
answer at once."""

from trainer.cli import training_request
from trainer.errors import exit_cleanly


def main(argv=None) -> int:
    request = training_request(argv)
    if request is None:  # --summary: printed
        return 0
    from trainer.main import train

    return train(*request)


def command() -> None:
    exit_cleanly(main)


if __name__ == "__main__":
    command()
