"""The paper's Polyvore model: a type-aware embedding (ResNet-18 cut after layer3, 64-d general
embedding, one learned mask per type-pair condition), triplets within outfits, 112 px.

Needs the downloaded dataset: --config.manual_dir=/path/to/polyvore_outfits (with SANE's
polyvore_attributes.json inside). The test AUC uses the reference's pair list, shipped with the
package (``reference:polyvore_outfits_test``).
"""

from experiments.configs.common import real_similarity_config


def get_config(arg=None):
    return real_similarity_config(arg, "polyvore_outfits/nondisjoint", "reference:polyvore_outfits_test", 40000)
