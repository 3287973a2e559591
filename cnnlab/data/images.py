"""Image files: which names count as images, and reading one into a uint8 tensor.

The one reader for image trees (cnnlab.data.folders) and `cnnlab predict`: Pillow decodes any format and mode
it knows (EXIF rotation applied, 16-bit and float gray scaled to 8 bits, alpha dropped), then `fit_images` gives
the configured channels and size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cnnlab.data.arrays import fit_images
from cnnlab.errors import ConfigError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".pbm", ".bmp", ".gif", ".tif", ".tiff", ".webp")
GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def is_image(name: str) -> bool:
    """Whether a file name has an image extension (hidden files never count)."""
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def image_files(paths: list[str]) -> list[Path]:
    """The files named, and the image files found (recursively, sorted) in the folders named."""
    files: list[Path] = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and is_image(p.name))
            if not found:
                raise ConfigError("images", name, message=(
                    f"{name} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"))
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ConfigError("images", name, message=f"image {name} does not exist")
    return files


def read_image(path: str | Path, draft: int | None = None) -> Tensor:
    """An image file as uint8 (1, C, H, W): C is 1 for grayscale modes and 3 otherwise (alpha dropped).

    `draft`: the size the image will be resized to; JPEG decoders then downscale by 2, 4 or 8 first (faster).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            if draft is not None:
                image.draft(image.mode if image.mode in ("L", "RGB") else "RGB", (draft, draft))
            image = ImageOps.exif_transpose(image)  # phone JPEGs store their rotation in EXIF
            image.load()
            if image.mode in GRAY_MODES:
                pixels = _gray_uint8(np.asarray(image if image.mode != "LA" else image.getchannel("L")))
                array = pixels[None]
            else:
                array = np.asarray(image.convert("RGB")).transpose(2, 0, 1)
    except UnidentifiedImageError:
        raise ConfigError("image", str(path), message=f"{path} is not an image file Pillow can read") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:  # truncated, corrupt, huge
        raise ConfigError("image", str(path), message=f"cannot read image {path}: {error}") from None
    return torch.from_numpy(np.array(array, dtype=np.uint8)).unsqueeze(0)  # a writable, contiguous copy


def _gray_uint8(pixels: np.ndarray) -> np.ndarray:
    """8-bit gray values from Pillow's gray modes (bilevel, 8-bit, 16-bit, 32-bit integer, float)."""
    if pixels.dtype == np.bool_:
        return pixels.astype(np.uint8) * 255
    if pixels.dtype == np.uint8:
        return pixels
    if np.issubdtype(pixels.dtype, np.floating):
        scale = 255.0 if pixels.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.round(pixels * scale), 0, 255).astype(np.uint8)
    # 16-bit PNGs (and Pillow's 32-bit "I" mode holding them): 0..65535 -> 0..255
    return np.clip(np.round(pixels.astype(np.float64) / 257.0), 0, 255).astype(np.uint8)


def decode_image(path: str | Path, channels: int, image_size: int) -> Tensor:
    """One image file -> uint8 (channels, image_size, image_size), resized like every in-memory dataset."""
    return fit_images(read_image(path, draft=image_size), channels, image_size)[0]
