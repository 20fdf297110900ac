"""Explain your own image pairs with a trained model, your own model, or a pretrained ResNet.

    python -m experiments.explain --checkpoint=RUN/similarity --query=a.png --reference=b.jpg \
        [--method=rise] [--attributes=RUN/attributes/lambda_0/checkpoints] [--out=explanations]
    python -m experiments.explain --checkpoint=... --pairs=pairs.txt --image_dir=IMAGES [--out=...]
    python -m experiments.explain --model=my_package.models:factory --query=a.png --reference=b.jpg
    python -m experiments.explain --torchvision_weights=resnet18.pth --arch=resnet18 [--stages=4] \
        --query=a.png --reference=b.jpg

The similarity model is one of: ``--checkpoint``, a ``train_similarity`` run; ``--model``, a
function of no arguments returning a ``simexplain_jax.models.SimilarityModel`` (see
``from_linen``, ``from_nnx``, ``from_function``), with its input size and normalisation; or
``--torchvision_weights``, an ImageNet-pretrained torchvision ResNet (``.pth``, ``.safetensors``
or ``.npz``; no PyTorch needed) used as is, its embedding the average pool of the last kept stage.
A model whose output is not ``[B, D]`` finite floats is refused before anything runs.

Images of any size and mode are converted to RGB, resized (shorter side) and centre-cropped to the
model's resolution, and normalised as the model expects. Writes one overlay PNG per pair (query,
reference, the query's saliency map) and one correspondence PNG (both images' first-order maps and
their strongest cell pairs joined by lines), and prints the similarity, the top correspondences
(cell boxes in pixels, ``y0:y1 x0:x1``, and each one's share of the similarity) and, with
``--attributes``, the three attributes that best explain the match. They are ranked by the concept
selector (each attribute's direction in the similarity model's embedding, fitted by
``train_attributes`` and saved beside the predictor as ``concepts.json``, scored by the similarity
lost when it is removed from both embeddings, with a soft presence term from the predictor), and
the similarity's relative change without it is printed (``color:red (-4.2% without it)``). ``--selector`` picks
``pair_aware`` or ``paper`` (the activation maps against the saliency maps) instead. ``--json``
prints one JSON record per pair (similarity, attributes with scores, correspondences, output
files) instead of the text, for scripts. The correspondences are exact
(``pooled_pair``, one forward pass per image) for the library's pooled models, and estimated by
``rise_pair`` otherwise. ``--pairs`` reads the reference's ``img1 img2 label``
format; names are looked up in ``--image_dir`` (as given, or with .jpg/.jpeg/.png; a name that
would leave it, ``../x`` or an absolute path, is refused). Any image that cannot be used
(unreadable, truncated, a decompression bomb, an unsupported mode) is reported with its file name
and the other pairs still run. 16-bit and 32-bit greyscale images are scaled to 8 bits, not
clipped. The command prints its results; ``--verbose`` adds the libraries' INFO logs.

In-process: ``run(config, out)`` with ``config`` from ``default_config()`` (the flags' fields).
"""

from __future__ import annotations

import json
import os
import sys

import jax
import ml_collections
import numpy as np
from absl import app, flags, logging
from PIL import Image

import simexplain_jax as sx
from experiments.stages import USER_ERRORS, define_compilation_cache_flag, report_error, use_compilation_cache
from simexplain_jax import viz
from simexplain_jax.attributes import Thresholds, concept_relevance, load_concepts, select
from simexplain_jax.attributes.saliency_cache import resize_maps
from simexplain_jax.data.pairs import read_pairs
from simexplain_jax.data.pipeline import resize_and_center_crop
from simexplain_jax.imageops import normalize_images
from simexplain_jax.io import path_inside
from simexplain_jax.models import check_embeddings, load_factory, torchvision_resnet
from simexplain_jax.models.loading import load_attribute_predictor, load_similarity_model
from simexplain_jax.models.user import ARCHS
from simexplain_jax.saliency.cache import fingerprint
from simexplain_jax.train.attributes import CONCEPTS_FILE, THRESHOLDS_FILE, predict

FLAGS = flags.FLAGS
METHODS = ("rise", "sliding_window", "lime", "gradient", "integrated_gradients")
SELECTORS = ("concept", "pair_aware", "paper")
PRESENCE_WEIGHT = 0.05  # the concept selector's soft presence term (explain_attributes' default)
CONCEPT_SCORER = "removal"  # the concept selector's scorer (explain_attributes' first, chosen on validation pairs)


def default_config() -> ml_collections.ConfigDict:
    """``run``'s config: the command's flags but ``--out`` (the workdir), ``--verbose`` and
    ``--compilation_cache``; locked."""
    config = ml_collections.ConfigDict(dict(
        checkpoint="",  # a train_similarity workdir (or its checkpoints/ folder), or:
        model="",  # package.module:factory returning a simexplain_jax.models.SimilarityModel, or:
        torchvision_weights="",  # an ImageNet torchvision ResNet state dict (.pth, .safetensors, .npz)
        arch="resnet18",  # its architecture
        stages=4,  # how many of its four stages to keep
        image_size=224,  # its input size
        query="", reference="",  # two image files, or:
        pairs="",  # a pair file (img1 img2 label), names looked up in image_dir
        image_dir=".",
        method="rise",  # one of METHODS (fixed reference)
        num_masks=2000,  # RISE masks
        attributes="",  # an attribute-predictor checkpoint folder (train_attributes)
        selector="concept",  # how --attributes are ranked: one of SELECTORS
        json=False,  # print one JSON record per pair instead of text
        correspondences=3,  # strongest cell pairs printed and drawn (0: none)
        seed=0))
    config.lock()
    return config


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """The command's flags, in ``flag_values`` (defined by the entry point only, so importing this
    module defines none; a test can parse a command line into its own ``flags.FlagValues``)."""
    into = dict(flag_values=flag_values)
    flags.DEFINE_string("checkpoint", None, "a train_similarity workdir (or its checkpoints/ folder)", **into)
    flags.DEFINE_string("model", None, "package.module:factory returning a simexplain_jax.models.SimilarityModel",
                        **into)
    flags.DEFINE_string("torchvision_weights", None, "an ImageNet-pretrained torchvision ResNet state dict "
                        "(.pth, .safetensors or .npz) used as the similarity model", **into)
    flags.DEFINE_enum("arch", "resnet18", list(ARCHS), "the --torchvision_weights architecture", **into)
    flags.DEFINE_integer("stages", 4, "ResNet stages kept for --torchvision_weights (3: cut after layer3)", **into)
    flags.DEFINE_integer("image_size", 224, "input size for --torchvision_weights", **into)
    flags.DEFINE_string("query", None, "query image file", **into)
    flags.DEFINE_string("reference", None, "reference image file", **into)
    flags.DEFINE_string("pairs", None, "a pair file (img1 img2 label) instead of --query/--reference", **into)
    flags.DEFINE_string("image_dir", ".", "where --pairs names are looked up", **into)
    flags.DEFINE_enum("method", "rise", list(METHODS), "saliency method (fixed reference)", **into)
    flags.DEFINE_integer("num_masks", 2000, "RISE masks", **into)
    flags.DEFINE_string("attributes", None, "an attribute-predictor checkpoint folder (train_attributes)", **into)
    flags.DEFINE_enum("selector", "concept", list(SELECTORS), "how --attributes are ranked", **into)
    flags.DEFINE_bool("json", False, "print one JSON record per pair (for scripts) instead of text", **into)
    flags.DEFINE_string("out", "explanations", "output folder for the overlay PNGs", **into)
    flags.DEFINE_integer("correspondences", 3, "strongest cell pairs printed and drawn (0: none)", **into)
    flags.DEFINE_integer("seed", 0, "PRNG seed", **into)
    flags.DEFINE_bool("verbose", False, "also print the libraries' INFO logs (orbax, absl) and an error's traceback",
                      **into)
    define_compilation_cache_flag(flag_values)
    flags.declare_key_flag("compilation_cache", flag_values=flag_values)  # listed by --help with the others


def to_rgb8(image: Image.Image) -> np.ndarray:
    """uint8 RGB ``[H, W, 3]`` of a PIL image of any mode. 16-bit (``I;16*``) and 32-bit integer
    (``I``, as from 16-bit files) greyscale are divided by 257 (65535 -> 255) and float (``F``)
    greyscale in [0, 1] multiplied by 255: scaled, where PIL's ``convert`` would clip them at 255."""
    if image.mode.startswith("I;16") or image.mode == "I" or image.mode == "F":
        grey = np.asarray(image, np.float64)
        if not np.isfinite(grey).all():
            raise ValueError(f"mode {image.mode} image holds NaN or infinite values")
        scale = 255.0 if image.mode == "F" and grey.max(initial=0.0) <= 1.0 else 1.0 / 257.0
        grey = np.clip(np.round(grey * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    return np.asarray(image.convert("RGB"))


def load_image(path: str, size: int) -> np.ndarray:
    """uint8 RGB ``[size, size, 3]``; raises ValueError naming the file when it cannot be read."""
    try:
        with Image.open(path) as image:
            rgb = to_rgb8(image)
        if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
            raise ValueError(f"empty image of shape {rgb.shape}")
        return resize_and_center_crop(rgb, size)
    except Exception as err:  # noqa: BLE001  any failure of one image (PIL's DecompressionBombError included)
        raise ValueError(f"cannot use image {path}: {type(err).__name__}: {err}") from None


def resolve(name: str, folder: str) -> str:
    """The file of pair-list name ``name`` in ``folder`` (as given, or with .jpg/.jpeg/.png); a name
    that would leave ``folder`` raises a ValueError."""
    for candidate in (name, name + ".jpg", name + ".jpeg", name + ".png"):
        path = path_inside(folder, candidate, what="image name")
        if os.path.exists(path):
            return path
    return path_inside(folder, name, what="image name")


def model_flags(config) -> str:
    """The one of ``checkpoint``, ``model`` and ``torchvision_weights`` that is given; a ValueError otherwise."""
    given = [name for name in ("checkpoint", "model", "torchvision_weights") if config[name]]
    if len(given) != 1:
        raise ValueError("give one similarity model: --checkpoint (a train_similarity workdir), --model "
                         f"(package.module:factory) or --torchvision_weights (a ResNet state dict); got {given or 'none'}")
    return given[0]


def similarity_model(config):
    """The ``SimilarityModel`` of exactly one of ``checkpoint``, ``model`` and ``torchvision_weights``."""
    model_flags(config)
    if config.model:
        return load_factory(config.model)
    if config.torchvision_weights:
        return torchvision_resnet(config.torchvision_weights, arch=config.arch, stages=config.stages,
                                  image_size=config.image_size)
    checkpoint = config.checkpoint
    if os.path.exists(os.path.join(checkpoint, "checkpoints", "config.json")):
        checkpoint = os.path.join(checkpoint, "checkpoints")
    return load_similarity_model(checkpoint)[0]


def correspondence(sim, images: np.ndarray, key, num_masks: int):
    """``(method name, PairResult)`` of the pair ``images [2, H, W, C]`` (query, reference): exact for a
    pooled model, the black-box cross estimator with ``num_masks // 2`` masks per image otherwise."""
    try:
        if sim.module is None:
            raise TypeError("not a Flax module")
        pooled = sx.saliency.pooled_model(sim.module, sim.variables)
    except (TypeError, ValueError):
        return "rise_pair", sx.saliency.rise_pair(sim.embed_fn, images[0], images[1], key=key,
                                                  num_masks=max(1, num_masks // 2))
    return "pooled_pair", sx.saliency.pooled_pair(pooled, None, images[0], images[1])


def top_attributes(selector, predictor, predictor_vars, thresholds, concepts, names, images, embeddings, maps,
                   similarity, top_k=3) -> list[dict]:
    """The ``top_k`` attributes explaining the pair ``images [2, ...]`` (query, reference): ``{"name",
    "score"}`` each, and for the concept selector ``"share"``, the similarity lost when the attribute's
    concept is removed from both embeddings (``CONCEPT_SCORER``), over the similarity."""
    scores, aams = predict(predictor, predictor_vars, images)
    small = resize_maps(maps, aams.shape[1])
    relevance = None
    if selector == "concept":
        relevance = concept_relevance(concepts, embeddings[:1], embeddings[1:2], scorer=CONCEPT_SCORER)[0]
    explanation = select(scores[0], aams[0], small[0], thresholds, w=0.0, selector=selector,
                         reference_scores=scores[1], reference_aams=aams[1], reference_saliency=small[1],
                         relevance=relevance, presence="soft", presence_weight=PRESENCE_WEIGHT, top_k=top_k)
    out = []
    for a, score in zip(explanation.attributes, explanation.scores):
        entry = {"name": names[a], "score": float(score)}
        if relevance is not None and similarity != 0:
            entry["share"] = float(relevance[a] / similarity)
        out.append(entry)
    return out


def describe_box(box) -> str:
    y0, x0, y1, x1 = box
    return f"y {y0}:{y1} x {x0}:{x1}"


def main(argv, flag_values: flags.FlagValues = FLAGS):
    """The command: ``run`` with the config of the parsed ``flag_values`` (``define_flags``)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    logging.set_verbosity(logging.INFO if flag_values.verbose else logging.WARNING)
    use_compilation_cache(flag_values.compilation_cache)
    config = default_config()
    for name in config:
        config[name] = getattr(flag_values, name) if getattr(flag_values, name) is not None else config[name]
    try:
        results = run(config, flag_values.out)
    except USER_ERRORS as err:  # a bad flag value, file or model, named in one line
        sys.exit(report_error(err, flag_values.verbose))
    if results["failures"] and results["failures"] == results["num_pairs"]:
        sys.exit(1)


def run(config, workdir: str) -> dict:
    """Explains ``config``'s pair(s) into ``workdir`` (one overlay PNG per pair) and prints one line
    per pair (or one JSON record per pair, ``config.json``); an image that cannot be used skips its
    pair (reported on stderr). Returns ``{"pairs": [record, ...], "failures", "num_pairs"}``, each
    record as printed with ``--json``: ``index``, ``query``, ``reference``, ``similarity``,
    ``overlay``, ``selector``, ``attributes`` (``{"name", "score"[, "share"]}``) and, with
    correspondences, ``correspondence_method``, ``correspondence_figure`` and ``correspondences``.
    Raises ValueError for a config that cannot run (naming the field)."""
    if config.pairs and (config.query or config.reference) or not config.pairs and not (
            config.query and config.reference):
        raise ValueError("give either --query and --reference, or --pairs")
    if config.method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {config.method!r}")
    if config.selector not in SELECTORS:
        raise ValueError(f"selector must be one of {SELECTORS}, got {config.selector!r}")
    if config.correspondences < 0:
        raise ValueError(f"correspondences must be >= 0, got {config.correspondences}")
    model_flags(config)
    predictor = None
    if config.attributes:
        predictor, predictor_vars, attr_config = load_attribute_predictor(config.attributes)
        names = attr_config.get("attribute_names") or [f"attribute_{i}" for i in range(attr_config["num_attributes"])]
        try:
            thresholds = Thresholds.load(os.path.join(config.attributes, THRESHOLDS_FILE), len(names))
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"--attributes={config.attributes}: {err} (train_attributes writes the presence "
                             f"thresholds there after training)") from None
    sim = similarity_model(config)
    check_embeddings(sim)  # [B, D] finite floats, before any long work
    size, embed = sim.image_size, sim.embed_fn
    concepts = None
    if predictor is not None and config.selector == "concept":
        concepts_path = os.path.join(config.attributes, CONCEPTS_FILE)
        if not os.path.exists(concepts_path):
            raise ValueError(f"--attributes={config.attributes} has no {CONCEPTS_FILE} (the concept directions, "
                             f"which train_attributes now saves there); retrain it, or pass --selector=pair_aware")
        concepts = load_concepts(concepts_path, model=fingerprint(embed), num_attributes=len(names))
    if config.pairs:
        try:
            listed = read_pairs(config.pairs)
        except (OSError, ValueError) as err:
            raise ValueError(f"--pairs={config.pairs}: {err}") from None
        jobs = []
        for p in listed:
            try:
                jobs.append((resolve(p.query, config.image_dir), resolve(p.reference, config.image_dir)))
            except ValueError as err:
                jobs.append(err)
    else:
        jobs = [(config.query, config.reference)]
    os.makedirs(workdir, exist_ok=True)
    failures, explained = 0, []
    for index, job in enumerate(jobs):
        try:
            if isinstance(job, ValueError):
                raise job
            query_path, reference_path = job
            raw = np.stack([load_image(query_path, size), load_image(reference_path, size)])
        except ValueError as err:
            print(f"pair {index}: skipped: {err}", file=sys.stderr)
            failures += 1
            continue
        images = sim.normalize(raw)
        embeddings = np.asarray(embed(images))
        similarity = float(sx.similarity.cosine(embeddings[0], embeddings[1]))
        key = jax.random.key(config.seed)
        config_ = {"num_masks": config.num_masks} if config.method == "rise" else {}
        maps = sx.saliency.explain_pairs(config.method, embed, images, images, key=key, pairs=[[0, 1], [1, 0]],
                                         config=config_)
        line = f"{os.path.basename(query_path)} ~ {os.path.basename(reference_path)}: similarity {similarity:.4f}"
        caption = f"similarity {similarity:.3f}"
        tops, attributes = [], []
        if predictor is not None:
            attributes = top_attributes(config.selector, predictor, predictor_vars, thresholds, concepts, names,
                                        normalize_images(raw), embeddings, maps, similarity)
            # the similarity's relative change without the attribute (short enough for the overlay's caption)
            tops = [f"{a['name']} ({-a['share']:+.1%} without it)" if "share" in a else
                    f"{a['name']} ({a['score']:.2f})" for a in attributes]
            line += f"; top attributes ({config.selector} selector): " + (
                ", ".join(tops) if tops else "none present in both images")
            caption += "\n" + "\n".join(tops)
        out = os.path.join(workdir, f"pair_{index:04d}.png")
        viz.pair_gallery(out, raw[:1], raw[1:], {config.method: maps[:1]}, captions={config.method: [caption]})
        record = {"index": index, "query": query_path, "reference": reference_path, "similarity": similarity,
                  "overlay": out, "selector": config.selector if predictor is not None else None,
                  "attributes": attributes}
        lines = [f"{line}; overlay {out}"]
        if config.correspondences:
            name, pair = correspondence(sim, images, jax.random.fold_in(key, 1), config.num_masks)
            strongest = sx.saliency.strongest_pairs(pair.correspondence, images.shape[1:], images.shape[1:],
                                                    config.correspondences)
            figure = viz.correspondence_figure(
                os.path.join(workdir, f"pair_{index:04d}_correspondence.png"), raw[:1], raw[1:], [strongest],
                np.asarray(pair.query_map)[None], np.asarray(pair.reference_map)[None],
                captions=[f"similarity {similarity:.3f}; {name}"])
            cell_pairs = int(np.prod(np.shape(pair.correspondence)[-4:]))  # a share of 1 / cell_pairs is average
            lines.append(f"  top correspondences ({name}; query cell ~ reference cell: share of the similarity, "
                         f"against the average of the {cell_pairs} cell pairs):")
            lines += [f"    {rank + 1}. {describe_box(p.query_box)} ~ {describe_box(p.reference_box)}: {p.share:.1%} "
                      f"({p.share * cell_pairs:.1f}x average)" for rank, p in enumerate(strongest)]
            lines.append(f"  correspondence figure {figure}")
            record.update(correspondence_method=name, correspondence_figure=figure,
                          correspondences=[{"query_box": [int(v) for v in p.query_box],
                                            "reference_box": [int(v) for v in p.reference_box],
                                            "contribution": float(p.contribution), "share": float(p.share)}
                                           for p in strongest])
        print(json.dumps(record) if config.json else "\n".join(lines), flush=True)
        explained.append(record)
    if failures:
        print(f"{failures} of {len(jobs)} pairs skipped (images that could not be used)", file=sys.stderr)
    return {"pairs": explained, "failures": failures, "num_pairs": len(jobs)}


if __name__ == "__main__":
    define_flags()
    app.run(main)
