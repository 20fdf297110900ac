"""``experiments.explain`` from the command line and in-process on the session's trained model and
attribute predictor, and the README's "Explain your own pairs" commands."""

import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, fresh_module, run_command_in_process, run_module


def png_header(width, height):
    """A PNG that declares ``width x height`` 8-bit RGB pixels and holds none (enough for PIL to open it)."""
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IEND", b""))


def test_explain_command_on_user_images(tmp_path, trained_similarity, trained_attributes, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (50, 70, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(rng.integers(0, 255, (90, 40, 3), dtype=np.uint8)).save(tmp_path / "b.jpg", format="JPEG")
    Image.fromarray(rng.integers(0, 255, (33, 33), dtype=np.uint8), mode="L").save(tmp_path / "c.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    attributes = trained_attributes / "lambda_0" / "checkpoints"
    command = ("experiments.explain", f"--checkpoint={trained_similarity}", f"--query={tmp_path / 'a.png'}",
               f"--reference={tmp_path / 'b.jpg'}", f"--attributes={attributes}", "--num_masks=100",
               f"--out={tmp_path / 'out1'}", f"--compilation_cache={tmp_path / 'xla'}")
    proc = run_module(*command)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the programs it compiled are in its compilation cache, and a second run reads every one back
    # (it adds no entry) and prints the same
    cached = sorted(p.name for p in (tmp_path / "xla").iterdir())
    assert any(name.startswith("jit__map_queries_jit-") for name in cached), cached
    again = run_module(*command)
    assert again.returncode == 0 and again.stdout == proc.stdout, again.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "xla").iterdir()) == cached
    assert "similarity" in proc.stdout and "top attributes (concept selector): " in proc.stdout
    assert re.search(r"\w+:\w+ \([+-]\d+\.\d% without it\)", proc.stdout), proc.stdout
    assert (tmp_path / "out1" / "pair_0000.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "out1" / "pair_0000_correspondence.png").read_bytes()[:4] == b"\x89PNG"
    # the pair's line, then its three strongest correspondences (exact for the trained pooled model)
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert "top attributes" in lines[0] and "top correspondences (pooled_pair" in lines[1]
    assert [re.match(r"\s+(\d)\. y \d+:\d+ x \d+:\d+ ~ y \d+:\d+ x \d+:\d+: -?\d+\.\d% \(-?\d+\.\dx average\)$",
                     line).group(1) for line in lines[2:5]] == ["1", "2", "3"]
    assert "against the average of the 256 cell pairs" in lines[1]  # 4 x 4 cells on each image
    assert lines[5].strip().startswith("correspondence figure") and len(lines) == 6
    # no library INFO logs (orbax/absl wrote 31 of 32 lines for one pair)
    assert not re.search(r"^I\d{4} ", proc.stderr, re.M), proc.stderr[-2000:]
    (tmp_path / "images").mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        shutil.copy(tmp_path / name, tmp_path / "images" / name)
    (tmp_path / "images" / "broken.png").write_bytes(b"not an image")
    (tmp_path / "images" / "bomb.png").write_bytes(png_header(20000, 20000))  # 400 Mpx: PIL's DecompressionBombError
    grey16 = (np.arange(40 * 40).reshape(40, 40) * 40).astype(np.uint16)
    Image.fromarray(grey16).save(tmp_path / "images" / "g16.png")  # 16-bit greyscale
    (tmp_path / "pairs.txt").write_text("\ufeffa b 1\nbroken c 0\nc a 0\nbomb a 1\n../a.png c 0\ng16 a 0\n")
    from experiments import explain

    capsys.readouterr()
    config = explain.default_config()
    config.update(checkpoint=str(trained_similarity), pairs=str(tmp_path / "pairs.txt"),
                  image_dir=str(tmp_path / "images"), method="sliding_window")
    results = explain.run(config, str(tmp_path / "out2"))
    out, err = capsys.readouterr()
    assert results["failures"] == 3 and results["num_pairs"] == 6 and len(results["pairs"]) == 3
    assert "broken.png" in err and len(re.findall(r": similarity -?\d", out)) == 3
    assert "bomb.png: DecompressionBombError" in err and "'../a.png' leaves its folder" in err
    assert sorted(p.name for p in (tmp_path / "out2").iterdir()) == [
        f"pair_{i:04d}{suffix}.png" for i in (0, 2, 5) for suffix in ("", "_correspondence")]
    # the printed shares are the exact decomposition's: the strongest cell pairs' entries over the similarity
    first = results["pairs"][0]
    assert first["correspondence_method"] == "pooled_pair" and len(first["correspondences"]) == 3
    contributions = [c["contribution"] for c in first["correspondences"]]
    assert contributions == sorted(contributions, reverse=True)
    for c in first["correspondences"]:
        assert c["share"] == pytest.approx(c["contribution"] / first["similarity"], rel=1e-4)
        for y0, x0, y1, x1 in (c["query_box"], c["reference_box"]):
            assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32

    # --json: one record per pair; the concept selector's shares are the similarity each attribute's removal loses
    from simexplain_jax.attributes import concept_relevance, load_concepts
    from simexplain_jax.imageops import normalize_images
    from simexplain_jax.models import embed_fn
    from simexplain_jax.models.loading import load_trained
    from simexplain_jax.saliency.cache import fingerprint

    config = explain.default_config()
    config.update(checkpoint=str(trained_similarity), query=str(tmp_path / "a.png"), reference=str(tmp_path / "c.png"),
                  attributes=str(attributes), method="sliding_window", json=True)
    results = explain.run(config, str(tmp_path / "out3"))
    (record,) = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert record == json.loads(json.dumps(results["pairs"][0]))
    assert record["selector"] == "concept" and len(record["attributes"]) == 3 and len(record["correspondences"]) == 3
    model, variables, model_config = load_trained(str(trained_similarity / "checkpoints"))
    embed = embed_fn(model, variables)
    concepts = load_concepts(attributes / "concepts.json", model=fingerprint(embed))
    images = normalize_images(np.stack([explain.load_image(str(tmp_path / n), model_config["image_size"])
                                        for n in ("a.png", "c.png")]))
    e = np.asarray(embed(images))
    relevance = concept_relevance(concepts, e[:1], e[1:], scorer="removal")[0]
    assert concepts.shifts is not None  # train_attributes fits pattern directions
    names = json.loads((attributes / "config.json").read_text())["attribute_names"]
    for entry in record["attributes"]:
        assert entry["share"] == pytest.approx(relevance[names.index(entry["name"])] / record["similarity"], rel=1e-3)
    config.update(selector="pair_aware", json=False)
    text = explain.run(config, str(tmp_path / "out4"))
    assert "top attributes (pair_aware selector)" in capsys.readouterr().out
    assert all("share" not in a for a in text["pairs"][0]["attributes"])
    # concepts fitted for another similarity model are refused, naming both fingerprints
    other = json.loads((attributes / "concepts.json").read_text())
    foreign = tmp_path / "foreign"
    shutil.copytree(attributes, foreign)
    (foreign / "concepts.json").write_text(json.dumps(dict(other, model="0123456789abcdef0123")))
    config.update(selector="concept", attributes=str(foreign))
    with pytest.raises(ValueError, match=f"fingerprint 0123456789abcdef0123, not for this one \\({fingerprint(embed)}\\)"):
        explain.run(config, str(tmp_path / "out5"))
    assert not (tmp_path / "out5").exists()  # refused before anything was written


def test_compilation_cache_defaults_to_jax_settings_then_the_user_cache(monkeypatch, tmp_path):
    """JAX's settings (from its environment variables at import) come first; the session's are
    restored afterwards."""
    import jax

    from experiments.stages import default_compilation_cache

    names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir")
    session = {name: getattr(jax.config, name) for name in names}
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    try:
        jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", None)
        assert default_compilation_cache() == str(tmp_path / "home" / ".cache" / "simexplain_jax" / "jax")
        monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
        assert default_compilation_cache() == str(tmp_path / "xdg" / "simexplain_jax" / "jax")
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "jax"))
        assert default_compilation_cache() == str(tmp_path / "jax")
        jax.config.update("jax_enable_compilation_cache", False)
        assert default_compilation_cache() == ""
    finally:
        for name, value in session.items():
            jax.config.update(name, value)
    # and from the environment, as a command line starts
    env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
    code = "from experiments.stages import default_compilation_cache; print(repr(default_compilation_cache()))"
    for extra, expected in (({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "env")}, str(tmp_path / "env")),
                            ({"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "env"), "JAX_ENABLE_COMPILATION_CACHE": "0"},
                             "")):
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             env=dict(env, **extra), check=True).stdout
        assert out.strip() == repr(expected), out


def test_an_unusable_compilation_cache_is_reported_and_left_off(tmp_path, monkeypatch, capsys):
    """JAX itself only warned ``Error reading persistent compilation cache entry for 'jit_stage':
    FileNotFoundError`` for a folder it could not create."""
    import jax

    from experiments.stages import use_compilation_cache

    settings = {}
    monkeypatch.setattr(jax.config, "update", lambda name, value: settings.__setitem__(name, value))
    monkeypatch.delenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", raising=False)
    (tmp_path / "file").write_text("")
    assert use_compilation_cache(str(tmp_path / "file" / "cache")) == ""
    assert settings == {"jax_enable_compilation_cache": False}
    err = capsys.readouterr().err
    assert err.startswith(f"warning: --compilation_cache={tmp_path / 'file' / 'cache'} cannot be used (")
    assert err.endswith("running without it\n") and err.count("\n") == 1
    settings.clear()
    assert use_compilation_cache(str(tmp_path / "new" / "cache")) == str(tmp_path / "new" / "cache")
    assert settings == {"jax_enable_compilation_cache": True, "jax_compilation_cache_dir": str(tmp_path / "new" / "cache"),
                        "jax_persistent_cache_min_compile_time_secs": 0.0}
    assert (tmp_path / "new" / "cache").is_dir() and not capsys.readouterr().err
    settings.clear()
    assert use_compilation_cache("") == "" and settings == {"jax_enable_compilation_cache": False}


def readme_section(title):
    text = open(os.path.join(ROOT, "README.md")).read()
    section = text[text.index(f"## {title}"):]
    return section[: section.index("\n## ", 1)]


def test_the_readme_explain_commands_run(tmp_path, trained_similarity, trained_attributes, monkeypatch, capsys):
    """Every command of the README's "Explain your own pairs" (a model trained here, --model with the
    README's NNX factory, --torchvision_weights), in a folder holding the files they name; the
    masks are fewer and the ResNet's input smaller here (appended flags) to keep the suite fast.
    The flags are parsed as the command line does, in this process (``run_command_in_process``;
    ``test_explain_command_on_user_images`` runs the command as a subprocess)."""
    import shlex

    from PIL import Image

    from test_models import torchvision_state_dict
    from test_user_models import state_dict_tensors, write_torch_zip

    section = readme_section("Explain your own pairs")
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)[0]
    commands = [shlex.split(c) for c in bash.replace("\\\n", " ").splitlines() if c.startswith("python -m")]
    (factory,) = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(commands) == 4 and {c[2] for c in commands} == {"experiments.explain"}
    (tmp_path / "my_models.py").write_text(factory)
    (tmp_path / "workdir" / "demo" / "attributes" / "lambda_0").mkdir(parents=True)
    os.symlink(trained_similarity, tmp_path / "workdir" / "demo" / "similarity")
    os.symlink(trained_attributes / "lambda_0" / "checkpoints",
               tmp_path / "workdir" / "demo" / "attributes" / "lambda_0" / "checkpoints")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for name, size in (("a.png", (50, 70, 3)), ("b.jpg", (40, 40, 3))):
        Image.fromarray(rng.integers(0, 255, size, dtype=np.uint8)).save(tmp_path / name)
        shutil.copy(tmp_path / name, tmp_path / "images" / name)
    (tmp_path / "pairs.txt").write_text("a.png b.jpg 1\nb.jpg a.png 0\n")
    write_torch_zip(tmp_path / "resnet18.pth", state_dict_tensors(
        torchvision_state_dict("basic", (2, 2, 2, 2), width=64, num_classes=1000)), monkeypatch, prefix="resnet18")
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the README's factory module, as PYTHONPATH=. would
    fresh_module(monkeypatch, "my_models")
    for command in commands:
        assert command[:3] == ["python", "-m", "experiments.explain"]
        extra = ["--num_masks=50"] + (["--image_size=64"] if any("torchvision" in a for a in command) else [])
        status = run_command_in_process("experiments.explain", *command[3:], *extra)
        out, err = capsys.readouterr()
        assert status == 0, (command, err[-3000:])
        if "--json" in command:
            records = [json.loads(line) for line in out.splitlines()]
            assert [r["index"] for r in records] == [0, 1]
        else:
            assert "a.png ~ b.jpg: similarity" in out and "top correspondences" in out, out
        if "--attributes" in " ".join(command):
            assert "top attributes (concept selector)" in out


def test_the_readmes_saliency_eval_command_explains_the_readmes_factory(tmp_path, shapes32_dir):
    """The README's ``saliency_eval`` command with ``--config.similarity_model.factory`` (the README's
    NNX factory, 64 px input, fed the 32 px benchmark resized), on the small benchmark with one row."""
    import shlex

    section = readme_section("Explain your own pairs")
    experiments_block = re.findall(r"```bash\n(.*?)```", section, re.S)[1]
    commands = [shlex.split(c) for c in experiments_block.replace("\\\n", " ").splitlines() if c.startswith("python -m")]
    assert [c[2] for c in commands] == ["experiments.saliency_eval", "experiments.sane"]
    assert any(a.startswith("--config.similarity_model.torchvision_weights=") for a in commands[1])
    (factory,) = re.findall(r"```python\n(.*?)```", section, re.S)
    (tmp_path / "my_models.py").write_text(factory)
    command = [a + ":runlocal" if a.startswith("--config=") else a for a in commands[0][1:]]
    proc = subprocess.run([sys.executable, *command, f"--config.data_dir={shapes32_dir}", "--config.rows=rise:fixed",
                           "--config.num_pairs=4", "--config.insertion_steps=11"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])))
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "workdir" / "my_model_saliency" / "results.json") as f:
        results = json.load(f)
    assert results["similarity_model"]["factory"] == "my_models:factory" and results["dataset"] == "shapes/32px"
    assert [r["method"] for r in results["rows"]] == ["rise"] and not (tmp_path / "workdir" / "my_model_saliency" /
                                                                        "similarity").exists()
