"""Helpers shared by the configs of the real (manual-download) datasets."""


def parse_args(arg, known=("runlocal",)) -> set:
    args = set((arg or "").split(",")) - {""}
    unknown = args - set(known)
    if unknown:
        raise ValueError(f"unknown config argument(s) {sorted(unknown)}; known: {', '.join(known)}")
    return args


def real_similarity_config(arg, dataset: str, test_pairs: str, num_steps: int):
    """A similarity config at the paper's settings (ResNet-18 cut after layer3, 64-d, lr 5e-5, 112 px)
    on a downloaded dataset; ``runlocal`` shrinks it to a few steps of a slim network."""
    from experiments.configs.similarity_shapes import base_config

    args = parse_args(arg)
    config = base_config()
    config.dataset = dataset
    config.model = "resnet18"
    config.width = 64
    config.stages = 3
    config.batch_size = 128
    config.num_steps = num_steps
    config.learning_rate = 5e-5
    config.test_pairs = test_pairs
    if "runlocal" in args:
        config.width = 16
        config.batch_size = 8
        config.num_steps = 4
        config.eval_every = 2
        config.num_eval_pairs = 8
        config.test_pairs = ""
    return config


def real_saliency_config(arg, similarity_config: str, background: int, test_pairs: str):
    """The saliency evaluation at the paper's settings (112 px, the reference geometry, the
    reference's test pairs) on a downloaded dataset."""
    from experiments.configs import saliency_shapes

    args = parse_args(arg)
    config = saliency_shapes.get_config("runlocal" if "runlocal" in args else None)
    config.similarity_config = similarity_config + (":runlocal" if "runlocal" in args else "")
    config.background = background
    if "runlocal" not in args:
        config.test_pairs = test_pairs
        config.num_pairs = 2000
        m = config.methods
        m.sliding_window.update(window=32, stride=4, padding=8)  # the reference geometry: 25 x 25 at 112 px
        m.sliding_window_variable.update(window=32, stride=4, padding=8, reference_window=32, reference_stride=16)
        m.lime.num_segments = m.lime_variable.num_segments = 50
    return config
