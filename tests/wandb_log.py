"""Reads back what a W&B run logged offline: the history rows in its `.wandb` file.

The file is a LevelDB-style log (a 7-byte header ":W&B", magic, version; then 32 KiB blocks of chunks, each with a
7-byte header: crc32, length, type full/first/middle/last) of protobuf `Record`s, as wandb writes it; wandb itself
has no reader for it any more (its core is in Go)."""

import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32768
FULL, FIRST, LAST = 1, 2, 4


def records(path: Path):
    data = Path(path).read_bytes()
    ident, _magic, _version = struct.unpack("<4sHB", data[:7])
    assert ident == b":W&B", f"{path} is not a W&B log"
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:  # a block's tail too short for a chunk header is padding
            position += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def history(path: Path) -> list:
    """The logged rows, each a dict of key -> JSON text, in the order logged."""
    return [{item.key or "/".join(item.nested_key): item.value_json for item in record.history.item}
            for record in records(path) if record.WhichOneof("record_type") == "history"]
