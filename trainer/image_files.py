"""Image files as the model sees them: any format PIL reads, in any size, made into CIFAR's 32 x 32 RGB.

CIFAR's images are whole objects, downscaled to 32 x 32. An image of another size is centre-cropped to a square (no
squashing) and resized with PIL's antialiased bicubic filter; a 32 x 32 image passes unchanged, so a CIFAR test image
saved as PNG gives the pixels the run was evaluated on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

SIZE = 32


@dataclass
class ImageFiles:
    paths: list  # the files read, in the order given
    images: torch.Tensor  # their pixels, uint8 N x 3 x 32 x 32
    failed: list  # (path, why) for each file that is not an image PIL can read


def expand(paths) -> list:
    """The files named, with each folder replaced by the files in it and its subfolders, sorted by name: hidden ones
    (.DS_Store, .ipynb_checkpoints/) left out, and a folder that holds no other kept as itself."""
    files = []
    for path in map(Path, paths):
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.is_file()
                            and not any(part.startswith(".") for part in p.relative_to(path).parts)) or [path]
        else:
            files.append(path)
    return files


def as_cifar(image: Image.Image) -> np.ndarray:
    """3 x 32 x 32 uint8 RGB: upright as its EXIF says, centre-cropped to a square, resized."""
    image = ImageOps.exif_transpose(image).convert("RGB")
    if image.size != (SIZE, SIZE):
        side = min(image.size)
        image = ImageOps.fit(image, (side, side), centering=(0.5, 0.5))
        image = image.resize((SIZE, SIZE), Image.Resampling.BICUBIC, reducing_gap=None)
    return np.array(image).transpose(2, 0, 1)  # a copy: writable, as torch wants it


def read_images(paths) -> ImageFiles:
    """Every file of `paths` (files and folders), read as CIFAR's images; a file that cannot be read is listed in
    `failed` with the reason, and the others go on."""
    read, pixels, failed = [], [], []
    for path in expand(paths):
        if path.is_dir():
            failed.append((path, "a folder with no files in it (hidden ones left out)"))
            continue
        try:
            with Image.open(path) as image:
                pixels.append(as_cifar(image))
            read.append(path)
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as error:
            why = "not an image PIL can read" if isinstance(error, UnidentifiedImageError) else str(error)
            failed.append((path, why))
    images = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros(0, 3, SIZE, SIZE, dtype=torch.uint8)
    return ImageFiles(read, images, failed)
