"""AwA2 and Polyvore Outfits importers over small fixture folders in the datasets' real layouts."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

import simexplain_jax.data  # noqa: F401  (registers the builders)
from simexplain_jax.data import ManualDataError, reference_files
from simexplain_jax.data.tfds_awa2 import is_validation
from simexplain_jax.data.tfds_polyvore import compatible_pairs, condition_index, outfit_items, type_conditions

AWA2_CLASSES = (
    "antelope grizzly+bear killer+whale beaver dalmatian persian+cat horse german+shepherd blue+whale siamese+cat "
    "skunk mole tiger hippopotamus leopard moose spider+monkey humpback+whale elephant gorilla ox fox sheep seal "
    "chimpanzee hamster squirrel rhinoceros rabbit bat giraffe wolf chihuahua rat weasel otter buffalo zebra "
    "giant+panda deer bobcat pig lion mouse polar+bear collie walrus raccoon cow dolphin").split()
AWA2_TEST = "chimpanzee giant+panda leopard persian+cat pig hippopotamus humpback+whale raccoon rat seal".split()


def write_jpeg(path, seed, size=(12, 10), mode="RGB"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(array)
    (image.convert("L") if mode == "L" else image).save(path, format="JPEG")


@pytest.fixture(scope="module")
def awa2_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("awa2_download") / "Animals_with_Attributes2"
    root.mkdir()
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{name}\n" for i, name in enumerate(AWA2_CLASSES)))
    (root / "predicates.txt").write_text("".join(f"{i + 1}\tpredicate{i}\n" for i in range(85)))
    matrix = np.random.default_rng(0).integers(0, 2, (50, 85))
    (root / "predicate-matrix-binary.txt").write_text("\n".join(" ".join(map(str, row)) for row in matrix) + "\n")
    (root / "trainclasses.txt").write_text("\n".join(c for c in AWA2_CLASSES if c not in AWA2_TEST) + "\n")
    (root / "testclasses.txt").write_text("\n".join(AWA2_TEST) + "\n")
    for c, name in enumerate(AWA2_CLASSES):
        for k in range(2):
            write_jpeg(str(root / "JPEGImages" / name / f"{name}_{10000 + k}.jpg"), c * 10 + k,
                       mode="L" if (c, k) == (0, 1) else "RGB")
    return root, matrix


def test_awa2_import(awa2_folder, tmp_path):
    root, matrix = awa2_folder
    builder = tfds.builder("awa2", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root.parent)))
    assert builder.info.metadata["attribute_names"] == [f"predicate{i}" for i in range(85)]
    assert builder.info.features["label"].names == AWA2_CLASSES
    ids = {}
    for split in ("train", "validation", "test"):
        source = builder.as_data_source(split)
        for i in range(len(source)):
            example = source[i]
            image_id = example["image_id"].decode()
            name = AWA2_CLASSES[example["label"]]
            assert image_id.rsplit("_", 1)[0] == name
            np.testing.assert_array_equal(example["attributes"], matrix[example["label"]].astype(bool))
            assert example["image"].shape == (10, 12, 3)  # the grayscale JPEG comes back as RGB
            ids[image_id] = split
    assert len(ids) == 100
    for image_id, split in ids.items():
        name = image_id.rsplit("_", 1)[0]
        expected = "test" if name in AWA2_TEST else ("validation" if is_validation(image_id) else "train")
        assert split == expected


def test_awa2_missing_file_names_it(awa2_folder, tmp_path):
    root, _ = awa2_folder
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("classes.txt", "predicates.txt", "trainclasses.txt", "testclasses.txt"):
        (broken / name).write_text((root / name).read_text())
    builder = tfds.builder("awa2", data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDataError, match="predicate-matrix-binary.txt") as err:
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(broken)))
    assert "cvml.ista.ac.at" in str(err.value)
    with pytest.raises(ManualDataError, match="manual folder"):
        tfds.builder("awa2", data_dir=str(tmp_path / "out2")).download_and_prepare(
            download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path / "does_not_exist")))


POLYVORE_ITEMS = {  # item_id: semantic category
    "101": "tops", "102": "bottoms", "103": "shoes", "104": "bags",
    "201": "tops", "202": "bottoms", "203": "jewellery",
    "301": "tops", "302": "shoes", "303": "bags", "304": "jewellery",
}
POLYVORE_SPLITS = {"train": [("o1", ["101", "102", "103", "104"]), ("o2", ["201", "202", "203", "103"])],
                   "valid": [("o3", ["301", "302"]), ("o5", ["101", "103"])],
                   "test": [("o4", ["303", "304", "301"]), ("o6", ["201", "302"])]}


@pytest.fixture(scope="module")
def polyvore_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("polyvore_download") / "polyvore_outfits"
    for i, item in enumerate(POLYVORE_ITEMS):
        write_jpeg(str(root / "images" / f"{item}.jpg"), i)
    metadata = {item: {"url_name": f"item {item}", "description": "", "categories": [], "title": "",
                       "related": [], "category_id": "1", "semantic_category": cat}
                for item, cat in POLYVORE_ITEMS.items()}
    (root / "polyvore_item_metadata.json").write_text(json.dumps(metadata))
    for folder in ("nondisjoint", "disjoint"):
        (root / folder).mkdir()
        for split, outfits in POLYVORE_SPLITS.items():
            data = [{"set_id": set_id, "items": [{"item_id": item, "index": k + 1} for k, item in enumerate(items)]}
                    for set_id, items in outfits]
            (root / folder / f"{split}.json").write_text(json.dumps(data))
    names = reference_files.polyvore_attribute_names()
    annotations = {"101": [0, 5], "303": [204]}
    (root / "polyvore_attributes.json").write_text(json.dumps({"attributes": names, "annotations": annotations}))
    return root, names


def test_polyvore_import(polyvore_folder, tmp_path):
    root, names = polyvore_folder
    builder = tfds.builder("polyvore_outfits/nondisjoint", data_dir=str(tmp_path))
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))
    assert builder.info.metadata["attribute_names"] == names and len(names) == 205
    conditions = [tuple(c) for c in builder.info.metadata["type_conditions"]]
    assert conditions == sorted({("bottoms", "tops"), ("shoes", "tops"), ("bags", "tops"), ("bottoms", "shoes"),
                                 ("bags", "bottoms"), ("bags", "shoes"), ("bottoms", "jewellery"),
                                 ("jewellery", "tops"), ("jewellery", "shoes")})
    train = builder.as_data_source("train")
    items = {train[i]["item_id"].decode(): train[i] for i in range(len(train))}
    assert sorted(items) == ["101", "102", "103", "104", "201", "202", "203"]
    assert [o.decode() for o in items["103"]["outfits"]] == ["o1", "o2"]  # shared by two outfits
    assert items["104"]["category"].decode() == "bags"
    assert np.flatnonzero(items["101"]["attributes"]).tolist() == [0, 5]
    assert not items["102"]["attributes"].any()
    test = builder.as_data_source("test")
    assert sorted(test[i]["item_id"].decode() for i in range(len(test))) == ["201", "301", "302", "303", "304"]
    assert np.flatnonzero([test[i]["attributes"] for i in range(len(test))
                           if test[i]["item_id"] == b"303"][0]).tolist() == [204]


def test_polyvore_type_conditions_of_compatible_pairs():
    outfits = outfit_items([{"set_id": s, "items": [{"item_id": i} for i in items]}
                            for s, items in POLYVORE_SPLITS["train"]])
    conditions = type_conditions(outfits, POLYVORE_ITEMS)
    found = compatible_pairs(outfits, POLYVORE_ITEMS, conditions)
    assert len(found) == 6 + 6
    for a, b, condition in found:
        assert conditions[condition] == tuple(sorted((POLYVORE_ITEMS[a], POLYVORE_ITEMS[b])))
    assert condition_index(conditions, "tops", "shoes") == condition_index(conditions, "shoes", "tops")
    with pytest.raises(ValueError, match="no type condition"):
        condition_index(conditions, "tops", "tops")
    assert condition_index(conditions, "tops", "tops", default=-1) == -1  # the general space, for evaluation pairs
    assert condition_index(conditions, "tops", "bottoms", default=-1) == conditions.index(("bottoms", "tops"))


def test_polyvore_missing_file_names_it(polyvore_folder, tmp_path):
    root, _ = polyvore_folder
    broken = tmp_path / "polyvore_outfits"
    os.makedirs(broken / "nondisjoint")
    (broken / "polyvore_item_metadata.json").write_text((root / "polyvore_item_metadata.json").read_text())
    builder = tfds.builder("polyvore_outfits/nondisjoint", data_dir=str(tmp_path / "out"))
    with pytest.raises(ManualDataError, match="polyvore_attributes.json"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


@pytest.mark.parametrize("name", ["awa2_test", "awa2_valid", "polyvore_outfits_test"])
def test_packaged_pair_lists_parse(name):
    parsed = reference_files.read_reference_pairs(name)
    assert len(parsed) == 20000 and sum(p.label for p in parsed) == 10000
    assert parsed == reference_files.read_pair_file(f"reference:{name}")
    assert parsed == reference_files.read_pair_file(str(reference_files.reference_path(name)))  # as a user file
    if name.startswith("awa2"):  # the AwA2 lists pair images of the ten unseen (test) classes
        assert {p.query.rsplit("_", 1)[0] for p in parsed} == set(AWA2_TEST)
        assert {p.reference.rsplit("_", 1)[0] for p in parsed} == set(AWA2_TEST)
        for p in parsed:
            assert (p.query.rsplit("_", 1)[0] == p.reference.rsplit("_", 1)[0]) == bool(p.label)
    else:
        assert all(p.query.isdigit() and p.reference.isdigit() for p in parsed)  # Polyvore item ids


def test_packaged_polyvore_attribute_names():
    names = reference_files.polyvore_attribute_names()
    assert len(names) == 205 == len(set(names))
    assert all(name and not any(c.isspace() for c in name) for name in names)


@pytest.mark.parametrize("spec,error,message", [
    ("reference:awa2_tset", ValueError, "test_pairs 'reference:awa2_tset': unknown packaged pair list"),
    ("/nonexistent/pairs.txt", FileNotFoundError, "test_pairs '/nonexistent/pairs.txt' does not exist"),
    (".", FileNotFoundError, "is a folder"),
])
def test_bad_pair_file_arguments_are_named(spec, error, message):
    with pytest.raises(error, match=message):
        reference_files.check_pair_file(spec, "test_pairs")
    with pytest.raises(error, match=message):
        reference_files.read_pair_file(spec, "test_pairs")
    with pytest.raises(ValueError, match="unknown reference file"):
        reference_files.reference_path("awa2")


def test_training_data_from_the_real_layouts(awa2_folder, polyvore_folder, tmp_path):
    """The awa2 and polyvore training paths run a few steps on the fixture folders."""
    import jax
    import jax.numpy as jnp

    from simexplain_jax.data.pipeline import make_loader
    from simexplain_jax.models import EmbeddingNet, SmallCNN, TypeAwareEmbedding
    from simexplain_jax.train import similarity as sim
    from simexplain_jax.data.datasets import attribute_names, similarity_data

    names = {"awa2": [f"predicate{i}" for i in range(85)],
             "polyvore_outfits/nondisjoint": reference_files.polyvore_attribute_names()}
    for dataset, manual in (("awa2", awa2_folder[0]), ("polyvore_outfits/nondisjoint", polyvore_folder[0])):
        data = similarity_data(dataset, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual), num_eval_pairs=4)
        assert attribute_names(dataset, data_dir=str(tmp_path / "tfds"), manual_dir=str(manual)) == names[dataset]
        assert data.image_size == 112 and data.validation.images.shape[1:] == (112, 112, 3)
        if data.batch_kind == "outfits":
            assert data.num_conditions == 9 and len(data.train_source) == 2 * 12
            model = TypeAwareEmbedding(SmallCNN(features=(4, 8, 8)), num_conditions=data.num_conditions, dim=4)
        else:
            model = EmbeddingNet(SmallCNN(features=(4, 8, 8)), dim=4)
        optimizer = sim.make_optimizer(1e-3)
        state = sim.create_train_state(model, optimizer, jax.random.key(0), jnp.zeros((1, 112, 112, 3)))
        step = sim.make_train_step(model, batch_kind=data.batch_kind)
        batches = iter(make_loader(data.train_source, batch_size=4, preprocess=data.preprocess, num_epochs=None,
                                   drop_remainder=True, shard_index=0, shard_count=1))
        for _ in range(2):
            state, metrics = step(state, next(batches))
            assert np.isfinite(float(metrics["loss"]))
        auc = sim.evaluate_pairs(model, state.variables(), data.test)
        assert 0.0 <= auc <= 1.0


def test_importers_refuse_names_that_leave_the_dataset_folder(tmp_path):
    """A split file naming item ``../../secret/x`` made the importer read a file outside the dataset."""
    from simexplain_jax.data.tfds_awa2 import read_awa2

    root = tmp_path / "polyvore_outfits"
    (root / "images").mkdir(parents=True)
    write_jpeg(str(tmp_path / "secret" / "x.jpg"), 0)  # exists: must still not be read
    evil = "../../secret/x"
    items = {"101": "tops", evil: "bottoms"}
    (root / "polyvore_item_metadata.json").write_text(json.dumps({k: {"semantic_category": v} for k, v in items.items()}))
    (root / "polyvore_attributes.json").write_text(json.dumps({"attributes": reference_files.polyvore_attribute_names(),
                                                               "annotations": {}}))
    (root / "nondisjoint").mkdir()
    for name in ("train", "valid", "test"):
        (root / "nondisjoint" / f"{name}.json").write_text(json.dumps(
            [{"set_id": "o1", "items": [{"item_id": "101", "index": 1}, {"item_id": evil, "index": 2}]}]))
    builder = tfds.builder("polyvore_outfits/nondisjoint", data_dir=str(tmp_path / "out"))
    with pytest.raises(ValueError, match=r"item id of nondisjoint/train.json '\.\./\.\./secret/x.jpg' leaves its folder"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root)))

    awa2 = awa2_annotations(tmp_path / "awa2", ["cat", "../../secret"], ["black"], "1\n0\n")
    with pytest.raises(ValueError, match=r"class name of trainclasses.txt/testclasses.txt '\.\./\.\./secret' leaves"):
        read_awa2(str(awa2))


def awa2_annotations(root, classes, predicates, matrix_text):
    """AwA2's annotation files (no images): the first class for training, the second for testing."""
    root.mkdir()
    (root / "classes.txt").write_text("".join(f"{i + 1}\t{c}\n" for i, c in enumerate(classes)))
    (root / "predicates.txt").write_text("".join(f"{i + 1}\t{p}\n" for i, p in enumerate(predicates)))
    (root / "predicate-matrix-binary.txt").write_text(matrix_text)
    (root / "trainclasses.txt").write_text(f"{classes[0]}\n")
    (root / "testclasses.txt").write_text(f"{classes[1]}\n")
    return root


def test_importer_values_and_images_are_checked_naming_the_file(tmp_path):
    """Out-of-range annotation values and an image bomb inside a dataset folder were not named."""
    from PIL import Image

    from simexplain_jax.data._manual import rgb_image_feature
    from simexplain_jax.data.tfds_awa2 import read_awa2

    awa2 = awa2_annotations(tmp_path / "awa2", ["cat", "dog"], ["black", "white"], "1 0\n0 7\n")
    with pytest.raises(ValueError, match=r"predicate-matrix-binary.txt:2: entries must be 0 or 1, got '7'"):
        read_awa2(str(awa2))
    (awa2 / "predicate-matrix-binary.txt").write_text("1 0\n0\n")
    with pytest.raises(ValueError, match=r"predicate-matrix-binary.txt:2: 1 entries, the lines before have 2"):
        read_awa2(str(awa2))
    (awa2 / "predicate-matrix-binary.txt").write_text("1 0\n0 1\n")
    assert read_awa2(str(awa2))["matrix"].tolist() == [[True, False], [False, True]]
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20000, 20000)).save(bomb)  # 400 Mpx, a small file: PIL refuses to decode it
    with pytest.raises(ValueError, match=f"unreadable image {bomb}: DecompressionBombError"):
        rgb_image_feature(str(bomb))


def test_polyvore_annotation_values_are_checked_naming_the_file(tmp_path):
    """Out-of-range attribute indices, items without a category and malformed outfits were a bare
    IndexError / KeyError (or, for negative indices, silently wrong labels)."""
    from simexplain_jax.data.tfds_polyvore import attribute_annotations, item_categories, outfit_items, read_json

    names = reference_files.polyvore_attribute_names()
    assert attribute_annotations({"attributes": names, "annotations": {"7": [0, 204]}}) == (names, {"7": [0, 204]})
    for bad in ([205], [-1], ["3"], [True], 4):
        with pytest.raises(ValueError, match=r"polyvore_attributes.json: item 7 has attribute indices .*\[0, 205\)"):
            attribute_annotations({"attributes": names, "annotations": {"7": bad}})
    with pytest.raises(ValueError, match="polyvore_attributes.json lists 3 attributes, expected 205"):
        attribute_annotations({"attributes": names[:3], "annotations": {}})
    with pytest.raises(ValueError, match="polyvore_attributes.json: expected an object with 'attributes'"):
        attribute_annotations({"annotations": {}})
    with pytest.raises(ValueError, match="polyvore_item_metadata.json: item 12 has no 'semantic_category'"):
        item_categories({"11": {"semantic_category": "tops"}, "12": {"title": "x"}})
    with pytest.raises(ValueError, match="nondisjoint/train.json: outfit 1 needs a 'set_id'"):
        outfit_items([{"set_id": "a", "items": [{"item_id": 1}]}, {"items": []}], "nondisjoint/train.json")
    (tmp_path / "bad.json").write_text('{"a": 1,\n "b": }')
    with pytest.raises(ValueError, match=r"bad.json:2: not valid JSON"):
        read_json(str(tmp_path / "bad.json"))
