"""Helpers for manual-download TFDS builders: locate the folder, name what is missing."""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image


class ManualDataError(FileNotFoundError):
    """A manual-download dataset folder is missing or incomplete."""


def manual_root(dl_manager, dataset: str, subfolder: str, required: Sequence[str], instructions: str) -> str:
    """The dataset root inside the manual folder, checked for every required path.

    Args:
      dl_manager: the TFDS download manager (its ``manual_dir``).
      dataset: the dataset's name, for messages.
      subfolder: the folder the archive extracts to; the root is ``manual_dir/subfolder`` or
        ``manual_dir`` itself.
      required: paths relative to the root that must exist; the first one locates the root.
      instructions: the download instructions, added to every error.

    Returns:
      The root folder.

    Raises:
      ManualDataError: naming the first missing path.
    """
    try:
        manual_dir = os.fspath(dl_manager.manual_dir)
    except AssertionError as err:  # tfds: "Manual directory ... does not exist or is empty"
        raise ManualDataError(f"{dataset}: the manual folder is missing or empty ({err}).\n{instructions}") from None
    candidates = [os.path.join(manual_dir, subfolder), manual_dir]
    root = next((c for c in candidates if os.path.exists(os.path.join(c, required[0]))), candidates[0])
    for relative in required:
        path = os.path.join(root, relative)
        if not os.path.exists(path):
            raise ManualDataError(f"{dataset}: missing {relative!r} (looked for {path}).\n{instructions}")
    return root


def rgb_image_feature(path: str):
    """What to give a tfds Image feature for an image file.

    Args:
      path: the image file.

    Returns:
      The path when the file is an RGB JPEG or PNG, else the PIL image converted to RGB.

    Raises:
      ValueError: naming an unreadable file, or one so large that PIL refuses to decode it (a
        decompression bomb).
    """
    try:
        with Image.open(path) as image:
            if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
                return path
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError, Image.DecompressionBombError) as err:  # a bomb: PIL refuses it before decoding
        raise ValueError(f"unreadable image {path}: {type(err).__name__}: {err}") from None
