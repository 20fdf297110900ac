"""The main job on your own images: a folder with an attributes.csv (``attribute_folder``).

python -m experiments.sane --config=experiments/configs/sane_folder.py --config.manual_dir=FOLDER --workdir=DIR

FOLDER holds the images and attributes.csv (``simexplain_jax/data/tfds_folder.py`` has the layout:
a header ``image,<attribute>,...,label[,split]``, then one row per image). The stages are those of
``sane_shapes`` on ``attribute_folder/<size>px``: a similarity model trained on the labels, the
saliency evaluation (insertion / deletion; no pointing without ground-truth masks), the attribute
predictor and the attribute explanations (scored against the activation-map removal oracle). The
pair counts must fit the folder: with few images per label, lower ``stages.similarity.num_eval_pairs``,
``stages.saliency.num_pairs`` and ``stages.explanations.num_pairs`` (an impossible count is
refused, naming the most the images allow). Config argument: ``size=64|112|224``, ``runlocal``.
"""

from experiments.configs import sane_shapes
from experiments.configs.common import parse_arg


def get_config(arg=None):
    args = parse_arg(arg, runlocal=False, size=64)
    if args.size not in (64, 112, 224):
        raise ValueError(f"config argument size must be 64, 112 or 224, got {args.size}")
    config = sane_shapes.get_config("runlocal" if args.runlocal else None)
    config.manual_dir = ""  # the folder with attributes.csv (required)
    dataset = f"attribute_folder/{args.size}px"
    if args.runlocal:
        config.stages.similarity = dict(dataset=dataset, num_steps=100, eval_every=50, checkpoint_every=50,
                                        num_eval_pairs=12, batch_size=32)
        config.stages.saliency.num_pairs = 6
        config.stages.explanations.num_pairs = 4
    else:
        config.stages.similarity = dict(dataset=dataset, num_steps=1000, num_eval_pairs=200, patience=2)
    return config
