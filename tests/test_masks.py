import math

import jax
import numpy as np
import pytest
from skimage.transform import resize

import simexplain_jax as sx
from simexplain_jax.masks import bilinear_upsample_matrix


def reference_rise_mask(key, index, grid_size, p, height, width):
    """The original RISE/SANE recipe with scikit-image, from the same random draws."""
    grid_key, shift_key = jax.random.split(jax.random.fold_in(key, index))
    grid = np.asarray(jax.random.bernoulli(grid_key, p, (grid_size, grid_size)), np.float64)
    cell_h, cell_w = math.ceil(height / grid_size), math.ceil(width / grid_size)
    dy = int(jax.random.randint(shift_key, (), 0, cell_h))
    dx = int(jax.random.randint(jax.random.fold_in(shift_key, 1), (), 0, cell_w))
    up = resize(grid, ((grid_size + 1) * cell_h, (grid_size + 1) * cell_w), order=1, mode="reflect",
                anti_aliasing=False)
    return up[dy:dy + height, dx:dx + width]


@pytest.mark.parametrize("grid_size,shape", [(8, (112, 112)), (5, (32, 40)), (7, (30, 30))])
def test_rise_masks_equal_the_scikit_image_recipe(grid_size, shape):
    key = jax.random.key(3)
    masks = np.asarray(sx.masks.rise_masks(shape, key=key, num_masks=6, grid_size=grid_size, p=0.5))
    assert masks.shape == (6, *shape) and masks.dtype == np.float32
    for i in range(6):
        np.testing.assert_allclose(masks[i], reference_rise_mask(key, i, grid_size, 0.5, *shape), atol=1e-6)


def test_upsample_matrix_is_a_partition_of_unity():
    u = bilinear_upsample_matrix(8, 126)
    np.testing.assert_allclose(u.sum(1), 1.0, atol=1e-6)
    assert u.min() >= 0


def test_rise_masks_statistics_and_determinism():
    key = jax.random.key(0)
    masks = sx.masks.rise_masks((32, 32, 3), key=key, num_masks=500, p=0.3)
    assert float(masks.min()) >= 0.0 and float(masks.max()) <= 1.0
    assert abs(float(masks.mean()) - 0.3) < 0.03
    np.testing.assert_array_equal(masks, sx.masks.rise_masks((32, 32), key=key, num_masks=500, p=0.3))
    # mask i does not depend on how many masks are drawn
    np.testing.assert_array_equal(masks[:7], sx.masks.rise_masks((32, 32), key=key, num_masks=7, p=0.3))
    assert not np.array_equal(masks, sx.masks.rise_masks((32, 32), key=jax.random.key(1), num_masks=500, p=0.3))


@pytest.mark.parametrize("kwargs,name", [
    (dict(num_masks=0), "num_masks"), (dict(num_masks=2.5), "num_masks"),
    (dict(p=0.0), "p"), (dict(p=1.5), "p"), (dict(p=-0.1), "p"),
    (dict(grid_size=0), "grid_size"), (dict(image_shape=(32,)), "image_shape"),
])
def test_rise_masks_bad_arguments(kwargs, name):
    args = dict(key=jax.random.key(0), num_masks=4, grid_size=4, p=0.5, image_shape=(16, 16))
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        sx.masks.rise_masks(**args)


def test_mask_makers_share_one_argument_order():
    import inspect

    for maker in (sx.masks.rise_masks, sx.masks.occlusion_masks, sx.masks.rise_mask_fn, sx.masks.occlusion_mask_fn):
        parameters = list(inspect.signature(maker).parameters.values())
        assert parameters[0].name == "image_shape", maker
        assert all(p.kind == p.KEYWORD_ONLY for p in parameters[1:]), maker


def test_occlusion_reference_geometry():
    masks = np.asarray(sx.masks.occlusion_masks((112, 112)))  # window 32, stride 4, padding 8
    assert masks.shape == (625, 112, 112)
    corners = -8 + 4 * np.arange(25)
    assert corners[0] == -8 and corners[-1] == 88
    for index in (0, 24, 312, 624):
        y0, x0 = corners[index // 25], corners[index % 25]
        expected = np.ones((112, 112), np.float32)
        expected[max(y0, 0):y0 + 32, max(x0, 0):x0 + 32] = 0.0
        np.testing.assert_array_equal(masks[index], expected)


def test_occlusion_generalises_and_rejects_windows_that_do_not_fit():
    masks = sx.masks.occlusion_masks((32, 48), window=8, stride=4, padding=2)
    assert masks.shape == (((32 + 4 - 8) // 4 + 1) * ((48 + 4 - 8) // 4 + 1), 32, 48)
    with pytest.raises(ValueError, match="window"):
        sx.masks.occlusion_masks((16, 16), window=40, stride=4, padding=0)
    with pytest.raises(ValueError, match="stride"):
        sx.masks.occlusion_masks((16, 16), window=4, stride=0)
