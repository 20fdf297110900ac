import numpy as np
import pytest
import tensorflow_datasets as tfds

import simexplain_jax.data  # noqa: F401  (registers the builders)
from simexplain_jax.data import pipeline, shapes
from simexplain_jax.data.tfds_shapes import Shapes, make_example


@pytest.fixture(scope="module")
def shapes32(shapes32_dir):
    return tfds.builder("shapes/32px", data_dir=shapes32_dir), shapes32_dir


def test_builder_metadata_and_splits(shapes32):
    builder, _ = shapes32
    assert builder.info.file_format.value == "array_record"
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 3000, "validation": 500, "test": 500}
    assert builder.info.metadata["attribute_names"] == list(shapes.ATTRIBUTE_NAMES)
    assert builder.info.features["label"].names == list(shapes.CLASS_NAMES)
    assert "color:red" in shapes.ATTRIBUTE_NAMES and "pattern:striped" in shapes.ATTRIBUTE_NAMES
    assert "size:large" in shapes.ATTRIBUTE_NAMES and shapes.NUM_CLASSES == 10


def test_every_example_matches_its_scene(shapes32):
    _, data_dir = shapes32
    source = tfds.data_source("shapes/32px", data_dir=data_dir, split="test")
    labels = []
    for i in range(len(source)):
        example = source[i]
        scene = shapes.Scene.from_json(example["scene"])
        # attributes are the union of the objects' attributes
        union = {name for o in scene.objects for name in o.attribute_names()}
        stored = {shapes.ATTRIBUTE_NAMES[j] for j in np.flatnonzero(example["attributes"])}
        assert stored == union
        # exactly one object carries a class-defining value, and it is the class and the key
        carriers = shapes.class_carriers(scene)
        assert len(carriers) == 1
        assert shapes.CLASS_NAMES.index(carriers[0][1]) == example["label"] == shapes.scene_class(scene)
        assert carriers[0][0] == example["key_index"]
        # the stored scene re-renders to the stored image bit for bit
        np.testing.assert_array_equal(shapes.render(scene, 32), example["image"])
        # the key mask lies inside the key box and covers most of it
        ymin, xmin, ymax, xmax = example["key_box"]
        mask = example["key_mask"]
        assert mask.sum() > 0 and mask[ymin:ymax, xmin:xmax].sum() == mask.sum()
        assert mask.sum() / ((ymax - ymin) * (xmax - xmin)) >= 0.4
        labels.append(example["label"])
    assert np.bincount(labels, minlength=10).min() == len(labels) // 10  # balanced classes


def test_key_masks_cover_most_of_their_boxes_on_average():
    coverage = []
    for i in range(100):
        e = make_example(Shapes.BUILDER_CONFIGS[1], "train", i)
        ymin, xmin, ymax, xmax = e["key_box"]
        coverage.append(e["key_mask"].sum() / ((ymax - ymin) * (xmax - xmin)))
    assert np.mean(coverage) >= 0.6 and min(coverage) >= 0.4


def test_counterfactual_removing_the_class_value_leaves_no_class():
    rng = np.random.default_rng(0)
    for class_id in range(shapes.NUM_CLASSES):
        scene = shapes.sample_scene(rng, class_id)
        key = shapes.key_index(scene)
        attribute_type, value = shapes.CLASS_NAMES[class_id].split(":")
        filler = shapes.FILLER_VALUES[attribute_type][0]
        counterfactual = shapes.with_attribute(scene, key, attribute_type, filler)
        assert shapes.scene_class(scene) == class_id
        assert shapes.scene_class(counterfactual) is None
        assert f"{attribute_type}:{value}" not in {n for o in counterfactual.objects for n in o.attribute_names()}
        assert not np.array_equal(shapes.render(scene, 32), shapes.render(counterfactual, 32))
        # changing a filler of another object keeps the class
        other = (key + 1) % len(scene.objects)
        size = "large" if scene.objects[other].size == "small" else "small"
        assert shapes.scene_class(shapes.with_attribute(scene, other, "size", size)) == class_id


def test_rendering_is_deterministic_and_json_round_trips():
    scene = shapes.sample_scene(np.random.default_rng(1), 3)
    assert shapes.Scene.from_json(scene.to_json()) == scene
    np.testing.assert_array_equal(shapes.render(scene, 64), shapes.render(scene, 64))
    a = make_example(Shapes.BUILDER_CONFIGS[0], "train", 7)
    b = make_example(Shapes.BUILDER_CONFIGS[0], "train", 7)
    assert a["image"] == b["image"] and a["scene"] == b["scene"]


def _plain_render(scene, image_size):
    """The drawing written plainly: the texture summed over the whole supersampled canvas, every
    object's shape and pattern evaluated at every subpixel, the key mask averaged in float."""
    n = shapes._SUPERSAMPLE
    s = image_size * n
    coords = (np.arange(s) + 0.5) / s
    y, x = coords[:, None], coords[None, :]
    canvas = np.empty((s, s, 3))
    canvas[:] = shapes.BACKGROUND_RGB
    waves = [a * np.sin(2 * np.pi * (fy * y + fx * x) + ph) for fy, fx, ph, a in scene.background]
    canvas += sum(waves, np.zeros((s, s)))[..., None]
    masks = []
    for o in scene.objects:
        r = shapes.RADII[o.size]
        dy, dx = np.broadcast_to(y - o.center[0], (s, s)), np.broadcast_to(x - o.center[1], (s, s))
        inside = shapes._inside(o.shape, dx / r, dy / r)
        color = np.asarray(shapes.COLORS_RGB[o.color], np.float64)
        canvas[inside] = color
        canvas[inside & shapes._pattern_dark(o.pattern, dy, dx)] = color * shapes._PATTERN_SHADE
        masks.append(inside)
    mean = lambda a: a.reshape(image_size, n, image_size, n, *a.shape[2:]).mean(axis=(1, 3))  # noqa: E731
    image = np.clip(np.round(mean(canvas)), 0, 255).astype(np.uint8)
    return image, mean(masks[shapes.key_index(scene)].astype(np.float64)) >= 0.5


@pytest.mark.parametrize("size", [32, 64])
def test_rendering_equals_the_plain_drawing_exactly(size):
    """The renderer draws each object in its bounding square only and sums the texture in place;
    images and key masks are the plain drawing's, bit for bit (the stored datasets stay the same)."""
    rng = np.random.default_rng(size)
    config = shapes.ShapesConfig(shortcut_probability=0.5)
    scenes = [shapes.sample_scene(rng, c % shapes.NUM_CLASSES, config) for c in range(20)]
    scenes.append(shapes.Scene(scenes[0].objects))  # no texture
    for scene in scenes:
        image, key_mask = _plain_render(scene, size)
        truth = shapes.render_with_ground_truth(scene, size)
        np.testing.assert_array_equal(truth["image"], image)
        np.testing.assert_array_equal(truth["key_mask"], key_mask)
        np.testing.assert_array_equal(shapes.render(scene, size), image)


def test_bad_scene_arguments():
    scene = shapes.sample_scene(np.random.default_rng(0), 0)
    with pytest.raises(ValueError, match="class_id"):
        shapes.sample_scene(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match="color"):
        shapes.with_attribute(scene, 0, "color", "mauve")
    with pytest.raises(ValueError, match="attribute_type"):
        shapes.with_attribute(scene, 0, "texture", "red")
    with pytest.raises(ValueError, match="object_index"):
        shapes.with_attribute(scene, 5, "color", "red")


def test_pipeline_reads_normalised_batches_deterministically(shapes32):
    _, data_dir = shapes32
    source = tfds.data_source("shapes/32px", data_dir=data_dir, split="train")
    preprocess = pipeline.Preprocess(keys=("label", "attributes", "key_mask"))
    loader = pipeline.make_loader(source, batch_size=256, preprocess=preprocess, seed=3, shard_index=0, shard_count=1)
    batch = next(iter(loader))
    assert batch["image"].shape == (256, 32, 32, 3) and batch["image"].dtype == np.float32
    assert abs(float(batch["image"].mean())) < 3 and batch["attributes"].shape == (256, shapes.NUM_ATTRIBUTES)
    again = next(iter(pipeline.make_loader(source, batch_size=256, preprocess=preprocess, seed=3, shard_index=0,
                                           shard_count=1)))
    np.testing.assert_array_equal(batch["label"], again["label"])
    other = next(iter(pipeline.make_loader(source, batch_size=256, preprocess=preprocess, seed=4, shard_index=0,
                                           shard_count=1)))
    assert not np.array_equal(batch["label"], other["label"])


def test_pipeline_shards_are_disjoint_and_cover_the_split(shapes32):
    _, data_dir = shapes32
    source = tfds.data_source("shapes/32px", data_dir=data_dir, split="validation")
    preprocess = pipeline.Preprocess(keys=("image_id",))
    ids = []
    for shard in range(2):
        loader = pipeline.make_loader(source, batch_size=64, preprocess=preprocess, shuffle=False, shard_index=shard,
                                      shard_count=2)
        ids.append({i for b in loader for i in b["image_id"].tolist()})
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 500
    everything = pipeline.load_all(source, pipeline.Preprocess(keys=("label",)))
    assert everything["image"].shape[0] == 500


def test_resize_and_center_crop():
    image = np.zeros((100, 200, 3), np.uint8)
    image[:, 90:110] = 255
    out = pipeline.resize_and_center_crop(image, 50)
    assert out.shape == (50, 50, 3)
    assert out[:, 25].mean() > 200 and out[:, 2].mean() < 10


def test_a_dataset_is_one_adapter_registered_by_name(shapes32, monkeypatch):
    from simexplain_jax.data import datasets, registry
    from simexplain_jax.data.adapters.shapes import ShapesAdapter

    assert simexplain_jax.data.registered() == ("attribute_folder", "awa2", "polyvore_outfits", "shapes")
    assert "shapes/32px" in simexplain_jax.data.names() and "polyvore_outfits/disjoint" in simexplain_jax.data.names()
    assert isinstance(simexplain_jax.data.get("shapes/32px"), ShapesAdapter)
    with pytest.raises(ValueError, match=r"dataset must be one of \('attribute_folder/64px', .*'awa2', .*'shapes/32px'.*got 'imagenet'"):
        simexplain_jax.data.get("imagenet")
    with pytest.raises(ValueError, match="dataset must be one of"):
        datasets.check_dataset("shapes/7px")

    monkeypatch.setattr(registry, "_ADAPTERS", dict(registry._ADAPTERS))  # registrations end with the test

    @simexplain_jax.data.register("my_shapes")
    class MyShapes(ShapesAdapter):  # a new dataset: the shapes benchmark under another name
        def prepare(self, data_dir, manual_dir=""):
            return tfds.builder(self.dataset.replace("my_shapes", "shapes"), data_dir=data_dir)

    _, data_dir = shapes32
    assert "my_shapes/32px" in simexplain_jax.data.names()
    mine = datasets.explanation_pair_list("my_shapes/32px", data_dir=data_dir, num_pairs=6, seed=1)
    theirs = datasets.explanation_pair_list("shapes/32px", data_dir=data_dir, num_pairs=6, seed=1)
    np.testing.assert_array_equal(mine.pairs, theirs.pairs)
    with pytest.raises(ValueError, match="already registered as 'shapes'"):
        simexplain_jax.data.register("shapes")(MyShapes)
    with pytest.raises(ValueError, match="name must be a non-empty dataset name"):
        simexplain_jax.data.register("a/b")


def test_a_corrupted_record_names_the_dataset_folder(shapes32, tmp_path):
    """A flipped byte in an array_record file was the reader's bare RuntimeError (a block hash
    mismatch) with no file named."""
    import shutil

    from simexplain_jax.data import datasets
    from simexplain_jax.data.sources import CorruptRecordError

    _, data_dir = shapes32
    shutil.copytree(data_dir, tmp_path / "tfds")
    (shard,) = (tmp_path / "tfds").glob("shapes/32px/*/shapes-test.array_record-*")
    data = bytearray(shard.read_bytes())
    data[len(data) // 3: len(data) // 3 + 2000] = bytes(b ^ 0xFF for b in data[len(data) // 3: len(data) // 3 + 2000])
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptRecordError, match=r"record \d+ of .*tfds/shapes/32px/[\d.]+, split test is unreadable "
                                                 r"\(RuntimeError: .*\); delete that folder"):
        datasets.explanation_pairs("shapes/32px", data_dir=str(tmp_path / "tfds"), num_pairs=4)
    assert len(datasets.explanation_pairs("shapes/32px", data_dir=data_dir, num_pairs=4).pairs) == 4
