"""Pair lists: the reference's ``img1 img2 label`` text files, balanced sampling, and the positive
references used to cache training saliency maps."""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Hashable, Iterable, NamedTuple, Sequence

import numpy as np

from simexplain_jax.io import write_atomic


class Pair(NamedTuple):
    query: str
    reference: str
    label: int  # 1 = match (positive), 0 = non-match


def parse_pairs(lines: Iterable[str], source: str = "<pairs>") -> list[Pair]:
    """Parses ``img1 img2 label`` lines (whitespace separated; blank lines and ``#`` comments skipped).

    Args:
      lines: the lines.
      source: what the lines come from, for error messages.

    Returns:
      The ``Pair``s, in order.
    """
    pairs = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split()
        if len(fields) != 3 or fields[2] not in ("0", "1"):
            raise ValueError(f"{source}:{number}: expected 'img1 img2 label' with label 0 or 1, got {line!r}")
        pairs.append(Pair(fields[0], fields[1], int(fields[2])))
    if not pairs:
        raise ValueError(f"{source}: the pair list is empty")
    return pairs


def read_pairs(path: str | os.PathLike) -> list[Pair]:
    """Reads a pair file in the reference's format (the packaged ones: ``reference_files``).

    The file is UTF-8, with or without a byte-order mark (which is not part of the first id); a
    file in another encoding raises a ValueError naming it and the offending byte's position.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text (byte {err.object[err.start:err.start + 1]!r} at offset "
                         f"{err.start}); save the pair file as UTF-8") from None
    return parse_pairs(text.splitlines(), source=str(path))


def write_pairs(path: str | os.PathLike, pairs: Sequence[Sequence]) -> None:
    """Writes ``img1 img2 label`` lines atomically (a temporary file renamed into place)."""
    if len(pairs) == 0:
        raise ValueError("pairs is empty")
    lines = []
    for query, reference, label in pairs:
        if int(label) not in (0, 1) or any(c.isspace() for c in f"{query}{reference}"):
            raise ValueError(f"bad pair {(query, reference, label)!r}: ids without spaces, label 0 or 1")
        lines.append(f"{query} {reference} {int(label)}\n")
    write_atomic(path, "".join(lines))


def groups_from_labels(labels: Sequence[Hashable]) -> dict[Hashable, list[int]]:
    """``{label: [indices]}`` (class labels as groups)."""
    groups = defaultdict(list)
    for index, label in enumerate(labels):
        groups[label].append(index)
    return dict(groups)


def sample_pairs(labels: Sequence[int], num_pairs: int, seed: int, ids: Sequence[str] | None = None) -> list[Pair]:
    """Balanced pairs: half positive (same label, distinct images) and half negative.

    Args:
      labels: each image's label (any hashable value).
      num_pairs: how many pairs (``num_pairs // 2`` positive).
      seed: the sampling seed; the pairs are a deterministic function of it.
      ids: each image's id; None: the indices as strings.

    Returns:
      ``Pair``s of ``ids``, positives first, then negatives.
    """
    labels = np.asarray(labels)
    if num_pairs < 2 or labels.size < 2:
        raise ValueError(f"need num_pairs >= 2 and at least 2 images, got {num_pairs} pairs of {labels.size} images")
    ids = [str(i) for i in range(labels.size)] if ids is None else list(ids)
    groups = {k: np.asarray(v) for k, v in groups_from_labels(labels.tolist()).items()}
    positive_groups = [k for k, v in groups.items() if len(v) >= 2]
    if not positive_groups or len(groups) < 2:
        raise ValueError("need a label with two images and at least two labels to sample positives and negatives")
    num_positive = num_pairs // 2
    sizes = np.asarray([len(v) for v in groups.values()], np.int64)
    possible = {True: int((sizes * (sizes - 1)).sum()), False: int(labels.size ** 2 - (sizes ** 2).sum())}
    for want_positive, count in ((True, num_positive), (False, num_pairs - num_positive)):
        if count > possible[want_positive] // 2:  # asked at once, not after millions of draws
            kind = "positive" if want_positive else "negative"
            raise ValueError(f"num_pairs={num_pairs} asks for {count} distinct {kind} pairs, but the {labels.size} "
                             f"images ({len(groups)} labels) allow {possible[want_positive]} ordered ones; ask for at "
                             f"most {2 * (min(possible.values()) // 2)} pairs")
    rng = np.random.default_rng(seed)
    pairs, seen = [], set()
    for want_positive, count in ((True, num_positive), (False, num_pairs - num_positive)):
        made, attempts = 0, 0
        while made < count:
            attempts += 1
            if attempts > 100 * count + 1000:
                raise ValueError(f"cannot find {count} distinct {'positive' if want_positive else 'negative'} pairs")
            if want_positive:
                members = groups[positive_groups[rng.integers(len(positive_groups))]]
                i, j = rng.choice(members, 2, replace=False)
            else:
                i, j = rng.integers(labels.size, size=2)
                if labels[i] == labels[j]:
                    continue
            if (i, j) in seen:
                continue
            seen.add((i, j))
            pairs.append(Pair(ids[i], ids[j], int(want_positive)))
            made += 1
    return pairs


def positive_references(groups: dict[Hashable, Sequence[int]], num_items: int, max_references: int = 20,
                        seed: int = 0) -> list[list[int]]:
    """For each item, other items sharing a group with it (same class, or same outfit for Polyvore).

    Args:
      groups: ``{group: member indices}``; an item may belong to several groups.
      num_items: the number of items.
      max_references: the most references per item, sampled without replacement where there are more.
      seed: the sampling seed; the references are a deterministic function of it.

    Returns:
      For each item, its references' indices, ascending.
    """
    if max_references < 1:
        raise ValueError(f"max_references must be >= 1, got {max_references}")
    member_arrays = [np.asarray(list(members), np.int64) for members in groups.values()]
    item_groups: list[list[int]] = [[] for _ in range(num_items)]
    for g, members in enumerate(member_arrays):
        if members.size and (members.min() < 0 or members.max() >= num_items):
            raise ValueError(f"a group member is outside [0, {num_items})")
        for i in members.tolist():
            item_groups[i].append(g)
    rng = np.random.default_rng(seed)
    out = []
    for i, gs in enumerate(item_groups):
        others = np.unique(np.concatenate([member_arrays[g] for g in gs])) if gs else np.zeros(0, np.int64)
        others = others[others != i]
        if others.size > max_references:
            others = np.sort(rng.choice(others, max_references, replace=False))
        out.append(others.tolist())
    return out
