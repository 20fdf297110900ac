"""The main job (`make demo`). This version: an untrained small CNN on shapes benchmark pairs.

Usage: python -m experiments.sane --config=experiments/configs/sane_shapes.py[:runlocal] --workdir=DIR
"""

import ml_collections


def get_config(arg=None):
    args = set((arg or "").split(",")) - {""}
    config = ml_collections.ConfigDict()
    config.seed = 0
    config.data_dir = ""  # TFDS data folder; empty: <workdir>/tfds
    config.image_size = 64
    config.num_pairs = 4
    config.model = "small_cnn"
    config.embedding_dim = 64
    config.rise = ml_collections.ConfigDict(dict(num_masks=2000, grid_size=8, p=0.5, batch_size=250))
    config.sliding_window = ml_collections.ConfigDict(dict(window=16, stride=2, padding=4, batch_size=250))
    config.insertion_deletion = ml_collections.ConfigDict(dict(num_steps=101, background=127, batch_size=202))
    if "runlocal" in args:
        config.image_size = 32
        config.num_pairs = 2
        config.rise.num_masks = 200
        config.sliding_window.update(window=8, stride=4, padding=2)
        config.insertion_deletion.num_steps = 21
    unknown = args - {"runlocal"}
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: runlocal")
    return config
