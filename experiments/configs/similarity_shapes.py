"""Triplet training of the similarity model on the shapes benchmark.

python -m experiments.train_similarity --config=experiments/configs/similarity_shapes.py[:runlocal] --workdir=DIR
"""

import ml_collections

from experiments.configs.common import parse_arg


def base_config():
    config = ml_collections.ConfigDict()
    config.dataset = "shapes/64px"
    config.data_dir = ""  # TFDS data folder; empty: <workdir>/tfds
    config.manual_dir = ""  # the downloaded folder, for awa2 and polyvore_outfits
    config.test_pairs = ""  # test-set pair file of image ids, or "reference:NAME" (packaged); empty: sampled
    config.model = "small_cnn"
    config.width = 64
    config.stages = 3
    config.embedding_dim = 64
    config.init_weights = ""  # a torchvision ResNet state dict (.pth or .npz), optional
    config.batch_size = 128
    config.num_steps = 1500
    config.learning_rate = 1e-3
    config.lr_decay_rate = 0.985
    config.lr_decay_steps = 0  # 0: one epoch of the training source
    config.margin = 0.2
    config.mining = "semi_hard"
    config.eval_every = 250
    config.patience = 0  # > 0: stop once that many evaluations in a row have not improved the validation AUC
    config.checkpoint_every = 500
    config.num_eval_pairs = 2000
    config.seed = 0
    config.mesh_devices = 1  # >1: data-parallel steps, the batch split over that many local devices
    config.param_sharding = "replicated"  # or "fully_sharded": parameters and Adam moments split over the mesh
    return config


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, shortcut=False)
    config = base_config()
    if args.runlocal:
        config.dataset = "shapes/32px"
        config.width = 32
        # the validation AUC is flat after step 200 (a 600-step run: 0.951, 0.954, 0.907 at steps 200,
        # 400, 600 from the command line; 0.952, 0.951, 0.941 in the test suite's process, where the
        # best checkpoint, the one later stages load, is step 200's either way)
        config.num_steps = 200
        config.eval_every = 100
        config.checkpoint_every = 100
        config.num_eval_pairs = 1000
    if args.shortcut:  # the training split ties a filler to two classes (shapes.SHORTCUTS)
        config.dataset += "_shortcut"
    return config
