"""Your own images with attribute labels: the ``attribute_folder`` builder and adapter, over a fixture
folder made here from scikit-image's sample photos (crops of three photos, one label each, with
made-up attributes)."""

import csv

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import simexplain_jax.data  # noqa: F401  (registers the builders)
from simexplain_jax.data import ManualDataError, datasets
from simexplain_jax.data.tfds_folder import hashed_split, read_attribute_csv

ATTRIBUTES = ["person", "animal", "cup", "orange", "dark"]
PHOTOS = {"astronaut": ("person", (1, 0, 0, 1)), "chelsea": ("cat", (0, 1, 0, 1)), "coffee": ("cup", (0, 0, 1, 0))}


def make_attribute_folder(root, per_label=12, split_column=True, label_column=True, held_out=2):
    """``root`` with ``photos/<photo>_<k>.{jpg,png}`` (random crops and flips) and attributes.csv: the
    photo's attributes, ``dark`` set by the crop's brightness; ``held_out`` validation and test images
    per label, the rest train."""
    from skimage import data

    rng = np.random.default_rng(0)
    (root / "photos").mkdir(parents=True)
    header = ["image", *ATTRIBUTES] + (["label"] if label_column else []) + (["split"] if split_column else [])
    rows = [header]
    for photo, (label, fixed) in PHOTOS.items():
        image = getattr(data, photo)()
        for k in range(per_label):
            h, w = image.shape[:2]
            size = int(min(h, w) * rng.uniform(0.6, 0.9))
            y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
            crop = image[y: y + size, x: x + size]
            crop = crop[:, ::-1] if k % 2 else crop
            name = f"photos/{photo}_{k}." + ("png" if k % 3 == 0 else "jpg")
            pil = Image.fromarray(np.ascontiguousarray(crop))
            (pil.convert("L") if k == 5 else pil).save(root / name)  # one greyscale image per photo
            dark = int(crop.mean() < 110)
            split = ("train" if k < per_label - 2 * held_out else "validation" if k < per_label - held_out
                     else "test")
            rows.append([name, *fixed, dark] + ([label] if label_column else []) + ([split] if split_column else []))
    with open(root / "attributes.csv", "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_attribute_folder(tmp_path_factory.mktemp("my_images") / "my_images")


def test_the_folder_builds_into_tfds_splits_with_attributes(folder, tmp_path):
    builder = tfds.builder("attribute_folder/64px", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    assert builder.info.metadata["attribute_names"] == ATTRIBUTES and builder.info.metadata["labels"] == [
        "cat", "cup", "person"]
    assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 24, "validation": 6, "test": 6}
    expected = {row[0]: row for row in csv.reader(open(folder / "attributes.csv"))}
    train = builder.as_data_source("train")
    for i in range(len(train)):
        record = train[i]
        row = expected[record["image_id"].decode()]
        assert record["image"].shape == (64, 64, 3) and record["image"].dtype == np.uint8
        assert record["attributes"].tolist() == [v == "1" for v in row[1:6]] and record["label"].decode() == row[6]
    # what the experiments ask for, through the adapter
    data_dir, manual = str(tmp_path), str(folder)
    assert datasets.attribute_names("attribute_folder/64px", data_dir=data_dir, manual_dir=manual) == ATTRIBUTES
    splits = datasets.attribute_splits("attribute_folder/64px", data_dir=data_dir, manual_dir=manual)
    assert splits["train"].images.shape == (24, 64, 64, 3) and splits["test"].attributes.shape == (6, 5)
    assert len(set(splits["train"].groups.tolist())) == 3
    pairs = datasets.explanation_pairs("attribute_folder/64px", data_dir=data_dir, manual_dir=manual, num_pairs=6)
    labels = {r[0]: r[6] for r in expected.values()}
    test = builder.as_data_source("test")
    ids = [test[i]["image_id"].decode() for i in range(len(test))]
    for (q, r), positive in zip(pairs.pairs, pairs.labels):
        assert (labels[ids[q]] == labels[ids[r]]) == bool(positive)
    assert pairs.key_masks is None and pairs.images.shape[1:] == (64, 64, 3)


def test_similarity_training_runs_on_the_folder(folder, tmp_path):
    import jax
    import jax.numpy as jnp

    from simexplain_jax.data.pipeline import make_loader
    from simexplain_jax.models import EmbeddingNet, SmallCNN
    from simexplain_jax.train import similarity as sim

    data = datasets.similarity_data("attribute_folder/64px", data_dir=str(tmp_path), manual_dir=str(folder),
                                    num_eval_pairs=4)
    assert data.batch_kind == "labels" and data.image_size == 64 and len(data.train_source) == 24
    model = EmbeddingNet(SmallCNN(features=(4, 8, 8)), dim=4)
    state = sim.create_train_state(model, sim.make_optimizer(1e-3), jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    step = sim.make_train_step(model, batch_kind=data.batch_kind)
    batches = iter(make_loader(data.train_source, batch_size=8, preprocess=data.preprocess, num_epochs=None,
                               drop_remainder=True, shard_index=0, shard_count=1))
    state, metrics = step(state, next(batches))
    assert np.isfinite(float(metrics["loss"])) and 0.0 <= sim.evaluate_pairs(model, state.variables(), data.test) <= 1.0


def test_without_split_and_label_columns(tmp_path):
    folder = make_attribute_folder(tmp_path / "plain", per_label=12, split_column=False, label_column=False)
    table = read_attribute_csv(str(folder / "attributes.csv"))
    assert not table["has_labels"] and [r[3] for r in table["rows"]] == [hashed_split(r[0]) for r in table["rows"]]
    builder = tfds.builder("attribute_folder/64px", data_dir=str(tmp_path / "tfds"))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    assert sum(v.num_examples for v in builder.info.splits.values()) == 36
    with pytest.raises(ValueError, match="similarity training needs the 'label' column of attributes.csv"):
        datasets.similarity_data("attribute_folder/64px", data_dir=str(tmp_path / "tfds"), manual_dir=str(folder))


@pytest.mark.parametrize("text,message", [
    ("image,a,b\nx.png,1,2\n", r"attributes.csv:2: attribute values must be 0 or 1, got '2'"),
    ("image,a\nx.png,1,0\n", r"attributes.csv:2: 3 values, the header has 2 columns"),
    ("name,a\nx.png,1\n", r"attributes.csv:1: the header must start with 'image'"),
    ("image,label\nx.png,cat\n", r"attributes.csv:1: the header names no attribute column"),
    ("image,a,split\nx.png,1,dev\n", r"attributes.csv:2: split must be one of"),
    ("image,a\nx.png,1\nx.png,0\n", r"attributes.csv:3: image 'x.png' is listed twice"),
])
def test_bad_csv_values_name_the_file_and_line(tmp_path, text, message):
    (tmp_path / "attributes.csv").write_text(text)
    with pytest.raises(ValueError, match=message):
        read_attribute_csv(str(tmp_path / "attributes.csv"))


def test_missing_and_escaping_images_are_named(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    (folder / "attributes.csv").write_text("image,a,split\nmissing.png,1,train\n")
    with pytest.raises(ManualDataError, match=r"lists 'missing.png', but .*missing.png does not exist"):
        tfds.builder("attribute_folder/64px", data_dir=str(tmp_path / "t1")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
    (folder / "attributes.csv").write_text("image,a,split\n../secret.png,1,train\n")
    Image.new("RGB", (8, 8)).save(tmp_path / "secret.png")
    with pytest.raises(ValueError, match=r"image of attributes.csv '../secret.png' leaves its folder"):
        tfds.builder("attribute_folder/64px", data_dir=str(tmp_path / "t2")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(folder)))
