"""``experiments.explain`` with a model that was not trained here: an NNX model through ``--model``,
ImageNet-layout torchvision weights through ``--torchvision_weights`` (written here, no download),
and a model with the wrong output refused before anything runs. The command lines are parsed and
run in this process (``run_command_in_process``)."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from conftest import fresh_module, run_command_in_process
from test_models import torchvision_state_dict
from test_user_models import state_dict_tensors, write_torch_zip

NNX_MODELS = '''
import jax.numpy as jnp
from flax import nnx

from simexplain_jax.models import from_function, from_nnx


class Net(nnx.Module):
    def __init__(self, rngs):
        self.conv = nnx.Conv(3, 8, (3, 3), strides=2, rngs=rngs)
        self.head = nnx.Linear(8, 16, rngs=rngs)

    def __call__(self, images):
        return self.head(jnp.mean(nnx.relu(self.conv(images)), axis=(1, 2)))


def nnx_model():
    return from_nnx(Net(nnx.Rngs(0)), image_size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), name="my nnx net")


def scalar_model():
    return from_function(lambda images: jnp.mean(images, axis=(1, 2, 3)), image_size=24, name="scalar")
'''


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(folder / "a.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "b.jpg", format="JPEG")
    (folder / "my_models.py").write_text(NNX_MODELS)
    return folder


def test_explain_an_nnx_model_from_the_command_line(photos, tmp_path, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(photos))
    fresh_module(monkeypatch, "my_models")
    status = run_command_in_process("experiments.explain", "--model=my_models:nnx_model", f"--query={photos / 'a.png'}",
                                    f"--reference={photos / 'b.jpg'}", "--num_masks=40", "--json",
                                    f"--out={tmp_path / 'out'}")
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    refused = run_command_in_process("experiments.explain", "--model=my_models:scalar_model",
                                     f"--query={photos / 'a.png'}", f"--reference={photos / 'b.jpg'}",
                                     f"--out={tmp_path / 'refused'}")
    refused_err = capsys.readouterr().err
    (record,) = [json.loads(line) for line in out.splitlines()]
    assert -1.0 <= record["similarity"] <= 1.0 and record["correspondence_method"] == "rise_pair"
    assert len(record["correspondences"]) == 3 and record["attributes"] == []
    for y0, x0, y1, x1 in (c["query_box"] for c in record["correspondences"]):
        assert 0 <= y0 < y1 <= 24 and 0 <= x0 < x1 <= 24
    assert Image.open(record["overlay"]).size[0] > 0 and os.path.exists(record["correspondence_figure"])
    # the wrong output shape is refused in one line, before any output is written
    assert refused == 1
    assert refused_err.strip().splitlines()[-1].startswith("error: model scalar must return embeddings [B, D] of floats")
    assert len(refused_err.strip().splitlines()) == 1 and not (tmp_path / "refused").exists()


def test_explain_torchvision_weights_from_the_command_line(photos, tmp_path, monkeypatch, capsys):
    state = torchvision_state_dict("basic", (2, 2, 2, 2), width=64, num_classes=1000)
    write_torch_zip(tmp_path / "resnet18.pth", state_dict_tensors(state), monkeypatch, prefix="resnet18-f37072fd")
    status = run_command_in_process(
        "experiments.explain", f"--torchvision_weights={tmp_path / 'resnet18.pth'}", "--arch=resnet18", "--stages=3",
        "--image_size=64", f"--query={photos / 'a.png'}", f"--reference={photos / 'b.jpg'}", "--method=sliding_window",
        f"--out={tmp_path / 'out'}")
    out, err = capsys.readouterr()
    assert status == 0, err[-3000:]
    lines = [line for line in out.splitlines() if line.strip()]
    assert "a.png ~ b.jpg: similarity" in lines[0]
    assert "top correspondences (pooled_pair" in lines[1]  # exact: the pretrained ResNet is average-pooled
    assert (tmp_path / "out" / "pair_0000_correspondence.png").read_bytes()[:4] == b"\x89PNG"
    both = run_command_in_process("experiments.explain", f"--torchvision_weights={tmp_path / 'resnet18.pth'}",
                                  f"--checkpoint={tmp_path}", f"--query={photos / 'a.png'}",
                                  f"--reference={photos / 'b.jpg'}", f"--out={tmp_path / 'both'}")
    assert both == 1 and "give one similarity model" in capsys.readouterr().err
