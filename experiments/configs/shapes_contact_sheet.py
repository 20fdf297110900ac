"""Contact sheet of shapes examples (a visual check of the benchmark).

python -m experiments.shapes_contact_sheet --config=experiments/configs/shapes_contact_sheet.py[:32px|64px|112px,runlocal] --workdir=DIR
"""

import ml_collections


def get_config(arg=None):
    args = set((arg or "").split(",")) - {""}
    config = ml_collections.ConfigDict()
    config.dataset = "shapes/64px"
    config.data_dir = ""  # empty: <workdir>/tfds
    config.split = "train"
    config.num_examples = 40
    for size in ("32px", "64px", "112px"):
        if size in args:
            config.dataset = f"shapes/{size}"
    if "runlocal" in args:
        config.dataset = "shapes/32px"
        config.num_examples = 20
    unknown = args - {"32px", "64px", "112px", "runlocal"}
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}")
    return config
