"""Attribute explanations on the shapes benchmark, scored against ground truth and the
counterfactual oracle.

python -m experiments.explain_attributes --config=experiments/configs/explain_attributes_shapes.py[:runlocal] --workdir=DIR
"""

import ml_collections

from experiments.configs.common import parse_arg, similarity_model


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, shortcut=False)
    config = ml_collections.ConfigDict()
    config.attributes_config = "experiments/configs/attributes_shapes.py"
    config.attributes_workdir = ""  # empty: <workdir>/attributes (trained there when absent)
    config.similarity_workdir = ""  # passed to the attributes stage when it has to run
    config.similarity_model = similarity_model()  # the same, a model of your own
    config.data_dir = ""
    config.manual_dir = ""
    config.split = "test"
    config.num_pairs = 100  # positive pairs explained
    config.seed = 0
    config.run = "best"  # which lambda run: "best" (validation mAP) or a lambda value
    config.weights = (0.0, 0.25, 0.5, 0.75, 1.0)
    config.saliency_method = "rise"
    # RISE as published, as docs/attributes_shapes64.md measured it (the library's default sampler: orthogonal)
    config.saliency = ml_collections.ConfigDict(dict(num_masks=2000, grid_size=8, p=0.5, batch_size=250, sampler="iid"))
    # concept selector rows: each fit (sx.attributes.fit_concepts methods, and "edits": counterfactual re-renders of
    # training scenes) with each scorer it supports (sx.attributes.concept_relevance; "cells": cell_concept_relevance,
    # pooled models only); the first fit and scorer are the selector of the gallery, the report and `explain`
    # (pattern with removal at w = 0, the best map-free selector on validation pairs of the plain benchmark, is what
    # train_attributes saves for `explain`; docs/attributes_shapes64.md says why the mlp probe did not replace it)
    config.concept_methods = ("pattern", "ridge", "fastcav", "edits", "mlp")
    config.concept_scorers = ("removal", "product", "leace", "shift", "cells", "gradient")
    config.cell_fraction = 0.1  # "cells": the share of the most corresponding cell pairs that earn credit
    config.edit_scenes = 500  # "edits": training scenes re-rendered (one edit per attribute they carry)
    config.concept_ridge = 1e-2  # the concept probe's ridge penalty per example
    config.concept_split = "train"  # where the concept probe is fitted ("train" or "validation"; never test)
    config.presence_weight = 0.05  # the concept selector's soft presence term
    config.removal_fraction = 0.2  # activation-map region removed (the oracle on real data, a proxy on shapes)
    config.gallery_pairs = 6
    if args.runlocal:
        config.attributes_config = "experiments/configs/attributes_shapes.py:runlocal"
        config.num_pairs = 8
        config.saliency.num_masks = 200
        config.gallery_pairs = 3
        config.edit_scenes = 40
    if args.shortcut:  # the similarity model trained on the shortcut variant
        config.attributes_config += (",shortcut" if ":" in config.attributes_config else ":shortcut")
    return config
