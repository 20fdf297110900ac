"""The main job (`make demo`): from the shapes benchmark to explained matches and a report.

python -m experiments.sane --config=experiments/configs/sane_shapes.py[:runlocal|:full] --workdir=DIR

Each stage is an experiment module run into its own folder under the workdir and skipped when its
results.json exists; ``stages.<name>`` holds that stage's config overrides (kept small enough
that the whole demo runs in about 6 minutes on a 2-core CPU). ``full`` (`make demo-full`) drops
the overrides: every stage at its own config's full size, the protocol of the numbers in docs/.
"""

import ml_collections

from experiments.configs.common import parse_arg, similarity_model


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, full=False)
    if args.runlocal and args.full:
        raise ValueError("config arguments runlocal and full exclude each other")
    runlocal = args.runlocal
    suffix = ":runlocal" if runlocal else ""
    config = ml_collections.ConfigDict()
    config.data_dir = ""  # TFDS data folder; empty: <workdir>/tfds
    config.similarity_config = "experiments/configs/similarity_shapes.py" + suffix
    # a model of your own (factory="package.module:factory" or torchvision_weights=FILE): no similarity stage
    config.similarity_model = similarity_model()
    config.saliency_config = "experiments/configs/saliency_shapes.py" + suffix
    config.attributes_config = "experiments/configs/attributes_shapes.py" + suffix
    config.explain_config = "experiments/configs/explain_attributes_shapes.py" + suffix
    config.stages = ml_collections.ConfigDict()
    if args.full:  # each stage's own config as it is (the protocol of docs/)
        config.stages.similarity, config.stages.saliency, config.stages.attributes = {}, {}, {}
        config.stages.explanations = {}
    elif runlocal:
        config.stages.similarity = {}
        config.stages.saliency = {
            "rows": ("rise:fixed", "rise:variable", "sliding_window:fixed", "lime:fixed", "random:fixed"),
            "num_pairs": 6}
        config.stages.attributes = {}
        config.stages.explanations = {}
    else:
        # both training stages stop once two evaluations in a row bring no gain on validation
        config.stages.similarity = {"num_steps": 1000, "patience": 2}
        # RISE with the orthogonal sampler, which reaches the i.i.d. sampler's quality in a quarter of the
        # passes (benchmarks/RESULTS.md, "RISE convergence"): half the passes of i.i.d. masks, better maps
        orthogonal = {"sampler": "orthogonal", "num_masks": 1000}
        config.stages.saliency = {
            "rows": ("rise:fixed", "rise:variable", "sliding_window:fixed", "sliding_window:variable", "lime:fixed",
                     "perturbation:fixed", "integrated_gradients:fixed", "random:fixed"),
            "num_pairs": 40, "methods": {"rise": orthogonal, "rise_variable": orthogonal,
                                         "perturbation": {"num_steps": 200}}}
        config.stages.attributes = {"lambdas": (0.0, 0.005), "num_epochs": 6, "patience": 2, "cache_images": 500,
                                    "saliency": {"num_masks": 150, "sampler": "orthogonal"}}
        config.stages.explanations = {"num_pairs": 40, "saliency": {"num_masks": 500, "sampler": "orthogonal"},
                                      "edit_scenes": 100}
    return config
