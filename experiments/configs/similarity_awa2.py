"""The paper's AwA2 similarity model: ResNet-18 cut after layer3, 64-d, triplet margin 0.2, 112 px.

Needs the downloaded dataset: --config.manual_dir=/path/to/Animals_with_Attributes2, and
optionally ImageNet weights --config.init_weights=resnet18.pth (torchvision format). The test AUC
is measured on the reference's pair list, shipped with the package (``reference:awa2_test``).
"""

from experiments.configs.common import real_similarity_config


def get_config(arg=None):
    return real_similarity_config(arg, "awa2", "reference:awa2_test", 20000)
