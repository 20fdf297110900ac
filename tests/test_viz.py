"""Figures: real PNGs, and the caller's matplotlib backend is left alone."""

import os
import subprocess
import sys
import textwrap

import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent("""
    import sys
    import matplotlib
    import numpy as np
    from simexplain_jax import viz
    viz.curves(sys.argv[1], {"rise": (np.linspace(0, 1, 11), np.linspace(1, 0, 11))})
    print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
""")


def test_import_and_drawing_keep_the_callers_backend(tmp_path):
    env = dict(os.environ, MPLBACKEND="svg")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "c.png")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["svg", "False"]
    image = np.asarray(Image.open(tmp_path / "c.png").convert("RGB"))
    assert image.shape == (400, 1000, 3) and image.std() > 5  # 10 x 4 inches at 100 dpi, with lines drawn


def test_overlay_blends_the_map_over_the_image():
    from simexplain_jax import viz

    image = np.full((4, 4, 3), 200, np.uint8)
    saliency = np.zeros((4, 4))
    saliency[0, 0] = 1.0
    out = viz.overlay(image, saliency, alpha=0.5, cmap="gray")
    assert out.dtype == np.uint8 and out.shape == (4, 4, 3)
    np.testing.assert_allclose(out[0, 0], np.floor((0.5 * 200 / 255 + 0.5) * 255), atol=1)  # white over grey
    np.testing.assert_allclose(out[1, 1], np.floor(0.5 * 200), atol=1)  # black over grey


def test_correspondence_figure_draws_the_strongest_pairs(tmp_path):
    from simexplain_jax import viz
    from simexplain_jax.saliency import strongest_pairs

    images = np.full((2, 32, 32, 3), 90, np.uint8)
    corr = np.zeros((2, 4, 4, 4, 4))
    corr[:, 0, 0, 3, 3] = 1.0  # top-left cell of the query ~ bottom-right cell of the reference
    pairs = [strongest_pairs(c, (32, 32), (32, 32), k=1) for c in corr]
    maps = np.random.default_rng(0).random((2, 32, 32))
    path = viz.correspondence_figure(str(tmp_path / "c.png"), images, images, pairs, maps, maps,
                                     captions=["a", "b"], title="t")
    picture = np.asarray(Image.open(path).convert("RGB")).astype(int)
    red = (picture[..., 0] > 200) & (picture[..., 1] < 90) & (picture[..., 2] < 90)  # the strongest pair's colour
    assert picture.shape[0] > picture.shape[1] / 2 and red.sum() > 100
    # the line runs left to right and top to bottom in each row: red pixels span the side-by-side panel
    columns = np.flatnonzero(red.any(axis=0))
    assert columns.max() - columns.min() > picture.shape[1] / 4
