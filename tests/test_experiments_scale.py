"""The experiments on many devices and processes, killed and resumed, and in bfloat16.

Eight devices are this process's (conftest); several processes and kills run subprocesses."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import ROOT, SALIENCY, stage_config, subprocess_env


def test_experiments_on_eight_devices(tmp_path, shapes32_dir, trained_similarity, saliency_on_one_device):
    """saliency_eval shards its queries (and RISE masks) over 8 devices with the same maps and AUCs
    as on one device (the session's run of every row); train_similarity runs data-parallel steps
    over 8 devices with fully sharded parameters (saved by orbax), train_attributes with replicated ones."""
    from experiments import saliency_eval, train_attributes, train_similarity

    one, _ = saliency_on_one_device
    rows = ["rise:fixed", "sliding_window:fixed", "lime:fixed"]
    # all 8 devices: 4 on the pairs axis, each query's RISE masks split over 2
    saliency_eval.run(stage_config(SALIENCY, mesh_masks=2, data_dir=shapes32_dir, rows=rows,
                                   similarity_workdir=str(trained_similarity)), str(tmp_path / "eight"))
    assert json.loads((tmp_path / "eight" / "results.json").read_text())["devices_per_process"] == 8
    by_row = {f"{r['method']}:{r['reference']}": r for r in json.loads((one / "results.json").read_text())["rows"]}
    a = [by_row[row] for row in rows]
    b = json.loads((tmp_path / "eight" / "results.json").read_text())["rows"]
    assert [f"{r['method']}:{r['reference']}" for r in b] == rows
    for x, y in zip(a, b):
        for cached in sorted((one / "cache" / x["method"]).glob("q*.npz")):
            one_maps = np.load(cached)["maps"]
            eight_maps = np.load(tmp_path / "eight" / "cache" / x["method"] / cached.name)["maps"]
            np.testing.assert_allclose(eight_maps, one_maps, rtol=0, atol=1e-5 * float(np.abs(one_maps).max()),
                                       err_msg=x["method"])
        # RISE maps sit on an offset of about N * E[s] with small variations: float rounding can swap
        # the ranks of near-tied pixels, which moves the AUCs (x100) by a few hundredths
        assert y["insertion_auc"] == pytest.approx(x["insertion_auc"], abs=0.25)
        assert y["deletion_auc"] == pytest.approx(x["deletion_auc"], abs=0.25)
    train_similarity.run(stage_config("experiments/configs/similarity_shapes.py:runlocal", data_dir=shapes32_dir,
                                      mesh_devices=8, num_steps=20, eval_every=10, checkpoint_every=10,
                                      param_sharding="fully_sharded"), str(tmp_path / "train"))
    assert json.loads((tmp_path / "train" / "results.json").read_text())["steps"] == 20
    train_attributes.run(stage_config("experiments/configs/attributes_shapes.py:runlocal", data_dir=shapes32_dir,
                                      similarity_workdir=str(trained_similarity), mesh_devices=8, num_epochs=1,
                                      lambdas=[0.1]), str(tmp_path / "attributes"))
    assert json.loads((tmp_path / "attributes" / "results.json").read_text())["runs"][0]["test_map"] > 0


def test_saliency_eval_two_processes(tmp_path, trained_similarity, saliency_on_one_device):
    """Two processes on localhost (gloo), 2 fake devices each, as the README's multi-host launch:
    each reads and explains its share of the pairs, process 0 writes the same table as one process
    (the session's run of every row on one device)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    common = [f"--config={SALIENCY}",
              f"--config.similarity_workdir={trained_similarity}", "--config.rows=rise:fixed",
              "--config.rows=random:fixed"]
    env = subprocess_env(devices=2)
    workers = [subprocess.Popen(  # no dataset yet: process 0 builds it while process 1 waits
        [sys.executable, "-m", "experiments.saliency_eval", *common, f"--workdir={tmp_path / 'two'}",
         f"--config.distributed.coordinator_address=localhost:{port}", "--config.distributed.num_processes=2",
         f"--config.distributed.process_id={i}"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in (0, 1)]
    outputs = [w.communicate(timeout=600) for w in workers]
    for w, (_, err) in zip(workers, outputs):
        assert w.returncode == 0, err[:3000] + "\n...\n" + err[-3000:]
    one, _ = saliency_on_one_device
    a = json.loads((one / "results.json").read_text())
    b = json.loads((tmp_path / "two" / "results.json").read_text())
    assert b["num_processes"] == 2 and b["devices_per_process"] == 2 and a["num_processes"] == 1
    assert [(r["method"], r["reference"]) for r in b["rows"]] == [("rise", "fixed"), ("random", "fixed")]
    fixed = {r["method"]: r for r in a["rows"] if r["reference"] == "fixed"}
    assert '"method": "rise"' in outputs[0][0] and '"method"' not in outputs[1][0]  # process 0 reports
    for cached in sorted((one / "cache" / "rise").glob("q*.npz")):
        one_maps = np.load(cached)["maps"]
        two_maps = np.load(tmp_path / "two" / "cache" / "rise" / cached.name)["maps"]
        np.testing.assert_allclose(two_maps, one_maps, rtol=0, atol=1e-5 * float(np.abs(one_maps).max()))
    for y in b["rows"]:
        x = fixed[y["method"]]
        # maps agree to float rounding; near-ties in a map can swap two pixels' ranks
        for field in ("insertion_auc", "deletion_auc"):
            assert y[field] == pytest.approx(x[field], abs=0.25), (x["method"], field)
        for field in ("pointing_accuracy", "mass_on_key"):
            assert y[field] == pytest.approx(x[field], abs=1e-4), (x["method"], field)
    cached = {p.name for p in (tmp_path / "two" / "cache" / "rise").glob("q*.npz")}
    assert cached == {p.name for p in (one / "cache" / "rise").glob("q*.npz")}  # by dataset index
    assert (tmp_path / "two" / "gallery.png").read_bytes()[:4] == b"\x89PNG"


def run_until_killed(args, kill_when, timeout=300):
    """Starts ``python -m experiments.saliency_eval ARGS`` and SIGKILLs it as soon as ``kill_when()``
    holds (polled every 10 ms: kill points are chosen by what the run has written, not by time)."""
    proc = subprocess.Popen([sys.executable, "-m", "experiments.saliency_eval", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ))
    deadline = time.monotonic() + timeout
    while not kill_when():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before its kill point: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail("the kill point was never reached")
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()


def test_saliency_eval_killed_anywhere_resumes_to_the_same_results(tmp_path, shapes32_dir, trained_similarity):
    """SIGKILL during RISE, then after RISE finished and during the mask method; the resumed run
    ends with the results.json of an uninterrupted run. Also: a second run on a workdir in use fails
    at once; a rerun with fewer rows merges into results.json and computes nothing. The killed runs
    are subprocesses (on one device); the others run in this process, on one device."""
    from experiments import saliency_eval
    from experiments.workdir_lock import WorkdirLock

    settings = dict(data_dir=shapes32_dir, similarity_workdir=str(trained_similarity), num_pairs=4,
                    insertion_steps=11, methods={"rise": {"num_masks": 100}, "perturbation": {"num_steps": 20}},
                    query_batch=1, mesh_devices=1)  # one query a step: a step per query of the 4 pairs

    def run_here(workdir, rows=("rise:fixed", "perturbation:fixed")):
        saliency_eval.run(stage_config(SALIENCY, rows=list(rows), **settings), str(workdir))

    common = [f"--config={SALIENCY}", f"--config.data_dir={shapes32_dir}",
              f"--config.similarity_workdir={trained_similarity}", "--config.num_pairs=4", "--config.insertion_steps=11",
              "--config.methods.rise.num_masks=100", "--config.methods.perturbation.num_steps=20",
              "--config.query_batch=1"]
    rows = ["--config.rows=rise:fixed", "--config.rows=perturbation:fixed"]
    run_here(tmp_path / "whole")
    with WorkdirLock(str(tmp_path / "busy")):  # a live run holds this workdir: a second one fails at once
        with pytest.raises(RuntimeError, match=f"is in use by process {os.getpid()}.*one run per workdir"):
            run_here(tmp_path / "busy")
    assert not (tmp_path / "busy" / "cache").exists()
    queries = len(list((tmp_path / "whole" / "cache" / "rise").glob("q*.npz")))
    assert queries >= 3
    work = tmp_path / "killed"
    args = [*common, *rows, f"--workdir={work}"]
    rise, mask = work / "cache" / "rise", work / "cache" / "perturbation"
    count = lambda folder: len(list(folder.glob("q*.npz"))) if folder.exists() else 0  # noqa: E731
    # 1. killed during RISE, once its first step is cached
    run_until_killed(args, lambda: count(rise) >= 1)
    assert 1 <= count(rise) < queries and not (work / "results.json").exists()
    # 2. killed after RISE finished (its row recorded), during the mask method
    run_until_killed(args, lambda: (work / "rows" / "rise.npz").exists() and count(mask) >= 1)
    assert count(rise) == queries and 1 <= count(mask) < queries, (count(rise), count(mask))
    stamps = {p: p.stat().st_mtime_ns for p in [*rise.glob("q*.npz"), *mask.glob("q*.npz"), work / "rows" / "rise.npz"]}
    # 3. resumed (the killed runs' locks are stale): only what was missing is computed
    run_here(work)
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # nothing finished was redone

    def table(path):
        results = json.loads(path.read_text())
        for row in results["rows"]:
            row.pop("seconds_per_pair")
        return results

    expected = table(tmp_path / "whole" / "results.json")
    assert table(work / "results.json") == expected
    for name in ("rise", "perturbation"):  # every map bit for bit
        for cached in sorted((tmp_path / "whole" / "cache" / name).glob("q*.npz")):
            np.testing.assert_array_equal(np.load(work / "cache" / name / cached.name)["maps"], np.load(cached)["maps"])
    # 4. a rerun with fewer rows keeps the other rows and, everything being done, computes nothing
    stamps = {p: p.stat().st_mtime_ns for p in (work / "rows").iterdir()}
    run_here(work, rows=["rise:fixed"])
    assert table(work / "results.json") == expected
    assert {p: p.stat().st_mtime_ns for p in (work / "rows").iterdir()} == stamps


def test_bfloat16_saliency_agrees_with_float32_on_the_trained_model(trained_similarity, shapes32_dir):
    """``compute_dtype="bfloat16"`` on the trained runlocal model (SmallCNN, shapes/32px, 12 positive
    test pairs): each RISE map correlates >= 0.99 with its float32 map; the pointing hits are the
    same, the mass on the key object moves by <= 0.02, the mean insertion and deletion AUCs (of 1, as
    Table 1 averages them) by <= 0.02. A single pair's AUC can move more: min-max normalisation
    amplifies small changes of a nearly flat curve (benchmarks/RESULTS.md)."""
    import jax

    import simexplain_jax as sx
    from simexplain_jax import engine
    from simexplain_jax.imageops import normalize_images, normalized_color
    from simexplain_jax.models import embed_fn
    from simexplain_jax.data.datasets import explanation_pairs
    from simexplain_jax.models.loading import load_trained

    model, variables, _ = load_trained(str(trained_similarity / "checkpoints"))
    data = explanation_pairs("shapes/32px", data_dir=shapes32_dir, num_pairs=24, seed=0)
    images = normalize_images(data.images)
    pairs = data.pairs[data.labels == 1]
    full_fn = embed_fn(model, variables)
    half_fn = engine.in_compute_dtype(full_fn, "bfloat16")
    config = dict(num_masks=1000, grid_size=4, batch_size=250)
    key = jax.random.key(0)
    full = sx.saliency.explain_pairs("rise", full_fn, images, images, key=key, pairs=pairs, config=config)
    half = sx.saliency.explain_pairs("rise", full_fn, images, images, key=key, pairs=pairs,
                                     config={**config, "compute_dtype": "bfloat16"})
    for a, b in zip(full, half):
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] >= 0.99
    for a, b, q in zip(full, half, pairs[:, 0]):
        pa, pb = sx.metrics.pointing(a, data.key_masks[q]), sx.metrics.pointing(b, data.key_masks[q])
        assert pa.hit == pb.hit and abs(pa.mass_on_key - pb.mass_on_key) <= 0.02
    background = normalized_color(127)
    scores = [sx.metrics.insertion_deletion_batch(f, images[pairs[:, 0]],
                                                  engine.apply_in_chunks(f, images[pairs[:, 1]]), maps,
                                                  background=background, num_steps=33, compute_dtype=dtype)
              for f, maps, dtype in ((full_fn, full, "float32"), (half_fn, half, "bfloat16"))]
    assert len(pairs) == 12
    assert abs(np.mean(scores[0].insertion_auc) - np.mean(scores[1].insertion_auc)) <= 0.02
    assert abs(np.mean(scores[0].deletion_auc) - np.mean(scores[1].deletion_auc)) <= 0.02
