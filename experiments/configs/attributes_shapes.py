"""Attribute predictor on the shapes benchmark: lambda = 0 against lambda > 0 (Eq. 2), same seed.

python -m experiments.train_attributes --config=experiments/configs/attributes_shapes.py[:runlocal] --workdir=DIR
"""

import ml_collections

from experiments.configs.common import parse_arg, similarity_model


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, shortcut=False)
    config = ml_collections.ConfigDict()
    config.similarity_config = "experiments/configs/similarity_shapes.py"
    config.similarity_workdir = ""  # empty: <workdir>/similarity (trained there when absent)
    config.similarity_model = similarity_model()  # or a model of your own (factory or torchvision_weights)
    config.data_dir = ""
    config.manual_dir = ""
    config.seed = 0
    config.model = "small_cnn"  # the predictor's backbone (the paper: resnet50)
    config.width = 64
    config.stages = 4
    config.classification = "sigmoid_bce"
    config.saliency_normalization = "zscore"
    config.lambdas = (0.0, 0.005, 0.1)  # one run each; override e.g. --config.lambdas="(0.0, 0.1)"
    config.batch_size = 128
    config.num_epochs = 10
    config.patience = 0  # > 0: stop once that many epochs in a row have not improved the validation mAP
    config.learning_rate = 5e-4
    config.lr_decay_rate = 0.985
    config.saliency_method = "rise"
    config.saliency = ml_collections.ConfigDict(dict(num_masks=500, grid_size=8, p=0.5, batch_size=250, sampler="iid",
                                                     tolerance=ml_collections.config_dict.placeholder(float)))
    config.max_references = 20
    config.cache_images = 1000  # training images with cached saliency (the first ones of the split)
    config.shard_size = 250
    config.mesh_devices = 1  # >1: data-parallel steps, the batch split over that many local devices
    config.param_sharding = "replicated"  # or "fully_sharded": parameters and Adam moments split over the mesh
    if args.runlocal:
        config.similarity_config = "experiments/configs/similarity_shapes.py:runlocal"
        config.width = 16
        config.lambdas = (0.0, 0.1)
        config.num_epochs = 3
        config.batch_size = 64
        config.saliency.num_masks = 100
        config.max_references = 4
        config.cache_images = 200
        config.shard_size = 100
    if args.shortcut:  # the similarity model trained on the shortcut variant
        config.similarity_config += (",shortcut" if ":" in config.similarity_config else ":shortcut")
    return config
