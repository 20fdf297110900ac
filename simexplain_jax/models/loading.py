"""Trained models loaded from their checkpoint folders, for inference: the model is rebuilt from
the folder's ``config.json`` and only its variables are read (no optimizer is built)."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from simexplain_jax.checkpoint import Checkpointer
from simexplain_jax.models.attributes import AttributePredictor
from simexplain_jax.models.embedding import embed_fn
from simexplain_jax.models.factory import backbone, similarity_model
from simexplain_jax.models.user import SimilarityModel
from simexplain_jax.trained_config import read_config


def restore_variables(checkpoint_dir: str, model: nn.Module, image_size: int, which: str = "best") -> dict:
    """The variables of ``model`` from a checkpoint folder.

    Only their shapes are computed from the model (no initialisation, no optimizer) and only
    they are read; the folder is opened for reading (``Checkpointer.open``).

    Args:
      checkpoint_dir: a ``Checkpointer`` folder.
      model: the model the variables belong to.
      image_size: the side of the square RGB images the model takes.
      which: ``"best"`` or ``"last"``.

    Returns:
      ``{"params", "batch_stats"}``.
    """
    target = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, image_size, image_size, 3)))
    checkpointer = Checkpointer.open(checkpoint_dir)
    try:
        return checkpointer.restore_variables(target, which=which)
    finally:
        checkpointer.close()


def load_trained(checkpoint_dir: str, which: str = "best"):
    """A similarity model trained by ``experiments.train_similarity``.

    Args:
      checkpoint_dir: its checkpoint folder (``<workdir>/checkpoints``).
      which: ``"best"`` or ``"last"``.

    Returns:
      ``(model, variables, config)``.
    """
    config = read_config(checkpoint_dir)
    model = similarity_model(config, config.get("num_conditions", 0))
    return model, restore_variables(checkpoint_dir, model, config["image_size"], which), config


def load_similarity_model(checkpoint_dir: str, which: str = "best"):
    """A similarity model trained by ``experiments.train_similarity``, as a ``SimilarityModel``
    (with its module and variables, and ``config.json`` as the third value).

    Args:
      checkpoint_dir: its checkpoint folder (``<workdir>/checkpoints``).
      which: ``"best"`` or ``"last"``.

    Returns:
      ``(SimilarityModel, config)``.
    """
    model, variables, config = load_trained(checkpoint_dir, which)
    return SimilarityModel(embed_fn(model, variables), config["image_size"], name=f"trained {checkpoint_dir}",
                           module=model, variables=variables), config


def load_attribute_predictor(checkpoint_dir: str, which: str = "best"):
    """An attribute predictor trained by ``experiments.train_attributes``.

    Args:
      checkpoint_dir: its checkpoint folder.
      which: ``"best"`` or ``"last"``.

    Returns:
      ``(model, variables, config)``.
    """
    config = read_config(checkpoint_dir)
    model = AttributePredictor(backbone(config["model"], width=config["width"], stages=config["stages"]),
                               config["num_attributes"])
    return model, restore_variables(checkpoint_dir, model, config["image_size"], which), config
