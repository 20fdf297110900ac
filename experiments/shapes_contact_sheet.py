"""Writes a contact sheet PNG of shapes examples with their class and key-object box.

Builds the dataset into ``config.data_dir`` (default ``<workdir>/tfds``) if it is not there yet,
reads it through ``tfds.data_source`` and writes ``<workdir>/contact_sheet.png`` and
``<workdir>/results.json`` (``{"dataset", "split", "num_examples", "figure", "class_counts"}``).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import tensorflow_datasets as tfds
import simexplain_jax.data  # noqa: F401  (registers the builders)
from experiments.stages import flags_main
from simexplain_jax import viz
from simexplain_jax.data import shapes
from simexplain_jax.io import write_json_atomic

def run(config, workdir: str) -> dict:
    """Builds the dataset if missing and writes the contact sheet; returns the results written to
    ``<workdir>/results.json``."""
    data_dir = config.data_dir or os.path.join(workdir, "tfds")
    builder = tfds.builder(config.dataset, data_dir=data_dir)
    builder.download_and_prepare()
    source = builder.as_data_source(config.split)
    examples = [source[i] for i in range(min(config.num_examples, len(source)))]
    titles = [f"{shapes.CLASS_NAMES[e['label']]}\nkey #{e['key_index']}" for e in examples]
    figure = viz.contact_sheet(os.path.join(workdir, "contact_sheet.png"), np.stack([e["image"] for e in examples]),
                               titles, np.stack([e["key_box"] for e in examples]),
                               title=f"{config.dataset} {config.split}: class and key object (cyan box)")
    counts = Counter(shapes.CLASS_NAMES[e["label"]] for e in examples)
    results = {"dataset": config.dataset, "split": config.split, "num_examples": len(examples), "figure": figure,
               "class_counts": dict(counts)}
    write_json_atomic(os.path.join(workdir, "results.json"), results)
    print(f"wrote {figure}")
    return results


def main():
    flags_main(run, "experiments/configs/shapes_contact_sheet.py")


if __name__ == "__main__":
    main()
