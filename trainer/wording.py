"""Small helpers for the trainer's messages."""


def plural(count: int, noun: str) -> str:
    """'1 epoch', '3 epochs'."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"
