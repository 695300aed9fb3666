"""CIFAR-10 from Hugging Face `datasets`, decoded once into uint8 tensors.

The whole dataset fits in memory (150 MB for the training split), so the data
path is a tensor of images, indexed by a shuffled permutation each epoch; no
DataLoader workers and no per-epoch decoding. Augmentation is a separate stage
(`trainer/augment.py`) that runs on whatever device holds the batch.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


class DataError(RuntimeError):
    """The dataset cannot be found or read; the message says how to fix it."""


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))


@dataclass
class Cifar:
    train: Split
    test: Split
    class_names: list


OFFLINE_HINT = (
    "To train without internet, point data.name at a local copy in the hub layout (the dataset's "
    "parquet files and README), e.g. data.name=../shared/datasets/cifar10, or set HF_HUB_OFFLINE=1 "
    "to use the Hugging Face cache of an earlier download."
)


def load_hf_dataset(name: str):
    """Opens a hub id or a local hub-layout folder, failing fast and clearly when neither works."""
    import datasets

    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise DataError(f"data.name='{name}' is a file; it must be a folder in the hub layout or a hub id.")
        return datasets.load_dataset(str(local))
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") > 1
    if looks_like_path:
        raise DataError(f"data.name='{name}' is no folder on this machine. {OFFLINE_HINT}")
    if not _hub_offline():
        _check_hub_reachable(name)
    try:
        return datasets.load_dataset(name)
    except (ConnectionError, OSError) as error:
        raise DataError(f"Could not load '{name}' from the Hugging Face hub or its cache ({error}). {OFFLINE_HINT}") from None


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def _check_hub_reachable(name: str) -> None:
    # datasets retries an unreachable hub for about half a minute; one quick probe says it first.
    from huggingface_hub import HfApi

    try:
        HfApi().dataset_info(name, timeout=10)
    except Exception as error:  # network errors come from several libraries; all mean the same here
        if "not found" in str(error).lower() or "404" in str(error):
            raise DataError(f"There is no dataset '{name}' on the Hugging Face hub. {OFFLINE_HINT}") from None
        raise DataError(f"The Hugging Face hub cannot be reached for '{name}' ({type(error).__name__}). {OFFLINE_HINT}") from None


def decode_split(split, image_column: str, label_column: str, limit, cache_dir: Path) -> Split:
    """Decodes the first `limit` rows to uint8 once; later runs read the cached .npz."""
    for column in (image_column, label_column):
        if column not in split.column_names:
            raise DataError(
                f"The dataset has no column '{column}' (it has {split.column_names}); "
                f"set data.image_column / data.label_column."
            )
    rows = len(split) if limit is None else min(limit, len(split))
    cache = cache_dir / f"{split._fingerprint}-{image_column}-{rows}.npz"
    if cache.exists():
        with np.load(cache) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    else:
        subset = split.select(range(rows)) if rows < len(split) else split
        images = np.stack([np.asarray(img.convert("RGB")) for img in subset[image_column]]).transpose(0, 3, 1, 2)
        labels = np.asarray(subset[label_column], dtype=np.int64)
        _atomic_save_npz(cache, images=images, labels=labels)
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def _atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)


def load_cifar(data_config) -> Cifar:
    dataset = load_hf_dataset(data_config.name)
    for split in ("train", "test"):
        if split not in dataset:
            raise DataError(f"'{data_config.name}' has no '{split}' split (it has {list(dataset)}).")
    cache_dir = Path(data_config.cache_dir).expanduser()
    c = data_config
    train = decode_split(dataset["train"], c.image_column, c.label_column, c.train_limit, cache_dir)
    test = decode_split(dataset["test"], c.image_column, c.label_column, c.test_limit, cache_dir)
    label_feature = dataset["train"].features[c.label_column]
    class_names = list(getattr(label_feature, "names", None) or [str(i) for i in range(int(train.labels.max()) + 1)])
    return Cifar(train, test, class_names)
