"""The README's "Your own images" command, end to end on a small folder made here (crops of
scikit-image's sample photos with made-up attributes), with ``:runlocal`` appended to its config."""

import json
import os
import re
import shlex
import subprocess
import sys

from conftest import ROOT, subprocess_env
from test_data_folder import make_attribute_folder


def test_sane_runs_end_to_end_on_an_image_folder(tmp_path):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index("## Your own images"):]
    section = section[: section.index("\n## ", 1)]
    (bash,) = re.findall(r"```bash\n(.*?)```", section, re.S)
    (command,) = [shlex.split(c) for c in bash.replace("\\\n", " ").splitlines() if c.startswith("python -m")]
    command = [a + ":runlocal" if a.startswith("--config=") else a for a in command]
    make_attribute_folder(tmp_path / "my_images", per_label=16, held_out=4)
    env = subprocess_env()  # one CPU device, as the user's shell has
    proc = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=1800,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "workdir" / "my_images" / "results.json").read_text())
    assert results["similarity"]["dataset"] == "attribute_folder/64px"
    rows = results["saliency"]["rows"]
    assert rows and all(r["pointing_accuracy"] is None for r in rows)  # no ground-truth masks
    assert all(r["gt_top1"] is None and r["regret_ratio"] is not None for r in results["explanations"]["rows"])
    assert results["explanations"]["oracle"] == "activation-map region removal"
    # no scenes to re-render: the edit directions are skipped, saying why, and the label fits run
    concepts = results["explanations"]["concepts"]
    assert concepts["skipped"] == {"edits": "attribute_folder/64px has no scenes to re-render"}
    assert set(concepts["fitted_by_method"]) == {"pattern", "ridge", "fastcav", "mlp"}
    page = (tmp_path / "workdir" / "my_images" / "report.html").read_text()
    assert "Pointing accuracy and mass on the key object are left out" in page
    assert "Ground-truth top-1 / top-3 are left out" in page and "<th>gt_top1</th>" not in page
    assert "In progress" not in page and page.count("data:image/png;base64,") >= 4
