"""The main job (`make demo`): from the shapes benchmark to explained matches and a report.

python -m experiments.sane --config=experiments/configs/sane_shapes.py[:runlocal] --workdir=DIR

Each stage is an experiment module run into its own folder under the workdir and skipped when its
results.json exists; ``stages.<name>`` holds that stage's config overrides (kept small enough
that the whole demo runs in about 10 minutes on a 2-core CPU).
"""

import ml_collections

from experiments.configs.common import parse_arg, similarity_model


def get_config(arg=None):
    runlocal = parse_arg(arg, runlocal=False).runlocal
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
    if runlocal:
        config.stages.similarity = {}
        config.stages.saliency = {
            "rows": ("rise:fixed", "rise:variable", "sliding_window:fixed", "lime:fixed", "random:fixed"),
            "num_pairs": 6}
        config.stages.attributes = {}
        config.stages.explanations = {"num_pairs": 6}
    else:
        config.stages.similarity = {"num_steps": 1000}
        config.stages.saliency = {
            "rows": ("rise:fixed", "rise:variable", "sliding_window:fixed", "sliding_window:variable", "lime:fixed",
                     "perturbation:fixed", "integrated_gradients:fixed", "random:fixed"),
            "num_pairs": 40, "methods": {"perturbation": {"num_steps": 200}}}
        config.stages.attributes = {"lambdas": (0.0, 0.005), "num_epochs": 6, "cache_images": 500,
                                    "saliency": {"num_masks": 300}}
        config.stages.explanations = {"num_pairs": 40, "saliency": {"num_masks": 1000}}
    return config
