"""The paper's Polyvore model: a type-aware embedding (ResNet-18 cut after layer3, 64-d general
embedding, one learned mask per type-pair condition), triplets within outfits, 112 px.

Needs the downloaded dataset: --config.manual_dir=/path/to/polyvore_outfits (with SANE's
polyvore_attributes.json inside). The test AUC uses the reference's pair list.
"""

from experiments.configs.similarity_shapes import base_config


def get_config(arg=None):
    args = set((arg or "").split(",")) - {""}
    config = base_config()
    config.dataset = "polyvore_outfits/nondisjoint"
    config.model = "resnet18"
    config.batch_size = 128
    config.num_steps = 40000
    config.learning_rate = 5e-5
    config.test_pairs = "../shared/data/sane_reference/polyvore_outfits_test_pairs.txt"
    if "runlocal" in args:
        config.width = 16
        config.batch_size = 8
        config.num_steps = 4
        config.eval_every = 2
        config.num_eval_pairs = 8
        config.test_pairs = ""
    unknown = args - {"runlocal"}
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: runlocal")
    return config
