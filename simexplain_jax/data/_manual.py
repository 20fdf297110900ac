"""Helpers for manual-download TFDS builders: locate the folder, name what is missing."""

from __future__ import annotations

import os
from typing import Sequence

from PIL import Image


class ManualDataError(FileNotFoundError):
    """A manual-download dataset folder is missing or incomplete."""


def manual_root(dl_manager, dataset: str, subfolder: str, required: Sequence[str], instructions: str) -> str:
    """The dataset root inside ``manual_dir`` (the folder itself or its ``subfolder``), checked for
    every ``required`` relative path; raises ManualDataError naming the first missing one."""
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
    """What to give a tfds Image feature for an image file: the path when it is an RGB JPEG/PNG,
    else the PIL image converted to RGB. Raises ValueError naming an unreadable file."""
    try:
        with Image.open(path) as image:
            if image.mode == "RGB" and image.format in ("JPEG", "PNG"):
                return path
            image.load()
            return image.convert("RGB")
    except (OSError, SyntaxError) as err:
        raise ValueError(f"unreadable image {path}: {err}") from err
