"""The paper's whole Table 1 at scale: every method row and its insertion/deletion, timed per row.

    python -m benchmarks.table1_scale --pairs=2000 --compute_dtype=bfloat16          # a GPU
    python -m benchmarks.table1_scale --pairs=2 --num_masks=500 ...                    # a CPU, reduced

For P pairs at 112 px with ResNet-18 cut after layer3 (the paper's backbone; random weights: speed
does not depend on them), each of the 11 rows (RISE, sliding window, LIME, mask: fixed and
variable reference; gradient, integrated gradients, random) runs ``explain_pairs`` over the P pairs,
then ``insertion_deletion_batch`` scores its maps (the reference embeddings included). Each is
called twice: the first call (on all P pairs, or the first ``--warmup_pairs``) compiles (its extra
time is reported as ``compile_seconds``), the second, on all P pairs, is timed. Per row: seconds,
pairs per second, the achieved FLOP rate and the projected time for ``--projected_pairs`` (20,000,
the paper's count) at the measured rate (steady state; compilation is a one-off, reported apart).

FLOPs: XLA's count for one forward pass of the model (``Lowered.cost_analysis`` of the embedding at
the RISE chunk size, in the compute dtype) times the forward passes a pair needs (below; a backward
pass counted as two forwards), divided by the measured time. Forward passes per pair, with the
configured options: RISE N (+J reference masks for the variable reference), sliding window G query
windows (+G' reference windows), LIME S samples (+J), mask method 3 x steps (x2 for the variable
reference, query and reference side by side), gradient 3, integrated gradients 3 (steps + 1),
random 0; + 1 for the reference embedding (fixed reference); insertion/deletion 2 x steps + 1.

Data: ``--data=random`` (default): smooth random images (SLIC finds superpixels in them), one query
and one reference per pair, every query distinct (the costliest case: no query shares its work
with another reference). ``--data=shapes``: balanced pairs of the shapes/112px test split (built in
``--data_dir`` if missing; 1000 test images, so queries repeat and their references share the
query's work).

``--roofline`` also prints, for each convolution of the model at the batch sizes the methods use,
XLA's FLOPs and bytes accessed from the cost analysis of that convolution alone, their ratio (the
arithmetic intensity) and the rest of the forward pass (batch norm, ReLU, pooling, additions) as one
line.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

import simexplain_jax as sx
from benchmarks._common import define_model_flags, emit, machine, make_embed_fn, smooth_images
from simexplain_jax import engine
from simexplain_jax.imageops import normalize_images, normalized_color

ROWS = ("rise:fixed", "rise:variable", "sliding_window:fixed", "sliding_window:variable", "lime:fixed",
        "lime:variable", "perturbation:fixed", "perturbation:variable", "gradient:fixed",
        "integrated_gradients:fixed", "random:fixed")

FLAGS = flags.FLAGS
flags.DEFINE_integer("pairs", 100, "P, the pairs measured")
flags.DEFINE_integer("projected_pairs", 20000, "the projection's pair count (the paper's)")
define_model_flags("resnet18", 112)
flags.DEFINE_enum("data", "random", ["random", "shapes"], "smooth random images, or shapes/<size>px test pairs")
flags.DEFINE_string("data_dir", "", "TFDS folder for --data=shapes (built there if missing)")
flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "the embedding forward's dtype")
flags.DEFINE_string("rows", ",".join(ROWS), "METHOD:fixed|variable rows, comma separated")
flags.DEFINE_integer("batch_size", 250, "perturbations per compiled chunk (RISE, sliding window, LIME, ins/del)")
flags.DEFINE_integer("num_masks", 2000, "RISE N")
flags.DEFINE_integer("num_reference_masks", 30, "J: reference masks (RISE and LIME, variable reference)")
flags.DEFINE_integer("window", 32, "sliding window side")
flags.DEFINE_integer("stride", 4, "sliding window stride")
flags.DEFINE_integer("padding", 8, "sliding window padding")
flags.DEFINE_integer("reference_stride", 16, "sliding window stride over the reference (variable)")
flags.DEFINE_integer("lime_samples", 1000, "LIME samples S")
flags.DEFINE_integer("lime_segments", 50, "LIME's SLIC target")
flags.DEFINE_integer("mask_steps", 500, "Adam steps of the mask method")
flags.DEFINE_integer("ig_steps", 64, "integrated-gradients steps")
flags.DEFINE_integer("insertion_steps", 101, "points per insertion / deletion curve")
flags.DEFINE_integer("warmup_pairs", 0, "the untimed first call of each row runs on the first N pairs only (0: all "
                     "P); shapes it did not see then compile inside the timed call")
flags.DEFINE_bool("roofline", True, "print per-convolution FLOPs and bytes from XLA's cost analysis")
flags.DEFINE_string("roofline_batches", "16,250", "batch sizes for the roofline lines")


def method_config(method: str, variable: bool) -> dict:
    b, j = FLAGS.batch_size, FLAGS.num_reference_masks
    common = dict(compute_dtype=FLAGS.compute_dtype)
    if method == "rise":
        return dict(common, num_masks=FLAGS.num_masks, batch_size=b,
                    **(dict(num_reference_masks=j) if variable else {}))
    if method == "sliding_window":
        extra = dict(reference_window=FLAGS.window, reference_stride=FLAGS.reference_stride) if variable else {}
        return dict(common, window=FLAGS.window, stride=FLAGS.stride, padding=FLAGS.padding, batch_size=b, **extra)
    if method == "lime":
        return dict(common, num_samples=FLAGS.lime_samples, num_segments=FLAGS.lime_segments, batch_size=b,
                    **(dict(num_reference_masks=j) if variable else {}))
    if method == "perturbation":
        return dict(common, num_steps=FLAGS.mask_steps)
    if method == "integrated_gradients":
        return dict(common, num_steps=FLAGS.ig_steps)
    return common


def forward_passes(method: str, variable: bool, config: dict, size: int) -> float:
    """Forward-pass equivalents per pair (a backward pass counts as two forwards)."""
    reference = 0 if variable else 1  # the fixed reference's embedding
    if method == "rise":
        return config["num_masks"] + (config["num_reference_masks"] if variable else reference)
    if method == "sliding_window":
        grid = len(sx.masks.sliding_window_grid(size, config["window"], config["stride"], config["padding"])) ** 2
        ref = len(sx.masks.sliding_window_grid(size, config.get("reference_window", 32),
                                               config.get("reference_stride", 16), 0)) ** 2 if variable else reference
        return grid + ref
    if method == "lime":
        return config["num_samples"] + (config["num_reference_masks"] if variable else reference)
    if method == "perturbation":
        return 3 * config["num_steps"] * (2 if variable else 1) + reference
    if method == "gradient":
        return 3 + reference
    if method == "integrated_gradients":
        return 3 * (config["num_steps"] + 1) + reference
    return reference  # random: the reference embedding only


def lowered_cost(fn, *args) -> dict:
    analysis = jax.jit(fn).lower(*args).cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0]
    return dict(analysis or {})


def flops_per_image(embed, size: int, batch: int) -> float:
    cost = lowered_cost(lambda f, x: f(x), embed, jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32))
    return float(cost.get("flops", float("nan"))) / batch


def _conv_equations(jaxpr):
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
            yield eqn
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", None)
            if inner is not None:
                yield from _conv_equations(inner if hasattr(inner, "eqns") else inner.jaxpr)


def roofline(embed, size: int, batch: int) -> None:
    """One JSON line per convolution of ``embed`` at ``batch`` (XLA's cost analysis of that conv alone),
    then the whole forward pass and its non-convolution remainder."""
    images = jax.ShapeDtypeStruct((batch, size, size, 3), jnp.float32)
    jaxpr = jax.make_jaxpr(lambda x: embed(x))(images)
    conv_flops = conv_bytes = 0.0
    for index, eqn in enumerate(_conv_equations(jaxpr.jaxpr)):
        lhs, rhs = (v.aval for v in eqn.invars)
        cost = lowered_cost(lambda x, w, eqn=eqn: eqn.primitive.bind(x, w, **eqn.params),
                            jax.ShapeDtypeStruct(lhs.shape, lhs.dtype), jax.ShapeDtypeStruct(rhs.shape, rhs.dtype))
        flops, nbytes = float(cost.get("flops", 0.0)), float(cost.get("bytes accessed", 0.0))
        conv_flops, conv_bytes = conv_flops + flops, conv_bytes + nbytes
        emit({"measure": "roofline_conv", "batch": batch, "index": index, "input": list(lhs.shape),
              "kernel": list(rhs.shape), "dtype": str(lhs.dtype), "gflop": round(flops / 1e9, 4),
              "mbytes": round(nbytes / 1e6, 3), "flop_per_byte": round(flops / max(nbytes, 1.0), 1)})
    total = lowered_cost(lambda f, x: f(x), embed, images)
    flops, nbytes = float(total.get("flops", 0.0)), float(total.get("bytes accessed", 0.0))
    emit({"measure": "roofline_model", "batch": batch, "gflop": round(flops / 1e9, 3), "mbytes": round(nbytes / 1e6, 1),
          "flop_per_byte": round(flops / max(nbytes, 1.0), 1), "conv_share_of_flops": round(conv_flops / flops, 4),
          "rest_gflop": round((flops - conv_flops) / 1e9, 4), "rest_mbytes": round((nbytes - conv_bytes) / 1e6, 1),
          "rest_flop_per_byte": round((flops - conv_flops) / max(nbytes - conv_bytes, 1.0), 2),
          "note": "unoptimised HLO: every op's operands and result counted (no fusion), an upper bound on bytes"})


def load_data(p: int, size: int):
    """(queries, references, pairs, what) as normalised float32 images."""
    if FLAGS.data == "random":
        return smooth_images(p, size, seed=1), smooth_images(p, size, seed=2), np.stack([np.arange(p)] * 2, 1), \
            f"smooth random images, {p} distinct queries"
    from simexplain_jax.data.datasets import explanation_pairs  # noqa: PLC0415 (needs the data stack)

    data = explanation_pairs(f"shapes/{size}px", data_dir=FLAGS.data_dir, num_pairs=p, seed=0)
    images = normalize_images(data.images)
    return images, images, data.pairs, f"shapes/{size}px test, {len(np.unique(data.pairs[:, 0]))} distinct queries"


def main(argv):
    del argv
    size, p = FLAGS.image_size, FLAGS.pairs
    embed = make_embed_fn(FLAGS.model, size)
    forward = engine.in_compute_dtype(embed, FLAGS.compute_dtype)
    queries, references, pairs, what = load_data(p, size)
    p = len(pairs)
    gflop = flops_per_image(forward, size, FLAGS.batch_size) / 1e9
    setup = dict(model=FLAGS.model, image_size=size, pairs=p, data=what, compute_dtype=FLAGS.compute_dtype,
                 model_gflop_per_image=round(gflop, 4), **machine())
    emit({"measure": "config", **setup, "flags": {name: FLAGS[name].value for name in (
        "batch_size", "num_masks", "num_reference_masks", "window", "stride", "padding", "reference_stride",
        "lime_samples", "lime_segments", "mask_steps", "ig_steps", "insertion_steps", "rows")}})
    if FLAGS.roofline:
        for batch in [int(b) for b in FLAGS.roofline_batches.split(",") if b]:
            roofline(forward, size, batch)
    key = jax.random.key(0)
    background = normalized_color(127)
    steps = FLAGS.insertion_steps
    projected = FLAGS.projected_pairs
    total = total_projected = 0.0

    warm = FLAGS.warmup_pairs if 0 < FLAGS.warmup_pairs < p else p

    def twice(fn):
        """(output, seconds of the timed call, compile estimate = first call - its share of the timed one)."""
        start = time.perf_counter()
        fn(warm)
        first = time.perf_counter() - start
        start = time.perf_counter()
        out = fn(p)
        second = time.perf_counter() - start
        return out, second, max(first - second * warm / p, 0.0)

    def report(row, kind, seconds, compile_seconds, passes):
        rate = p / seconds
        emit({"measure": kind, "row": row, "seconds": round(seconds, 3), "compile_seconds": round(compile_seconds, 2),
              "pairs_per_second": round(rate, 3), "forward_passes_per_pair": passes,
              "achieved_tflops": round(passes * gflop * rate / 1e3, 4),
              "projected_seconds": round(projected / rate, 1), "projected_pairs": projected})
        return seconds, projected / rate

    for row in [r.strip() for r in FLAGS.rows.split(",") if r.strip()]:
        method, _, reference = row.partition(":")
        variable = reference == "variable"
        name = f"{method}_variable" if variable else method
        config = method_config(method, variable)
        maps, seconds, compile_seconds = twice(lambda n: sx.saliency.explain_pairs(
            name, embed, queries, references, key=key, pairs=pairs[:n], config=config))
        s, proj = report(row, "method", seconds, compile_seconds, forward_passes(method, variable, config, size))
        total, total_projected = total + s, total_projected + proj

        def score(n, maps=maps):
            refs = engine.apply_in_chunks(forward, references[pairs[:n, 1]], FLAGS.batch_size)
            return sx.metrics.insertion_deletion_batch(embed, queries[pairs[:n, 0]], refs, maps[:n],
                                                       background=background, num_steps=steps,
                                                       batch_size=FLAGS.batch_size, compute_dtype=FLAGS.compute_dtype)

        _, seconds, compile_seconds = twice(score)
        s, proj = report(row, "insertion_deletion", seconds, compile_seconds, 2 * steps + 1)
        total, total_projected = total + s, total_projected + proj
    emit({"measure": "summary", **setup, "seconds": round(total, 2),
          "pairs_per_second_all_rows": round(p / total, 4) if total else None,
          "projected_pairs": projected, "projected_seconds": round(total_projected, 1),
          "projected_minutes": round(total_projected / 60, 2),
          "note": "steady-state times (each call's second run); compilation reported per row apart"})


if __name__ == "__main__":
    app.run(main)
