"""TFDS builder ``awa2``: Animals with Attributes 2 from the folder the user downloaded.

Layout (the AwA2-data.zip archive, extracted; ``manual_dir`` may be the archive's
``Animals_with_Attributes2`` folder or its parent):

    classes.txt                  "1\tantelope" ... (50 classes)
    predicates.txt               "1\tblack" ... (85 attributes)
    predicate-matrix-binary.txt  50 rows of 85 values 0/1 (class-level attributes)
    trainclasses.txt             the 40 training classes, one name per line
    testclasses.txt              the 10 unseen test classes
    JPEGImages/<class>/<class>_<id>.jpg

Splits: ``train`` (training classes, less the validation images), ``validation`` (the training
classes' images whose id hashes to 0 mod 10: a fixed, order-independent 10%), ``test`` (the
10 test classes: the paper explains similarity on unseen classes). Image ids are the file stems
(``chimpanzee_10192``), as in the reference's pair lists. A class name that would name a folder
outside ``JPEGImages/`` (``../x``, an absolute path) is rejected.
"""

from __future__ import annotations

import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from simexplain_jax.data._manual import manual_root, rgb_image_feature
from simexplain_jax.io import path_inside

INSTRUCTIONS = (
    "Download Animals with Attributes 2 (AwA2-data.zip, about 13 GB) from "
    "https://cvml.ista.ac.at/AwA2/, extract it, and pass the extracted Animals_with_Attributes2 folder "
    "(or its parent) as manual_dir: tfds.builder('awa2', data_dir=...).download_and_prepare("
    "download_config=tfds.download.DownloadConfig(manual_dir=FOLDER))."
)
REQUIRED = ("classes.txt", "predicates.txt", "predicate-matrix-binary.txt", "trainclasses.txt", "testclasses.txt",
            "JPEGImages")
NUM_ATTRIBUTES = 85


def _read_indexed_names(path: str) -> list[str]:
    names = []
    with open(path) as f:
        for line in f:
            if line.strip():
                names.append(line.split()[-1])
    return names


def _read_names(path: str) -> list[str]:
    with open(path) as f:
        return [line.strip() for line in f if line.strip()]


def _read_binary_matrix(path: str) -> np.ndarray:
    """The class x attribute matrix: rows of 0/1 entries; a bad entry or a short row names its line."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            fields = line.split()
            if any(field not in ("0", "1") for field in fields):
                bad = next(field for field in fields if field not in ("0", "1"))
                raise ValueError(f"{path}:{number}: entries must be 0 or 1, got {bad[:20]!r}")
            if rows and len(fields) != len(rows[0]):
                raise ValueError(f"{path}:{number}: {len(fields)} entries, the lines before have {len(rows[0])}")
            rows.append([int(field) for field in fields])
    if not rows:
        raise ValueError(f"{path} holds no rows")
    return np.asarray(rows, np.int64)


def is_validation(image_id: str) -> bool:
    return zlib.crc32(image_id.encode()) % 10 == 0


def read_awa2(root: str) -> dict:
    """Class names, attribute names, the class-attribute matrix and the class splits, checked."""
    classes = _read_indexed_names(os.path.join(root, "classes.txt"))
    predicates = _read_indexed_names(os.path.join(root, "predicates.txt"))
    matrix = _read_binary_matrix(os.path.join(root, "predicate-matrix-binary.txt"))
    if matrix.shape != (len(classes), len(predicates)):
        raise ValueError(f"predicate-matrix-binary.txt is {matrix.shape}, expected "
                         f"{(len(classes), len(predicates))} (classes x predicates)")
    train, test = _read_names(os.path.join(root, "trainclasses.txt")), _read_names(os.path.join(root, "testclasses.txt"))
    for name in train + test:
        if name not in classes:
            raise ValueError(f"class {name!r} of trainclasses.txt/testclasses.txt is not in classes.txt")
        path_inside(os.path.join(root, "JPEGImages"), name, what="class name of trainclasses.txt/testclasses.txt")
    return {"classes": classes, "predicates": predicates, "matrix": matrix.astype(bool), "train_classes": train,
            "test_classes": test}


class Awa2(tfds.core.GeneratorBasedBuilder):
    """Animals with Attributes 2 (manual download)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Animals with Attributes 2: 50 classes, 85 class-level attributes.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(num_classes=50),
                "attributes": tfds.features.Tensor(shape=(NUM_ATTRIBUTES,), dtype=np.bool_),
                "image_id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(),
            homepage="https://cvml.ista.ac.at/AwA2/",
        )

    def _split_generators(self, dl_manager):
        root = manual_root(dl_manager, "awa2", "Animals_with_Attributes2", REQUIRED, INSTRUCTIONS)
        meta = read_awa2(root)
        self.info.features["label"].names = meta["classes"]
        self.info.metadata.update(attribute_names=meta["predicates"], class_names=meta["classes"],
                                  train_classes=meta["train_classes"], test_classes=meta["test_classes"])
        return {
            "train": self._generate_examples(root, meta, meta["train_classes"], lambda i: not is_validation(i)),
            "validation": self._generate_examples(root, meta, meta["train_classes"], is_validation),
            "test": self._generate_examples(root, meta, meta["test_classes"], lambda i: True),
        }

    def _generate_examples(self, root, meta, class_names, keep):
        for name in class_names:
            folder = path_inside(os.path.join(root, "JPEGImages"), name, what="class name")
            if not os.path.isdir(folder):
                raise FileNotFoundError(f"awa2: missing image folder {folder}.\n{INSTRUCTIONS}")
            label = meta["classes"].index(name)
            for filename in sorted(os.listdir(folder)):
                image_id, ext = os.path.splitext(filename)
                if ext.lower() not in (".jpg", ".jpeg", ".png") or not keep(image_id):
                    continue
                yield image_id, {
                    "image": rgb_image_feature(os.path.join(folder, filename)),
                    "label": label,
                    "attributes": meta["matrix"][label],
                    "image_id": image_id,
                }
