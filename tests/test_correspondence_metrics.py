"""Correspondence metrics: pointing, mass, cell order and second-order insertion/deletion."""

import jax.numpy as jnp
import numpy as np
import pytest

from simexplain_jax.metrics.correspondence import (cell_cover, cell_of, cell_order, correspondence_pointing,
                                                   second_order_insertion_deletion)
from simexplain_jax.similarity import dot

SIZE, GRID = 16, 4


def _key(box):
    mask = np.zeros((SIZE, SIZE), bool)
    y0, x0, y1, x1 = box
    mask[y0:y1, x0:x1] = True
    return mask


def test_cell_cover():
    cover = cell_cover(_key((0, 0, 2, 4)), (GRID, GRID))
    assert cover[0, 0] == pytest.approx(0.5) and cover.sum() == pytest.approx(0.5)


def test_pointing_hit_top_k_and_mass():
    key_q, key_r = _key((4, 12, 8, 16)), _key((8, 0, 12, 4))  # cells (1, 3) and (2, 0)
    corr = np.zeros((GRID, GRID, GRID, GRID))
    corr[1, 3, 2, 0] = 5.0
    corr[0, 0, 0, 0] = 4.0
    corr[1, 3, 3, 3] = 3.0
    result = correspondence_pointing(corr, key_q, key_r, k=3)
    assert result.hit and result.top_k == pytest.approx(1 / 3)
    assert result.mass == pytest.approx(5.0 / 12.0)  # the median is 0: positive mass 12, 5 of it on both
    corr[0, 0, 0, 0] = 6.0
    assert not correspondence_pointing(corr, key_q, key_r).hit
    with pytest.raises(ValueError, match="hqx|\\[hq, wq, hr, wr\\]"):
        correspondence_pointing(corr[0], key_q, key_r)
    with pytest.raises(ValueError, match="at least one pixel"):
        correspondence_pointing(corr, np.zeros((SIZE, SIZE), bool), key_r)


def test_cell_order_is_first_appearance():
    corr = np.zeros((1, 3, 1, 2), np.float32)  # query cells 0..2, reference cells 0..1
    corr[0, 2, 0, 1] = 3.0
    corr[0, 0, 0, 1] = 2.0
    corr[0, 1, 0, 0] = 1.0
    rank_q, rank_r = cell_order(jnp.asarray(corr))
    np.testing.assert_array_equal(rank_q, [1, 2, 0])
    np.testing.assert_array_equal(rank_r, [1, 0])


def _embed(images):  # the object's (channel 0) global mean and a constant: translation invariant
    return jnp.stack([images[..., 0].mean(axis=(1, 2)), jnp.full(images.shape[:1], 0.05)], axis=-1)


def _plain_curves(q, r, corr, steps, base_q=0.0, base_r=0.0):
    """The protocol written out: cells ranked by first appearance, inserted cell by cell into the
    substrates ``base_q`` and ``base_r``."""
    nq = GRID * GRID
    order = np.argsort(-corr.reshape(-1), kind="stable")
    seen_q, seen_r = [], []
    for index in order:
        a, b = divmod(int(index), nq)
        if a not in seen_q:
            seen_q.append(a)
        if b not in seen_r:
            seen_r.append(b)
    curves = np.zeros((2, steps))
    band = SIZE // GRID
    for s, t in enumerate(np.linspace(0, 1, steps)):
        k = int(np.round(nq * t))
        keep_q, keep_r = np.zeros((SIZE, SIZE), bool), np.zeros((SIZE, SIZE), bool)
        for keep, seen in ((keep_q, seen_q), (keep_r, seen_r)):
            for cell in seen[:k]:
                y, x = divmod(cell, GRID)
                keep[y * band:(y + 1) * band, x * band:(x + 1) * band] = True
        kq, kr = keep_q[..., None], keep_r[..., None]
        for row, (iq, ir) in enumerate([(np.where(kq, q, base_q), np.where(kr, r, base_r)),
                                        (np.where(kq, base_q, q), np.where(kr, base_r, r))]):
            e = _embed(jnp.stack([iq, ir]))
            curves[row, s] = float(dot(e[0], e[1]))
    return curves


def test_second_order_insertion_deletion():
    """The dot product of the objects' global means: a correspondence that ranks the two object cells first
    inserts both at the first step; one whose object cells rank last inserts them last."""
    q, r = np.zeros((SIZE, SIZE, 3), np.float32), np.zeros((SIZE, SIZE, 3), np.float32)
    q[4:8, 12:16, 0] = 1.0  # cell (1, 3)
    r[8:12, 0:4, 0] = 1.0  # cell (2, 0)
    good = np.random.default_rng(0).uniform(0, 0.1, (GRID,) * 4).astype(np.float32)
    good[1, 3, 2, 0] = 1.0
    bad = good.copy()
    bad[1, 3], bad[:, :, 2, 0] = -1.0, -1.0  # every pair holding an object cell ranks last
    result = second_order_insertion_deletion(_embed, np.stack([q, q]), np.stack([r, r]), np.stack([good, bad]),
                                             background=0.0, num_steps=9, batch_size=5, similarity=dot)
    np.testing.assert_allclose(result.insertion_curve[0], _plain_curves(q, r, good, 9)[0], atol=1e-6)
    np.testing.assert_allclose(result.deletion_curve[1], _plain_curves(q, r, bad, 9)[1], atol=1e-6)
    assert result.insertion_auc[0] > result.insertion_auc[1] + 0.3
    assert result.deletion_auc[0] < result.deletion_auc[1] - 0.3
    with pytest.raises(ValueError, match="correspondences"):
        second_order_insertion_deletion(_embed, q[None], r[None], good, background=0.0)


def test_second_order_substrates_default_to_unrelated_images():
    """One constant for both images makes the empty pair identical (the curves' maximum): by default
    each image is filled from another pair's image, and the curves are the plain loop's with them."""
    from simexplain_jax.metrics.correspondence import unrelated_substrates

    rng = np.random.default_rng(1)
    queries = rng.normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
    references = rng.normal(size=(3, SIZE, SIZE, 3)).astype(np.float32)
    corr = rng.normal(size=(3,) + (GRID,) * 4).astype(np.float32)
    base_q, base_r = unrelated_substrates(queries, references)
    for i in range(3):  # never the pair's own images, nor the two images of one other pair
        assert not any(np.array_equal(base_q[i], x) for x in (queries[i], references[i]))
        assert not np.array_equal(base_r[i], references[i])
        assert [j for j in range(3) if np.array_equal(base_q[i], queries[j])] != \
               [j for j in range(3) if np.array_equal(base_r[i], references[j])]
    result = second_order_insertion_deletion(_embed, queries, references, corr, num_steps=5, similarity=dot)
    for i in range(3):
        plain = _plain_curves(queries[i], references[i], corr[i], 5, base_q[i], base_r[i])
        np.testing.assert_allclose(result.insertion_curve[i], plain[0], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(result.deletion_curve[i], plain[1], rtol=1e-5, atol=1e-5)
    constant = second_order_insertion_deletion(_embed, queries, references, corr, background=0.5,
                                               reference_background=-0.5, num_steps=5, similarity=dot)
    plain = _plain_curves(queries[0], references[0], corr[0], 5, 0.5, -0.5)
    np.testing.assert_allclose(constant.insertion_curve[0], plain[0], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at least 2 pairs"):
        unrelated_substrates(queries[:1], references[:1])
    with pytest.raises(ValueError, match="reference_background of shape"):
        second_order_insertion_deletion(_embed, queries, references, corr, background=0.0,
                                        reference_background=np.zeros((2, SIZE, SIZE, 3)))


@pytest.mark.parametrize("size,cells", [(32, 8), (10, 3), (7, 7), (64, 5)])
def test_cell_boxes_hold_exactly_the_pixels_of_their_cell(size, cells):
    from simexplain_jax.saliency import cell_box

    rows = cell_of(size, cells)
    for row in range(cells):
        y0, x0, y1, x1 = cell_box(row, cells - 1 - row, (cells, cells), (size, size))
        assert (y0, y1) == (np.flatnonzero(rows == row)[0], np.flatnonzero(rows == row)[-1] + 1)
        assert (x0, x1) == (np.flatnonzero(rows == cells - 1 - row)[0], np.flatnonzero(rows == cells - 1 - row)[-1] + 1)


def test_strongest_pairs_are_the_largest_entries_with_their_share():
    from simexplain_jax.saliency import strongest_pairs

    corr = np.zeros((2, 2, 4, 4))
    corr[1, 0, 3, 2] = 0.5
    corr[0, 1, 0, 0] = 0.3
    corr[0, 0, 1, 1] = -0.2  # negative: never among the strongest while a larger entry remains
    pairs = strongest_pairs(corr, (8, 8, 3), (16, 16, 3), k=2)
    assert [p.query_box for p in pairs] == [(4, 0, 8, 4), (0, 4, 4, 8)]
    assert [p.reference_box for p in pairs] == [(12, 8, 16, 12), (0, 0, 4, 4)]
    np.testing.assert_allclose([p.contribution for p in pairs], [0.5, 0.3])
    np.testing.assert_allclose([p.share for p in pairs], [0.5 / 0.6, 0.3 / 0.6])
    with pytest.raises(ValueError, match="one pair's"):
        strongest_pairs(corr[None], (8, 8, 3), (16, 16, 3))
