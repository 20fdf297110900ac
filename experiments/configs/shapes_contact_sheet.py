"""Contact sheet of shapes examples (a visual check of the benchmark).

python -m experiments.shapes_contact_sheet --config=experiments/configs/shapes_contact_sheet.py[:32px|64px|112px,runlocal] --workdir=DIR
"""

import ml_collections

from experiments.configs.common import parse_arg

SIZES = ("32px", "64px", "112px")


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, **{size: False for size in SIZES})
    config = ml_collections.ConfigDict()
    config.dataset = "shapes/64px"
    config.data_dir = ""  # empty: <workdir>/tfds
    config.split = "train"
    config.num_examples = 40
    for size in SIZES:
        if args[size]:
            config.dataset = f"shapes/{size}"
    if args.runlocal:
        config.dataset = "shapes/32px"
        config.num_examples = 20
    return config
