"""The paper's Table 1 on AwA2 (112 px, grey background, the reference's test pairs).

Needs --config.manual_dir=/path/to/Animals_with_Attributes2 and a trained model
(--config.similarity_workdir, or it is trained first with similarity_awa2.py).
"""

from experiments.configs.common import real_saliency_config


def get_config(arg=None):
    return real_saliency_config(arg, "experiments/configs/similarity_awa2.py", background=127,
                                test_pairs="reference:awa2_test")
