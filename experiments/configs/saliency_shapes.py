"""The paper's Table 1 on the shapes benchmark, plus localisation against the key object.

python -m experiments.saliency_eval --config=experiments/configs/saliency_shapes.py[:runlocal] --workdir=DIR

The similarity model comes from ``similarity_workdir`` (default ``<workdir>/similarity``); when it
has no results.json, this experiment trains it first with ``similarity_config``.
"""

import ml_collections

from experiments.configs.common import parse_arg, similarity_model

ROWS = (("rise", "fixed"), ("rise", "variable"), ("sliding_window", "fixed"), ("sliding_window", "variable"),
        ("lime", "fixed"), ("lime", "variable"), ("perturbation", "fixed"), ("perturbation", "variable"),
        ("gradient", "fixed"), ("integrated_gradients", "fixed"), ("random", "fixed"))


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False)
    config = ml_collections.ConfigDict()
    config.similarity_config = "experiments/configs/similarity_shapes.py"
    config.similarity_workdir = ""
    # or a model of your own, not trained here: factory="package.module:factory" or torchvision_weights=FILE
    config.similarity_model = similarity_model()
    config.data_dir = ""  # TFDS data folder; empty: <workdir>/tfds
    config.manual_dir = ""
    config.split = "test"
    config.num_pairs = 100  # half positive, half negative (as the paper)
    config.test_pairs = ""  # a pair file of image ids (or "reference:NAME", packaged) instead of sampled pairs
    config.seed = 0
    # METHOD:REFERENCE rows; override e.g. --config.rows=rise:fixed --config.rows=random:fixed
    config.rows = tuple(f"{m}:{r}" for m, r in ROWS)
    config.background = 127  # insertion/deletion background (uint8 grey), normalised like the images
    config.insertion_steps = 101
    config.gallery_pairs = 4
    config.replace_stale_cache = False  # True: a map cache made with another model/key/options is moved aside, not an error
    config.mesh_devices = 0  # local devices for RISE / sliding window / LIME / insertion-deletion: 0 = all
    config.query_batch = 0  # queries per device per step of explain_pairs (0: each method's default); a kill loses one step
    config.mesh_masks = 1  # of those, devices on the "masks" axis: RISE splits each query's masks over them
    # multi-host: "host:port" with num_processes and process_id per host, or "auto" where JAX detects the cluster
    config.distributed = ml_collections.ConfigDict(dict(coordinator_address="", num_processes=1, process_id=0))
    config.methods = ml_collections.ConfigDict(dict(
        # sampler: sx.masks.SAMPLERS ("iid": RISE as published, for the paper's table; the library's
        # default is "orthogonal"); tolerance: stop once the map's standard error is below this
        # fraction of its range (num_masks is then the maximum), e.g. --config.methods.rise.tolerance=0.02
        rise=dict(num_masks=2000, grid_size=8, p=0.5, batch_size=250, sampler="iid",
                  tolerance=ml_collections.config_dict.placeholder(float)),
        rise_variable=dict(num_masks=2000, grid_size=8, p=0.5, num_reference_masks=30, batch_size=250, sampler="iid",
                           tolerance=ml_collections.config_dict.placeholder(float)),
        sliding_window=dict(window=16, stride=3, padding=4),
        sliding_window_variable=dict(window=16, stride=3, padding=4, reference_window=16, reference_stride=8),
        lime=dict(num_samples=1000, num_segments=40),
        lime_variable=dict(num_samples=1000, num_segments=40, num_reference_masks=30),
        perturbation=dict(num_steps=500),
        perturbation_variable=dict(num_steps=500),
        gradient=dict(),
        integrated_gradients=dict(num_steps=32),
        random=dict(),
    ))
    if args.runlocal:
        config.similarity_config = "experiments/configs/similarity_shapes.py:runlocal"
        config.num_pairs = 8
        config.insertion_steps = 21
        config.gallery_pairs = 2
        m = config.methods
        m.rise.num_masks = m.rise_variable.num_masks = 300
        m.rise_variable.num_reference_masks = 4
        m.sliding_window.update(window=8, stride=4, padding=2)
        m.sliding_window_variable.update(window=8, stride=4, padding=2, reference_window=16, reference_stride=16)
        m.lime.update(num_samples=150, num_segments=16)
        m.lime_variable.update(num_samples=150, num_segments=16, num_reference_masks=4)
        m.perturbation.num_steps = m.perturbation_variable.num_steps = 40
        m.integrated_gradients.num_steps = 8
    return config
