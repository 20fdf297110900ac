"""Attribute explanations on the shapes benchmark, scored against ground truth and the
counterfactual oracle.

python -m experiments.explain_attributes --config=experiments/configs/explain_attributes_shapes.py[:runlocal] --workdir=DIR
"""

import ml_collections

from experiments.configs.common import parse_args


def get_config(arg=None):
    args = parse_args(arg)
    config = ml_collections.ConfigDict()
    config.attributes_config = "experiments/configs/attributes_shapes.py"
    config.attributes_workdir = ""  # empty: <workdir>/attributes (trained there when absent)
    config.similarity_workdir = ""  # passed to the attributes stage when it has to run
    config.data_dir = ""
    config.manual_dir = ""
    config.split = "test"
    config.num_pairs = 100  # positive pairs explained
    config.seed = 0
    config.run = "best"  # which lambda run: "best" (validation mAP) or a lambda value
    config.weights = "0,0.25,0.5,0.75,1"
    config.saliency_method = "rise"
    config.saliency = ml_collections.ConfigDict(dict(num_masks=2000, grid_size=8, p=0.5, batch_size=250))
    config.removal_fraction = 0.2  # real datasets: the activation-map region removed
    config.gallery_pairs = 6
    if "runlocal" in args:
        config.attributes_config = "experiments/configs/attributes_shapes.py:runlocal"
        config.num_pairs = 8
        config.saliency.num_masks = 200
        config.gallery_pairs = 3
    return config
