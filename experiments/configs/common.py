"""What the configs share: ``parse_arg`` (the typed config argument, as big_vision's) and the
configs of the real (manual-download) datasets."""

import ml_collections


def parse_arg(arg, **spec) -> ml_collections.ConfigDict:
    """The config argument ``arg`` (the text after ``:`` in ``--config=FILE:ARG``) as a locked
    ConfigDict with the fields and defaults of ``spec``, typed like each default.

    ``arg`` is comma separated: ``name=value`` sets a field (``"true"``/``"false"`` for a bool) and
    a bare ``name`` sets a bool field to True, so ``parse_arg("runlocal,size=32", runlocal=False,
    size=64)`` gives ``runlocal=True, size=32``. A name ``spec`` does not have, or a value that does
    not convert, raises a ValueError naming it and the known names."""
    result = ml_collections.ConfigDict(spec)
    for item in [x.strip() for x in (arg or "").split(",") if x.strip()]:
        name, has_value, value = item.partition("=")
        if name not in spec:
            raise ValueError(f"unknown config argument {name!r}; known: {', '.join(spec) or 'none'}")
        default = spec[name]
        try:
            if isinstance(default, bool):
                if has_value and value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError("not a bool")
                result[name] = not has_value or value.lower() in ("true", "1")
            elif not has_value:
                raise ValueError("no value given")
            else:
                result[name] = type(default)(value) if default is not None else value
        except ValueError as err:
            raise ValueError(f"config argument {item!r}: {err} (expected {type(default).__name__})") from None
    result.lock()
    return result


def similarity_model() -> ml_collections.ConfigDict:
    """The ``similarity_model`` group: a model of your own instead of the trained one
    (``experiments.similarity_source``); empty by default (the trained model)."""
    from experiments.stages import ADDED_FIELDS

    return ml_collections.ConfigDict(dict(ADDED_FIELDS["similarity_model"]))


def real_similarity_config(arg, dataset: str, test_pairs: str, num_steps: int):
    """A similarity config at the paper's settings (ResNet-18 cut after layer3, 64-d, lr 5e-5, 112 px)
    on a downloaded dataset; ``runlocal`` shrinks it to a few steps of a slim network."""
    from experiments.configs.similarity_shapes import base_config

    args = parse_arg(arg, runlocal=False)
    config = base_config()
    config.dataset = dataset
    config.model = "resnet18"
    config.width = 64
    config.stages = 3
    config.batch_size = 128
    config.num_steps = num_steps
    config.learning_rate = 5e-5
    config.test_pairs = test_pairs
    if args.runlocal:
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

    args = parse_arg(arg, runlocal=False)
    config = saliency_shapes.get_config("runlocal" if args.runlocal else None)
    config.similarity_config = similarity_config + (":runlocal" if args.runlocal else "")
    config.background = background
    if not args.runlocal:
        config.test_pairs = test_pairs
        config.num_pairs = 2000
        m = config.methods
        m.sliding_window.update(window=32, stride=4, padding=8)  # the reference geometry: 25 x 25 at 112 px
        m.sliding_window_variable.update(window=32, stride=4, padding=8, reference_window=32, reference_stride=16)
        m.lime.num_segments = m.lime_variable.num_segments = 50
    return config
