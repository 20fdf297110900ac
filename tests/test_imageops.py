import numpy as np
import pytest
from scipy import ndimage

from simexplain_jax.imageops import gaussian_blur, rise_kernel, rise_kernel_1d


def gkern_scipy(klen: int, nsig: float) -> np.ndarray:
    """RISE's own construction: SciPy's Gaussian filter (defaults: reflect, truncate 4) of a centred impulse."""
    impulse = np.zeros((klen, klen))
    impulse[klen // 2, klen // 2] = 1.0
    return ndimage.gaussian_filter(impulse, nsig)


@pytest.mark.parametrize("klen,nsig", [(11, 5.0), (11, 1.0), (7, 2.5), (5, 0.6), (3, 10.0), (1, 5.0), (21, 3.0)])
def test_kernel_is_rises_gkern(klen, nsig):
    expected = gkern_scipy(klen, nsig)
    got = rise_kernel(klen, nsig)
    assert got.shape == (klen, klen)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.sum(), 1.0, atol=1e-12)  # the reflect boundary keeps all the mass


def test_default_kernel_folds_the_tails_back_in():
    # With radius 20 against 11 taps the reflected tails matter: a Gaussian merely sampled on the
    # 11 taps is off by ~3e-3 at the corners, well beyond the 1e-12 agreement above.
    x = np.arange(11) - 5.0
    sampled = np.exp(-x**2 / 50.0)
    sampled = np.outer(sampled, sampled) / sampled.sum() ** 2
    assert np.abs(sampled - gkern_scipy(11, 5.0)).max() > 3e-3
    k = rise_kernel_1d()
    np.testing.assert_allclose(k, k[::-1], atol=0)
    assert np.all(np.diff(k[:6]) > 0)  # still peaked at the centre


def direct_blur(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D correlation with zero padding (the kernel is symmetric, so also a convolution)."""
    h, w, _ = image.shape
    r = kernel.shape[0] // 2
    padded = np.pad(image.astype(np.float64), ((r, r), (r, r), (0, 0)))
    out = np.zeros(image.shape)
    for a in range(kernel.shape[0]):
        for b in range(kernel.shape[1]):
            out += kernel[a, b] * padded[a:a + h, b:b + w]
    return out


@pytest.mark.parametrize("klen,nsig,shape", [(11, 5.0, (23, 18, 3)), (5, 1.5, (9, 12, 2)), (11, 5.0, (6, 7, 1))])
def test_blur_equals_direct_2d_convolution_with_zero_padding(klen, nsig, shape):
    image = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    expected = direct_blur(image, gkern_scipy(klen, nsig))
    got = np.asarray(gaussian_blur(image, klen, nsig))
    assert got.shape == shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6)
    # and SciPy's own zero-padded convolution, channel by channel
    for c in range(shape[-1]):
        scipy_c = ndimage.convolve(image[..., c].astype(np.float64), gkern_scipy(klen, nsig), mode="constant", cval=0.0)
        np.testing.assert_allclose(got[..., c], scipy_c, rtol=0, atol=2e-6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="kernel_size"):
        rise_kernel(10, 5.0)
    with pytest.raises(ValueError, match="kernel_size"):
        gaussian_blur(np.zeros((8, 8, 3), np.float32), kernel_size=0)
    with pytest.raises(ValueError, match="sigma"):
        rise_kernel_1d(11, 0.0)
