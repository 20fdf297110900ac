"""TFDS builder ``attribute_folder``: your own images with attribute labels, from a folder.

Layout of the folder (``manual_dir``)::

    attributes.csv   a header, then one row per image:
                         image,striped,red,...[,label][,split]
                         photos/cat_1.jpg,1,0,...,cat,train
    photos/...       the images (any layout; ``image`` is the path relative to the folder)

- ``image``: the first column, the image's path relative to the folder (JPEG or PNG, any mode);
  it is also the image's id, as pair files name it. A path leaving the folder is refused.
- attribute columns: every other column but ``label`` and ``split``, each 0 or 1; the header
  names the attributes.
- ``label`` (optional): the image's class; images of one label make positive pairs. Without it,
  pairs come from a pair file (``test_pairs``).
- ``split`` (optional): ``train``, ``validation`` or ``test``. Without it an image's split is
  fixed by a hash of its name: 15% validation, 15% test, the rest train (the same for any order
  of the rows).

Images are stored resized (shorter side) and centre-cropped to the config's size (``64px``,
``112px`` or ``224px``). Every bad value names the file and line; an unreadable image names the
image. This is TFDS's folder-dataset convention (a folder you point ``manual_dir`` at), with the
labels in one CSV file instead of one subfolder per class, because each image carries several
attributes.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from simexplain_jax.data._manual import ManualDataError, rgb_image_feature
from simexplain_jax.data.pipeline import resize_and_center_crop
from simexplain_jax.data.tfds_shapes import png_bytes
from simexplain_jax.io import path_inside

CSV_FILE = "attributes.csv"
SPLITS = ("train", "validation", "test")
RESERVED = ("label", "split")
INSTRUCTIONS = (
    "Put your images in a folder with an attributes.csv: a header 'image,<attribute>,...[,label][,split]' and one "
    "row per image (its path relative to the folder, then 0 or 1 per attribute, then its optional class label and "
    "split); pass the folder as manual_dir (experiments: --config.manual_dir=FOLDER).")


def hashed_split(image: str) -> str:
    """The split of an image without a ``split`` column: 15% validation, 15% test, by a hash of its name."""
    bucket = zlib.crc32(image.encode()) % 20
    return "validation" if bucket < 3 else "test" if bucket < 6 else "train"


def read_attribute_csv(path: str) -> dict:
    """The rows of ``attributes.csv``, checked.

    Returns:
      ``{"attributes": [names], "rows": [(image, bool [A], label or "", split)], "has_labels": bool}``.

    Raises:
      ValueError: naming the file and line of a bad header, a row of the wrong length, an
        attribute value other than 0 or 1, an unknown split or a repeated image.
    """
    with open(path, newline="", encoding="utf-8-sig") as f:
        lines = list(csv.reader(f))
    lines = [(number, row) for number, row in enumerate(lines, start=1) if any(cell.strip() for cell in row)]
    if not lines:
        raise ValueError(f"{path} is empty: it needs a header 'image,<attribute>,...[,label][,split]'")
    header = [cell.strip() for cell in lines[0][1]]
    if not header or header[0] != "image":
        raise ValueError(f"{path}:{lines[0][0]}: the header must start with 'image', got {header[:3]}")
    attributes = [name for name in header[1:] if name not in RESERVED]
    if not attributes:
        raise ValueError(f"{path}:{lines[0][0]}: the header names no attribute column")
    if len(set(header)) != len(header):
        raise ValueError(f"{path}:{lines[0][0]}: repeated column names in the header")
    columns = {name: i for i, name in enumerate(header)}
    rows, seen = [], set()
    for number, row in lines[1:]:
        row = [cell.strip() for cell in row]
        if len(row) != len(header):
            raise ValueError(f"{path}:{number}: {len(row)} values, the header has {len(header)} columns")
        image = row[0]
        if not image or image in seen:
            raise ValueError(f"{path}:{number}: " + (f"image {image!r} is listed twice" if image else "no image name"))
        seen.add(image)
        values = [row[columns[name]] for name in attributes]
        bad = next((v for v in values if v not in ("0", "1")), None)
        if bad is not None:
            raise ValueError(f"{path}:{number}: attribute values must be 0 or 1, got {bad[:20]!r}")
        split = row[columns["split"]] if "split" in columns else hashed_split(image)
        if split not in SPLITS:
            raise ValueError(f"{path}:{number}: split must be one of {SPLITS}, got {split[:20]!r}")
        label = row[columns["label"]] if "label" in columns else ""
        if "label" in columns and not label:
            raise ValueError(f"{path}:{number}: an empty label")
        rows.append((image, np.array([v == "1" for v in values]), label, split))
    if not rows:
        raise ValueError(f"{path} lists no image")
    return {"attributes": attributes, "rows": rows, "has_labels": "label" in columns}


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    image_size: int = 64


class AttributeFolder(tfds.core.GeneratorBasedBuilder):
    """A folder of images with an attributes.csv (manual_dir)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS
    BUILDER_CONFIGS = [FolderConfig(name=f"{size}px", image_size=size) for size in (64, 112, 224)]
    DEFAULT_CONFIG_NAME = "64px"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Your images with attribute labels (attributes.csv), resized and centre-cropped.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "image_id": tfds.features.Text(),
                "label": tfds.features.Text(),
                "attributes": tfds.features.Tensor(shape=(None,), dtype=np.bool_),
            }),
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        try:
            root = os.fspath(dl_manager.manual_dir)
        except AssertionError as err:
            raise ManualDataError(f"attribute_folder: the manual folder is missing or empty ({err}).\n"
                                  f"{INSTRUCTIONS}") from None
        path = os.path.join(root, CSV_FILE)
        if not os.path.exists(path):
            raise ManualDataError(f"attribute_folder: missing {CSV_FILE} (looked for {path}).\n{INSTRUCTIONS}")
        table = read_attribute_csv(path)
        for image, *_ in table["rows"]:
            file = path_inside(root, image, what=f"image of {CSV_FILE}")
            if not os.path.isfile(file):
                raise ManualDataError(f"attribute_folder: {CSV_FILE} lists {image!r}, but {file} does not exist")
        counts = {split: sum(r[3] == split for r in table["rows"]) for split in SPLITS}
        empty = [split for split, n in counts.items() if n == 0]
        if empty:
            raise ValueError(f"{path}: no image in split {empty[0]!r} ({counts}); give a split column or more images")
        self.info.metadata.update(attribute_names=table["attributes"], has_labels=table["has_labels"],
                                  labels=sorted({r[2] for r in table["rows"]}) if table["has_labels"] else [])
        return {split: self._generate_examples(root, [r for r in table["rows"] if r[3] == split]) for split in SPLITS}

    def _generate_examples(self, root, rows):
        size = self.builder_config.image_size
        for image, attributes, label, _ in rows:
            file = path_inside(root, image, what=f"image of {CSV_FILE}")
            feature = rgb_image_feature(file)  # the checks: unreadable files and decompression bombs named
            if isinstance(feature, str):
                with Image.open(feature) as opened:
                    feature = opened.convert("RGB")
            pixels = resize_and_center_crop(np.asarray(feature), size)
            yield image, {"image": png_bytes(pixels), "image_id": image, "label": label, "attributes": attributes}
