"""Second-order explanations (which cell of the query matches which cell of the reference) on the
shapes benchmark's positive test pairs, scored against the key objects of both images.

python -m experiments.correspondence_eval --config=experiments/configs/correspondence_shapes.py[:runlocal] --workdir=DIR

The similarity model comes from ``similarity_workdir`` (default ``<workdir>/similarity``); when it
has no results.json, this experiment trains it first with ``similarity_config``. ``shortcut``: the
shapes variant whose training split ties a filler to two classes.
"""

import ml_collections

from experiments.configs.common import parse_arg

# rows: a pair method (options under methods.<row>), "rise" (first order only) or "random" (the floor)
ROWS = ("pooled_pair", "rise_pair_250", "rise_pair_500", "rise_pair_500_orthogonal", "rise_pair_1000",
        "integrated_cross_jacobian", "rise", "random")


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, shortcut=False)
    config = ml_collections.ConfigDict()
    config.similarity_config = "experiments/configs/similarity_shapes.py" + (":shortcut" if args.shortcut else "")
    config.similarity_workdir = ""
    config.data_dir = ""  # TFDS data folder; empty: <workdir>/tfds
    config.split = "test"
    config.num_pairs = 200  # sampled balanced pairs; the positive half is explained
    config.seed = 0
    config.rows = ROWS
    config.grid_size = 8  # cells per side of the black-box correspondences (the demo model's feature grid at 64 px)
    config.background = 127  # first-order insertion/deletion background (uint8 grey), normalised like the images
    # second order: "unrelated" fills each image from another pair's (the empty pair then has an unrelated pair's
    # similarity); "background" uses the grey for both, which makes the empty pair identical (similarity 1)
    config.second_order_substrate = "unrelated"
    config.insertion_steps = 33
    config.top_k = 3
    config.pair_batch = 10  # pairs explained per call (one compiled program); seconds per pair exclude the first call
    config.methods = ml_collections.ConfigDict(dict(
        pooled_pair=dict(method="pooled_pair"),
        rise_pair_250=dict(method="rise_pair", num_masks=250, sampler="iid"),
        rise_pair_500=dict(method="rise_pair", num_masks=500, sampler="iid"),
        rise_pair_500_orthogonal=dict(method="rise_pair", num_masks=500, sampler="orthogonal"),
        rise_pair_1000=dict(method="rise_pair", num_masks=1000, sampler="iid"),
        integrated_cross_jacobian=dict(method="integrated_cross_jacobian", num_steps=8),  # 8 x 64 VJPs per image
        rise=dict(method="rise", num_masks=2000, sampler="iid"),  # RISE as published (the default: orthogonal)
        random=dict(method="random"),
    ))
    if args.runlocal:
        config.similarity_config = "experiments/configs/similarity_shapes.py:runlocal"
        config.num_pairs = 8
        config.pair_batch = 2
        config.insertion_steps = 9
        config.grid_size = 4
        config.rows = ("pooled_pair", "rise_pair_250", "integrated_cross_jacobian", "rise", "random")
        config.methods.rise_pair_250.num_masks = 32
        config.methods.integrated_cross_jacobian.num_steps = 2
        config.methods.rise.num_masks = 64
    return config
