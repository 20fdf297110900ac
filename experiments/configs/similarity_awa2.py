"""The paper's AwA2 similarity model: ResNet-18 cut after layer3, 64-d, triplet margin 0.2, 112 px.

Needs the downloaded dataset: --config.manual_dir=/path/to/Animals_with_Attributes2, and
optionally ImageNet weights --config.init_weights=resnet18.pth (torchvision format). The test AUC
is measured on the reference's pair list (../shared/data/sane_reference/awa2_test_pairs.txt).
"""

from experiments.configs.similarity_shapes import base_config


def get_config(arg=None):
    args = set((arg or "").split(",")) - {""}
    config = base_config()
    config.dataset = "awa2"
    config.model = "resnet18"
    config.width = 64
    config.stages = 3
    config.batch_size = 128
    config.num_steps = 20000
    config.learning_rate = 5e-5
    config.test_pairs = "../shared/data/sane_reference/awa2_test_pairs.txt"
    if "runlocal" in args:
        config.width = 16
        config.batch_size = 16
        config.num_steps = 4
        config.eval_every = 2
        config.num_eval_pairs = 20
        config.test_pairs = ""
    unknown = args - {"runlocal"}
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: runlocal")
    return config
