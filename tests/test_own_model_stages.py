"""The experiments with a similarity model of your own (the ``similarity_model`` config group):
saliency_eval with a factory, the attribute stages with torchvision-layout weights, sane's plan,
the config checks, and the rule that keeps stages finished before the group existed reusable."""

import json
import os

import numpy as np
import pytest

from conftest import SALIENCY, stage_config
from experiments import explain_attributes, saliency_eval, sane, train_attributes, validation
from experiments.stages import STAGE_RECORD, ensure_stage
from test_models import torchvision_state_dict

ATTRIBUTES = "experiments/configs/attributes_shapes.py:runlocal"
EXPLAIN = "experiments/configs/explain_attributes_shapes.py:runlocal"

MODELS = '''
import jax.numpy as jnp
import numpy as np

from simexplain_jax.models import from_function

WEIGHTS = np.random.default_rng(0).normal(size=(6 * 6 * 3, 16)).astype(np.float32)


def patch_embed(w, images):
    b, s = images.shape[0], images.shape[1]
    return jnp.tanh(images.reshape(b, s // 4, 4, s // 4, 4, 3).mean(axis=(2, 4)).reshape(b, -1) @ w)


def patch_model():
    return from_function(patch_embed, WEIGHTS, image_size=24, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                         name="patch model")
'''


@pytest.fixture
def factory(tmp_path, monkeypatch):
    (tmp_path / "my_stage_models.py").write_text(MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_stage_models:patch_model"


@pytest.fixture(scope="module")
def resnet_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "resnet18.npz"
    np.savez(path, **torchvision_state_dict("basic", (2, 2, 2, 2), width=64, num_classes=1000))
    return str(path)


def test_saliency_eval_explains_a_factory_model_without_training_one(shapes32_dir, factory, tmp_path):
    import my_stage_models

    from simexplain_jax.imageops import normalize_images
    from simexplain_jax.saliency.cache import fingerprint

    workdir = tmp_path / "run"
    results = saliency_eval.run(stage_config(SALIENCY, data_dir=shapes32_dir, num_pairs=4, insertion_steps=11,
                                             rows=("rise:fixed", "random:fixed"), similarity_model={"factory": factory}),
                                str(workdir))
    assert not (workdir / "similarity").exists()  # nothing was trained
    assert "similarity_workdir" not in results and results["dataset"] == "shapes/32px"
    assert results["similarity_model"] == dict(factory=factory, torchvision_weights="", arch="resnet18", stages=4,
                                               dataset="shapes/32px")
    rise, random = results["rows"]
    assert np.isfinite(rise["insertion_auc"]) and rise["insertion_auc"] != random["insertion_auc"]
    # the maps are keyed by the model as the stage feeds it: the 32 px ImageNet-normalised images, adapted
    adapted = my_stage_models.patch_model().embed_fn_for(32)
    (meta,) = {json.load(open(os.path.join(root, name)))["model"] for root, _, names in os.walk(workdir / "cache")
               for name in names if name == "meta.json"}
    assert meta == fingerprint(adapted)
    # and the adapted embedding is the model on the images as it asks for them (checked in test_user_models)
    images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
    assert adapted(normalize_images(images)).shape == (2, 16)


def test_the_attribute_stages_explain_torchvision_weights(shapes32_dir, resnet_weights, tmp_path):
    from experiments.train_attributes import CONCEPTS_FILE
    from simexplain_jax.models import torchvision_resnet
    from simexplain_jax.saliency.cache import fingerprint

    own = {"torchvision_weights": resnet_weights, "arch": "resnet18", "stages": 2}
    attributes = train_attributes.run(stage_config(ATTRIBUTES, data_dir=shapes32_dir, similarity_model=own, num_epochs=1,
                                                   lambdas=(0.1,), cache_images=24, saliency={"num_masks": 40}),
                                      str(tmp_path / "attributes"))
    assert "similarity_workdir" not in attributes and not (tmp_path / "attributes" / "similarity").exists()
    # explain_attributes reads which model from the attribute stage's results
    # two of the concept fits (the others are the same code on other directions): one from labels, one from edits
    config = stage_config(EXPLAIN, data_dir=shapes32_dir, num_pairs=3, gallery_pairs=2, saliency={"num_masks": 40},
                          concept_methods=("pattern", "edits"), attributes_workdir=str(tmp_path / "attributes"))
    results = explain_attributes.run(config, str(tmp_path / "explain"))
    assert attributes["similarity_model"]["torchvision_weights"] == resnet_weights
    assert results["dataset"] == "shapes/32px" and len(results["rows"]) > 3
    # a torchvision ResNet at the dataset's size and normalisation is an EmbeddingNet as it is: exact correspondences
    assert results["correspondences"]["method"] == "pooled_pair"
    # its concept directions are those `explain --torchvision_weights` accepts: keyed by the same model
    model = torchvision_resnet(resnet_weights, arch="resnet18", stages=2, image_size=32)
    for run in attributes["runs"]:
        with open(os.path.join(run["checkpoint_dir"], CONCEPTS_FILE)) as f:
            assert json.load(f)["model"] == fingerprint(model.embed_fn)


def test_sane_with_a_model_of_your_own_has_no_similarity_stage(tmp_path, resnet_weights):
    config = stage_config("experiments/configs/sane_shapes.py:runlocal",
                          similarity_model={"torchvision_weights": resnet_weights, "stages": 3})
    plan = sane.stage_plan(config, str(tmp_path))
    assert list(plan) == ["saliency", "attributes", "explanations"]
    for name, (_, stage, _) in plan.items():
        assert stage.similarity_model.torchvision_weights == resnet_weights and stage.similarity_model.stages == 3
        assert stage.similarity_model.dataset == "shapes/32px"  # the similarity stage's dataset, as when trained
        assert not stage.get("similarity_workdir")
    # two models at once: refused before any stage runs, naming the field
    config.similarity_model.factory = "my_models:model"
    with pytest.raises(ValueError, match="similarity_model names two models"):
        sane.stage_plan(config, str(tmp_path))


@pytest.mark.parametrize("group, extra, message", [
    ({"factory": "a:b", "torchvision_weights": "w.pth"}, {}, "names two models"),
    ({"torchvision_weights": "w.pth", "arch": "resnet101"}, {}, "arch must be one of"),
    ({"torchvision_weights": "w.pth", "stages": 5}, {}, "stages must be an integer in 1..4"),
    ({"torchvision_weights": "/nonexistent/w.pth"}, {}, "does not exist"),
    ({"factory": "no_colon"}, {}, "package.module:factory"),
    ({"factory": "a:b"}, {"similarity_workdir": "/somewhere"}, "both name a similarity model"),
])
def test_a_bad_similarity_model_group_is_refused_naming_it(group, extra, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "w.pth").write_bytes(b"")
    config = stage_config(SALIENCY, similarity_model=group, **extra)
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        validation.check_saliency_config(config)


def test_a_stage_finished_before_the_group_existed_is_reused_unless_a_model_of_your_own_is_asked(tmp_path):
    runs = []

    def run(config, workdir):
        runs.append(workdir)
        os.makedirs(workdir, exist_ok=True)
        with open(os.path.join(workdir, "results.json"), "w") as f:
            json.dump({}, f)

    workdir = str(tmp_path / "saliency")
    ensure_stage(run, stage_config(SALIENCY), workdir)
    with open(os.path.join(workdir, STAGE_RECORD)) as f:
        record = json.load(f)
    del record["similarity_model"]  # as a run recorded before the field was added
    with open(os.path.join(workdir, STAGE_RECORD), "w") as f:
        json.dump(record, f)
    ensure_stage(run, stage_config(SALIENCY), workdir)  # the field at its default: the same run, reused
    assert runs == [workdir]
    with pytest.raises(ValueError, match=r"similarity_model.factory: '' -> 'a:b'"):
        ensure_stage(run, stage_config(SALIENCY, similarity_model={"factory": "a:b"}), workdir)
