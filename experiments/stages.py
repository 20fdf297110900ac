"""Running an earlier stage when its output is missing (orchestration shared by the experiments)."""

from __future__ import annotations

import os
import subprocess
import sys

from absl import logging


def ensure_stage(module: str, config: str, workdir: str, overrides: dict) -> str:
    """Runs ``python -m experiments.<module> --config=<config> --workdir=<workdir>`` unless
    ``<workdir>/results.json`` exists (the stage's completion marker). Returns ``workdir``."""
    if not os.path.exists(os.path.join(workdir, "results.json")):
        logging.warning("running stage %s (%s) into %s", module, config, workdir)
        command = [sys.executable, "-m", f"experiments.{module}", f"--config={config}", f"--workdir={workdir}"]
        command += [f"--config.{k}={v}" for k, v in overrides.items() if v not in (None, "")]
        subprocess.run(command, check=True)
    return workdir
