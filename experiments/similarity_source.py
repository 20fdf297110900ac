"""The similarity model an experiment explains: the one ``train_similarity`` trained
(``similarity_workdir``; trained there first when it has no results), or your own, named by the
config group ``similarity_model`` and used as it is, with no training:

- ``similarity_model.factory="package.module:factory"``: a function of no arguments returning a
  ``simexplain_jax.models.SimilarityModel`` (``from_linen``, ``from_nnx``, ``from_function``);
- ``similarity_model.torchvision_weights=FILE`` with ``arch`` and ``stages``: an ImageNet-pretrained
  torchvision ResNet (``.pth``, ``.safetensors`` or ``.npz``), fed the dataset's images at their size.

``similarity_model.dataset`` names the dataset your model is evaluated on (empty: the dataset of
``similarity_config``). Your model gets the dataset's images renormalised and resized to what it
declares (``SimilarityModel.embed_fn_for``). A stage records which model it used in its
``results.json`` (``similarity_workdir`` or ``similarity_model``), and the stages after it read
that record, so every stage of a pipeline explains the same model.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable, Optional

from experiments import train_similarity
from experiments.stages import ensure_stage, load_config
from simexplain_jax.models import check_embeddings, condition_embed_fn, embed_fn, load_factory, torchvision_resnet
from simexplain_jax.models.loading import load_trained
from simexplain_jax.models.user import SimilarityModel
from simexplain_jax.saliency.cache import fingerprint

FIELD = "similarity_model"


def given(config) -> bool:
    """Whether ``config`` names a model of your own (``similarity_model.factory`` or ``.torchvision_weights``)."""
    group = config.get(FIELD)
    return bool(group and (group.factory or group.torchvision_weights))


@dataclasses.dataclass(frozen=True)
class StageModel:
    """The similarity model as a stage uses it.

    Attributes:
      dataset: the dataset it is evaluated on.
      embed: ``images [B, S, S, 3]`` (the dataset's, ImageNet-normalised) ``-> [B, D]``.
      fingerprint: what the concept directions are keyed by (the model's own ``embed_fn``, as
        ``experiments.explain`` loads it).
      cache_id: what saliency caches and row records are keyed by.
      record: what a stage's results hold to name the model (``similarity_workdir`` or
        ``similarity_model``).
      module: the Flax module, with ``variables``, where the images need no adapting (the exact
        pooled correspondences use it); None otherwise.
      variables: its variables.
      conditioned: whether ``embed_for`` takes the type-aware conditions (a trained model: those of
        Polyvore's type-aware embedding).
    """

    dataset: str
    embed: Callable
    fingerprint: str
    cache_id: str
    record: dict
    module: Any = None
    variables: Any = None
    conditioned: bool = False

    def embed_for(self, condition: int) -> Callable:
        """The embedding of one type-aware condition (``condition < 0``: unconditioned); a model of
        your own has no conditions and is the same for every one."""
        if condition >= 0 and self.conditioned:
            return condition_embed_fn(self.module, self.variables, int(condition))
        return self.embed


def prepare(config, workdir: str, data_dir: str) -> tuple[str, dict]:
    """``(dataset, record)`` of the model ``config`` names. The trained model is trained first when its
    folder has no results (``ensure_stage``); a model of your own is not loaded yet."""
    if given(config):
        group = config[FIELD]
        dataset = group.dataset or load_config(config.similarity_config).dataset
        return dataset, {FIELD: dict(group.to_dict(), dataset=dataset)}
    sim_dir = ensure_stage(train_similarity.run, config.similarity_config,
                           config.similarity_workdir or os.path.join(workdir, "similarity"),
                           {"data_dir": data_dir, "manual_dir": config.manual_dir},
                           given=bool(config.similarity_workdir))
    with open(os.path.join(sim_dir, "checkpoints", "config.json"), encoding="utf-8") as f:
        return json.load(f)["dataset"], {"similarity_workdir": sim_dir}


def own_model(group: dict, image_size: Optional[int] = None) -> SimilarityModel:
    """The ``SimilarityModel`` of a ``similarity_model`` group (checked: ``[B, D]`` finite floats)."""
    if group["factory"]:
        model = load_factory(group["factory"])
    else:
        model = torchvision_resnet(group["torchvision_weights"], arch=group["arch"], stages=group["stages"],
                                   image_size=image_size or 224)
    check_embeddings(model)
    return model


def load(record: dict, image_size: int) -> StageModel:
    """The ``StageModel`` of a ``record`` (from ``prepare`` or an earlier stage's results), for the
    dataset's images of side ``image_size``."""
    if FIELD in record:
        group = record[FIELD]
        model = own_model(group, image_size)
        exact = model.same_input(image_size)
        return StageModel(group["dataset"], model.embed_fn_for(image_size), fingerprint(model.embed_fn),
                          fingerprint(model.embed_fn_for(image_size)), {FIELD: group},
                          module=model.module if exact else None, variables=model.variables if exact else None)
    sim_dir = record["similarity_workdir"]
    model, variables, sim_config = load_trained(os.path.join(sim_dir, "checkpoints"))
    embed = embed_fn(model, variables)
    # the saliency caches of a trained model were always keyed by its variables: kept, so they stay valid
    return StageModel(sim_config["dataset"], embed, fingerprint(embed), fingerprint(variables),
                      {"similarity_workdir": sim_dir}, module=model, variables=variables, conditioned=True)
