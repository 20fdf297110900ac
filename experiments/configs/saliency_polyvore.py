"""The paper's Table 1 on Polyvore Outfits (112 px, white background, the reference's test pairs).

Needs --config.manual_dir=/path/to/polyvore_outfits and a trained model
(--config.similarity_workdir, or it is trained first with similarity_polyvore.py).
"""

from experiments.configs.common import real_saliency_config


def get_config(arg=None):
    return real_saliency_config(arg, "experiments/configs/similarity_polyvore.py", background=255,
                                test_pairs="reference:polyvore_outfits_test")
