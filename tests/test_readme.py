"""The README's API tour runs as written."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def tour_blocks():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## A tour of the API"):]
    section = section[: section.index("\n## ", 1)]
    return re.findall(r"```python\n(.*?)```", section, re.S)


def test_the_api_tour_runs(capsys):
    blocks = tour_blocks()
    assert blocks, "the tour has no python block"
    namespace = {}
    for block in blocks:
        exec(compile(block, "README.md (tour)", "exec"), namespace)
    assert namespace["sal"].shape == (64, 64) and namespace["two"].shape == (2, 64, 64)
    assert namespace["maps"].shape == (3, 64, 64)
    pair = namespace["pair"]
    assert pair.correspondence.shape == (8, 8, 8, 8) and abs(float(pair.correspondence.sum() - pair.similarity)) < 1e-5
    assert len(namespace["top3"]) == 3 and namespace["black"].correspondence.shape == (8, 8, 8, 8)
    assert namespace["listed"].correspondence.shape == (3, 8, 8, 8, 8)
    insertion, deletion = (float(v) for v in capsys.readouterr().out.split())
    assert 0.0 <= insertion <= 1.0 and 0.0 <= deletion <= 1.0
