"""CIFAR-10 from Hugging Face `datasets`, decoded once into uint8 tensors.

The whole dataset fits in memory (150 MB for the training split), so the data
path is a tensor of images, indexed by a shuffled permutation each epoch; no
DataLoader workers and no per-epoch decoding. Augmentation is a separate stage
(`trainer/augment.py`) that runs on whatever device holds the batch.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer.errors import DataError


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
    val: Split | None = None  # data.val_size training images held out, when asked for
    test_format: str | None = None  # the file format of the stored test images ("JPEG": a lossy copy), if any


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
        try:
            return datasets.load_dataset(str(local))
        except Exception as error:  # datasets, fsspec and pyarrow raise many kinds for a folder they cannot read
            raise DataError(
                f"data.name='{name}' is a folder, but `datasets` reads no dataset from it ({type(error).__name__}: "
                f"{' '.join(str(error).split())[:300]}). It must hold CIFAR-10 in the hub layout: data files (parquet, "
                f"arrow, csv, json or image folders) for a train and a test split, as ../shared/datasets/cifar10 does."
            ) from None
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


def decode_split(split, data_config, limit) -> Split:
    """Decodes the first `limit` rows to uint8 once; later runs read the cached .npz."""
    c = data_config
    for column in (c.image_column, c.label_column):
        if column not in split.column_names:
            raise DataError(f"The dataset has no column '{column}' (it has {split.column_names}); set "
                            f"data.image_column / data.label_column.")
    if len(split) == 0:
        raise DataError(f"The '{split.split}' split of '{c.name}' has no rows.")
    rows = len(split) if limit is None else min(limit, len(split))
    cache = Path(c.cache_dir).expanduser() / f"{split._fingerprint}-{c.image_column}-{c.label_column}-{rows}.npz"
    try:
        with np.load(cache) as arrays:
            images, labels = arrays["images"], arrays["labels"]
    except (OSError, ValueError, KeyError):  # not cached yet, or a damaged cache file: decode again
        subset = split.select(range(rows)) if rows < len(split) else split
        images, labels = decode_images(subset, c.image_column), class_indices(subset, c.label_column)
        _save_cache(cache, images=images, labels=labels)
    return Split(torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels))


def decode_images(subset, column: str) -> np.ndarray:
    """N x 3 x 32 x 32 uint8 from a column that `datasets`' Image feature can decode (PIL images, encoded bytes or
    paths), converted to RGB."""
    import datasets

    if not isinstance(subset.features[column], datasets.Image):
        try:
            subset = subset.cast_column(column, datasets.Image())
        except Exception:  # pyarrow raises several kinds for a column that holds no images
            raise DataError(f"The column '{column}' holds no images (its type is {subset.features[column]}); set "
                            f"data.image_column to the column of images.") from None
    try:
        pictures = [picture.convert("RGB") for picture in subset[column]]
    except Exception as error:  # PIL and datasets raise many kinds for bytes that are no image
        raise DataError(f"The column '{column}' cannot be decoded as images ({type(error).__name__}: "
                        f"{' '.join(str(error).split())[:200]}); set data.image_column to the column of images.") from None
    sizes = sorted({picture.size for picture in pictures})
    if sizes != [(32, 32)]:
        raise DataError(f"The images of column '{column}' must all be 32 x 32 pixels, as CIFAR-10's; found sizes "
                        f"{sizes[:4]}{' ...' if len(sizes) > 4 else ''}.")
    return np.stack([np.asarray(picture) for picture in pictures]).transpose(0, 3, 1, 2)


def class_indices(subset, column: str) -> np.ndarray:
    labels = np.asarray(subset[column])
    if labels.dtype.kind not in "iu" or (len(labels) and labels.min() < 0):
        raise DataError(f"The column '{column}' must hold class indices 0, 1, 2, ... (it holds values such as "
                        f"{labels[:3].tolist()}); set data.label_column to the column of labels.")
    return labels.astype(np.int64)


def _save_cache(path: Path, **arrays) -> None:
    """Caching is a convenience: a cache folder that cannot be written costs a decode next time, nothing more."""
    try:
        _atomic_save_npz(path, **arrays)
    except OSError as error:
        warnings.warn(f"data.cache_dir: could not cache the decoded images in {path.parent} ({error}); they will be "
                      f"decoded again next time.")


def _atomic_save_npz(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as tmp:
        np.savez(tmp, **arrays)
    os.replace(tmp.name, path)


def load_cifar(data_config, num_classes: int = 10, seed: int = 0) -> Cifar:
    """The train and test splits as uint8 tensors, and `data_config.val_size` training images held out as a
    validation split, chosen with `seed`."""
    dataset = load_hf_dataset(data_config.name)
    for split in ("train", "test"):
        if split not in dataset:
            raise DataError(f"'{data_config.name}' has no '{split}' split (it has {list(dataset)}).")
    train = decode_split(dataset["train"], data_config, data_config.train_limit)
    test = decode_split(dataset["test"], data_config, data_config.test_limit)
    largest = int(max(train.labels.max(), test.labels.max()))
    if largest >= num_classes:
        raise DataError(f"The labels of '{data_config.name}' go up to {largest}, but the model has "
                        f"model.num_classes={num_classes} outputs; set model.num_classes={largest + 1}.")
    label_feature = dataset["train"].features[data_config.label_column]
    names = list(getattr(label_feature, "names", None) or [])[:num_classes]
    class_names = names + [str(i) for i in range(len(names), num_classes)]  # a name for every output
    train, val = hold_out(train, data_config.val_size, seed) if data_config.val_size else (train, None)
    return Cifar(train, test, class_names, val, stored_format(dataset["test"], data_config.image_column))


def stored_format(split, column: str) -> str | None:
    """The file format of the split's first image ("JPEG", "PNG"), None when it is not stored as a file: a copy of
    CIFAR-10 kept as JPEG has artefacts the original lossless images lack, which the model card says."""
    import io

    import datasets
    from PIL import Image

    try:
        first = split.select([0]).cast_column(column, datasets.Image(decode=False))[0][column]
        with Image.open(io.BytesIO(first["bytes"]) if first.get("bytes") else first["path"]) as image:
            return image.format
    except Exception:  # images not stored as files (arrays), or a path no longer there: no format to report
        return None


def hold_out(train: Split, size: int, seed: int) -> tuple:
    """(the training rows left, `size` rows held out): a permutation of the training split drawn from its own
    generator seeded with `seed`, so that every process, and every resume, holds out the same rows. Both keep the
    split's order."""
    if size >= len(train):
        raise DataError(f"data.val_size={size} leaves no training images (the training split has {len(train):,}); "
                        f"hold out fewer.")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    held, kept = order[:size].sort().values, order[size:].sort().values
    return Split(train.images[kept], train.labels[kept]), Split(train.images[held], train.labels[held])
