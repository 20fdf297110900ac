"""The library's import structure: one way through the code (checked on the source, no imports run)."""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "simexplain_jax"

# a module may import only modules of its own layer or below (0 = leaves)
LAYERS = {
    "similarity": 0, "masks": 0, "imageops": 0, "parallel": 0, "io": 0, "integrity": 0, "trained_config": 0,
    "checks": 1, "engine": 1, "checkpoint": 1,
    "data": 2, "models": 2,
    "saliency": 3,
    "metrics": 4, "attributes": 4,
    "train": 5, "viz": 5,
}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_imports(node: ast.AST, current: str) -> list[str]:
    """simexplain_jax modules named by one import statement (relative imports resolved)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.startswith("simexplain_jax")]
    if isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            package = current.split(".")[: len(current.split(".")) - node.level + (current.endswith("__init__"))]
            base = ".".join(package + ([base] if base else []))
        if base.startswith("simexplain_jax"):
            return [f"{base}.{alias.name}" for alias in node.names] + [base]
    return []


def modules():
    return {module_name(p): ast.parse(p.read_text()) for p in PACKAGE.rglob("*.py")}


def top_level(name: str) -> str:
    return name.split(".")[1] if name.count(".") else ""


def test_no_function_level_imports_of_the_project():
    """An import inside a function body is how an import cycle hides: none in the library (a
    package's lazy ``__getattr__`` is the one allowed form)."""
    offenders = []
    for name, tree in modules().items():
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)) or function.name == "__getattr__":
                continue
            for node in ast.walk(function):
                if project_imports(node, name):
                    offenders.append(f"{name}.{function.name} (line {node.lineno})")
    assert not offenders, offenders


def test_imports_flow_down_the_layers_and_form_no_cycle():
    trees = modules()
    known = set(trees)
    graph = {}
    wrong_way = []
    for name, tree in trees.items():
        targets = set()
        for node in tree.body:
            for target in project_imports(node, name):
                while target not in known and "." in target:  # "from pkg import function" names the module pkg
                    target = target.rsplit(".", 1)[0]
                if target in known and target != name:
                    targets.add(target)
        graph[name] = targets
        here = top_level(name)
        for target in targets:
            there = top_level(target)
            if here in LAYERS and there in LAYERS and LAYERS[there] > LAYERS[here]:
                wrong_way.append(f"{name} -> {target}")
    assert not wrong_way, wrong_way
    assert graph["simexplain_jax.parallel"] == set(), "parallel must import nothing of the project"
    # no cycle among modules (a package importing its own submodules is not a cycle)
    state = {}

    def visit(node, stack):
        state[node] = "open"
        for target in graph[node]:
            if target.startswith(node + "."):
                continue
            if state.get(target) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack + [target]))
            if target not in state:
                visit(target, stack + [target])
        state[node] = "done"

    for node in graph:
        if node not in state:
            visit(node, [node])


def test_import_is_light():
    """``import simexplain_jax`` loads no subpackage and no heavy dependency; ``sx.saliency`` loads on use,
    scikit-image only when LIME's superpixels are computed, and matplotlib only when a figure is drawn
    (a command that stops before drawing does not pay for it)."""
    import subprocess
    import sys

    code = ("import sys, simexplain_jax as sx\n"
            "heavy = ('jax', 'flax', 'skimage', 'tensorflow_datasets', 'simexplain_jax.saliency',\n"
            "         'simexplain_jax.models', 'simexplain_jax.parallel', 'simexplain_jax.data')\n"
            "print(sorted(m for m in heavy if m in sys.modules))\n"
            "sx.metrics\n"
            "print('simexplain_jax.metrics' in sys.modules, 'flax' in sys.modules)\n"
            "import numpy as np, simexplain_jax.saliency\n"  # scikit-image (and its SciPy) only for LIME's superpixels
            "print('skimage' in sys.modules, 'scipy.cluster' in sys.modules)\n"
            "labels = simexplain_jax.saliency.superpixels(np.zeros((16, 16, 3), np.uint8), num_segments=4)\n"
            "print('skimage' in sys.modules, labels.shape)\n"
            "import simexplain_jax.viz\n"
            "print('matplotlib' in sys.modules)\n"
            "simexplain_jax.viz.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4)))\n"
            "print('matplotlib' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent, check=True)
    assert out.stdout.splitlines() == ["[]", "True False", "False False", "True (16, 16)", "False", "True"], (
        out.stdout + out.stderr)
