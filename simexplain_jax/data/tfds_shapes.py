"""TFDS builder ``shapes``: the shapes benchmark in array_record (no TensorFlow needed).

    import simexplain_jax.data  # registers the builders
    builder = tfds.builder("shapes/32px", data_dir=DIR)
    builder.download_and_prepare()
    train = builder.as_data_source("train")   # or tfds.data_source("shapes/32px", data_dir=DIR)

Every example is a deterministic function of (config, split, index): the same config always
writes the same dataset. Classes are balanced (example i has class i mod 10). The ``*_shortcut``
configs draw their training split with a filler tied to two classes (``shapes.SHORTCUTS``, with
probability ``shortcut_probability``); their validation and test splits are the plain
distribution (the same images as the plain config of that size).
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from simexplain_jax.data import shapes

SPLIT_SEEDS = {"train": 0, "validation": 1, "test": 2}


@dataclasses.dataclass
class ShapesBuilderConfig(tfds.core.BuilderConfig):
    image_size: int = 64
    split_sizes: tuple = (("train", 5000), ("validation", 1000), ("test", 1000))
    seed: int = 0
    shortcut_probability: float = 0.0  # > 0: the training split is the shortcut variant


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def make_example(config: ShapesBuilderConfig, split: str, index: int) -> dict:
    """One example as the builder stores it (image as PNG bytes)."""
    rng = np.random.default_rng([config.seed, SPLIT_SEEDS[split], index])
    sampling = shapes.ShapesConfig(shortcut_probability=config.shortcut_probability if split == "train" else 0.0)
    scene = shapes.sample_scene(rng, index % shapes.NUM_CLASSES, sampling)
    truth = shapes.render_with_ground_truth(scene, config.image_size)
    return {
        "image": png_bytes(truth["image"]),
        "label": truth["label"],
        "attributes": truth["attributes"],
        "key_index": np.int32(truth["key_index"]),
        "key_box": truth["key_box"],
        "key_mask": truth["key_mask"],
        "scene": scene.to_json(),
        "image_id": f"shapes_{split}_{index:05d}",
    }


class Shapes(tfds.core.GeneratorBasedBuilder):
    """The shapes benchmark: three objects per image, one of them the class's key object."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [
        ShapesBuilderConfig(name="32px", image_size=32,
                            split_sizes=(("train", 3000), ("validation", 500), ("test", 500)),
                            description="32 x 32 px, the test default"),
        ShapesBuilderConfig(name="64px", image_size=64, description="64 x 64 px, the demo default"),
        ShapesBuilderConfig(name="112px", image_size=112, description="112 x 112 px, the paper's resolution"),
        ShapesBuilderConfig(name="32px_shortcut", image_size=32,
                            split_sizes=(("train", 3000), ("validation", 500), ("test", 500)),
                            shortcut_probability=0.9, description="32 px; training split with class shortcuts"),
        ShapesBuilderConfig(name="64px_shortcut", image_size=64, shortcut_probability=0.9,
                            description="64 px; training split with class shortcuts (shapes.SHORTCUTS)"),
    ]
    DEFAULT_CONFIG_NAME = "64px"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        size = self.builder_config.image_size
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural scenes with known reasons for every match (simexplain_jax).",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
                "label": tfds.features.ClassLabel(names=list(shapes.CLASS_NAMES)),
                "attributes": tfds.features.Tensor(shape=(shapes.NUM_ATTRIBUTES,), dtype=np.bool_),
                "key_index": tfds.features.Scalar(dtype=np.int32),
                "key_box": tfds.features.Tensor(shape=(4,), dtype=np.int32),
                "key_mask": tfds.features.Tensor(shape=(size, size), dtype=np.bool_),
                "scene": tfds.features.Text(),
                "image_id": tfds.features.Text(),
            }),
            metadata=tfds.core.MetadataDict(attribute_names=list(shapes.ATTRIBUTE_NAMES),
                                            class_names=list(shapes.CLASS_NAMES)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split, count) for split, count in self.builder_config.split_sizes}

    def _generate_examples(self, split, count):
        for index in range(count):
            yield index, make_example(self.builder_config, split, index)
