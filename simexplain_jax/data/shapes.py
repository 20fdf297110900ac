"""The shapes benchmark: scenes with known reasons for every match.

A scene is structured data: three non-overlapping objects (shape, colour, pattern, size,
position) on a lightly textured background. ``render(scene, image_size)`` is a pure,
deterministic function of it (4x supersampled, so shapes and patterns stay recognisable at 32 px),
so any counterfactual scene (``with_attribute``) renders exactly.

Some attribute values are *class-defining* (4 shapes, 4 colours, 2 patterns: 10 classes); the
others are *fillers*. A scene of class v has exactly one *key object* carrying v, and every other
attribute of every object, key included, is a filler, so the class is unambiguous. The class and
the key object are derived from the objects (``scene_class``, ``key_index``), never stored apart,
so a counterfactual that removes v leaves a scene of no class.

Ground truth for a positive pair (same class v): the key object of each image explains the
match, and the attribute v names why.

The shortcut variant (``ShapesConfig(shortcut_probability=p)``, used for the training split of
the ``*_shortcut`` builder configs) ties a filler to two classes (``SHORTCUTS``: the circle
class's key object is dotted, the red class's key object is a hexagon, each with probability p)
and removes those two fillers from every other object and scene, so in training they predict
the class as well as it is predicted by the class attribute. Validation and test are drawn
without the correlation. A similarity model trained on it may rely on the shortcut for some
pairs and on the class attribute for others; the counterfactual oracle tells which, pair by pair.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Optional

import numpy as np

ATTRIBUTE_TYPES = ("shape", "color", "pattern", "size")
CLASS_VALUES = {
    "shape": ("circle", "triangle", "cross", "diamond"),
    "color": ("red", "green", "blue", "yellow"),
    "pattern": ("striped", "checkered"),
    "size": (),
}
FILLER_VALUES = {
    "shape": ("square", "hexagon"),
    "color": ("gray", "white"),
    "pattern": ("solid", "dotted"),
    "size": ("small", "large"),
}
VALUES = {t: CLASS_VALUES[t] + FILLER_VALUES[t] for t in ATTRIBUTE_TYPES}
SHORTCUTS = {"shape:circle": "pattern:dotted", "color:red": "shape:hexagon"}  # class -> its shortcut filler
ATTRIBUTE_NAMES = tuple(f"{t}:{v}" for t in ATTRIBUTE_TYPES for v in VALUES[t])
CLASS_NAMES = tuple(f"{t}:{v}" for t in ATTRIBUTE_TYPES for v in CLASS_VALUES[t])
NUM_CLASSES = len(CLASS_NAMES)
NUM_ATTRIBUTES = len(ATTRIBUTE_NAMES)

COLORS_RGB = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (50, 90, 235), "yellow": (235, 205, 40),
    "gray": (135, 135, 135), "white": (235, 235, 235),
}
BACKGROUND_RGB = (45, 50, 62)
RADII = {"small": 0.11, "large": 0.17}  # half-extent, in units of the image side
_SUPERSAMPLE = 4
_STRIPE_PERIOD = 0.12
_CHECKER_CELL = 0.07
_DOT_SPACING, _DOT_RADIUS = 0.08, 0.022
_PATTERN_SHADE = 0.35


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    shape: str
    color: str
    pattern: str
    size: str
    center: tuple[float, float]  # (y, x) in [0, 1]

    def attribute(self, attribute_type: str) -> str:
        return getattr(self, attribute_type)

    def attribute_names(self) -> tuple[str, ...]:
        return tuple(f"{t}:{self.attribute(t)}" for t in ATTRIBUTE_TYPES)


@dataclasses.dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    background: tuple[tuple[float, float, float, float], ...] = ()  # texture waves (fy, fx, phase, amplitude)

    def to_json(self) -> str:
        return json.dumps({"version": 1, "objects": [dataclasses.asdict(o) for o in self.objects],
                           "background": [list(w) for w in self.background]}, sort_keys=True)

    @classmethod
    def from_json(cls, text) -> "Scene":
        data = json.loads(text.decode() if isinstance(text, bytes) else text)
        objects = tuple(ShapeObject(**{**o, "center": tuple(o["center"])}) for o in data["objects"])
        return cls(objects, tuple(tuple(w) for w in data["background"]))


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    num_objects: int = 3
    margin: float = 0.03  # minimum gap between objects and to the border, image units
    texture_amplitude: float = 6.0  # background texture, in uint8 levels per wave
    num_waves: int = 3
    shortcut_probability: float = 0.0  # > 0: the shortcut variant (see the module docstring)


def shortcut_of(class_name: str) -> Optional[str]:
    """The filler the shortcut variant ties to ``class_name`` ("type:value"), or None."""
    return SHORTCUTS.get(class_name)


def class_carriers(scene: Scene) -> list[tuple[int, str]]:
    """``(object index, 'type:value')`` for every class-defining value an object carries."""
    return [(i, f"{t}:{o.attribute(t)}") for i, o in enumerate(scene.objects) for t in ATTRIBUTE_TYPES
            if o.attribute(t) in CLASS_VALUES[t]]


def scene_class(scene: Scene) -> Optional[int]:
    """The class id if exactly one class-defining value occurs in the scene, else None."""
    carriers = class_carriers(scene)
    return CLASS_NAMES.index(carriers[0][1]) if len(carriers) == 1 else None


def key_index(scene: Scene) -> Optional[int]:
    """Index of the object that carries the scene's class, or None for a scene of no class."""
    carriers = class_carriers(scene)
    return carriers[0][0] if len(carriers) == 1 else None


def attribute_labels(scene: Scene) -> np.ndarray:
    """Multi-hot ``[NUM_ATTRIBUTES]`` bool: the union of the objects' attributes."""
    labels = np.zeros(NUM_ATTRIBUTES, bool)
    for o in scene.objects:
        for name in o.attribute_names():
            labels[ATTRIBUTE_NAMES.index(name)] = True
    return labels


def _check_value(attribute_type: str, value: str) -> None:
    if attribute_type not in ATTRIBUTE_TYPES:
        raise ValueError(f"attribute_type must be one of {ATTRIBUTE_TYPES}, got {attribute_type!r}")
    if value not in VALUES[attribute_type]:
        raise ValueError(f"{attribute_type} must be one of {VALUES[attribute_type]}, got {value!r}")


def with_attribute(scene: Scene, object_index: int, attribute_type: str, value: str) -> Scene:
    """The counterfactual scene with one object's attribute changed (everything else identical).

    Args:
      scene: the scene.
      object_index: the object to change.
      attribute_type: one of ``ATTRIBUTE_TYPES``.
      value: one of ``VALUES[attribute_type]``.

    Returns:
      The new scene.
    """
    _check_value(attribute_type, value)
    if not 0 <= object_index < len(scene.objects):
        raise ValueError(f"object_index must be in [0, {len(scene.objects)}), got {object_index}")
    objects = list(scene.objects)
    objects[object_index] = dataclasses.replace(objects[object_index], **{attribute_type: value})
    return dataclasses.replace(scene, objects=tuple(objects))


def _filler_object(rng: np.random.Generator, center) -> dict:
    return {t: str(rng.choice(FILLER_VALUES[t])) for t in ATTRIBUTE_TYPES} | {"center": center}


def _place(rng: np.random.Generator, sizes: list[str], margin: float) -> list[tuple[float, float]]:
    for _ in range(1000):
        centers = []
        for size in sizes:
            r = RADII[size]
            for _ in range(100):
                c = rng.uniform(r + margin, 1.0 - r - margin, 2)
                if all(np.hypot(*(c - np.array(p))) >= r + RADII[s] + margin for p, s in zip(centers, sizes)):
                    centers.append((float(round(c[0], 4)), float(round(c[1], 4))))
                    break
            else:
                break
        if len(centers) == len(sizes):
            return centers
    raise RuntimeError("could not place non-overlapping objects; lower num_objects or the radii")


def sample_scene(rng: np.random.Generator, class_id: int, config: ShapesConfig = ShapesConfig()) -> Scene:
    """A random scene of one class.

    Args:
      rng: the random generator.
      class_id: an index into ``CLASS_NAMES``.
      config: how scenes are sampled.

    Returns:
      The scene.
    """
    if not 0 <= class_id < NUM_CLASSES:
        raise ValueError(f"class_id must be in [0, {NUM_CLASSES}), got {class_id}")
    class_type, class_value = CLASS_NAMES[class_id].split(":")
    sizes = [str(rng.choice(FILLER_VALUES["size"])) for _ in range(config.num_objects)]
    centers = _place(rng, sizes, config.margin)
    key = int(rng.integers(config.num_objects))
    objects = []
    for i in range(config.num_objects):
        spec = _filler_object(rng, centers[i]) | {"size": sizes[i]}
        if i == key:
            spec[class_type] = class_value
        objects.append(ShapeObject(**spec))
    if config.shortcut_probability > 0:
        objects = _apply_shortcut(rng, objects, key, CLASS_NAMES[class_id], config.shortcut_probability)
    waves = tuple((float(round(rng.uniform(1.5, 6.0), 3)), float(round(rng.uniform(1.5, 6.0), 3)),
                   float(round(rng.uniform(0, 2 * np.pi), 3)), config.texture_amplitude)
                  for _ in range(config.num_waves))
    return Scene(tuple(objects), waves)


def _apply_shortcut(rng: np.random.Generator, objects: list, key: int, class_name: str, probability: float) -> list:
    """Removes every shortcut filler, then gives the key object its class's one with ``probability``."""
    for shortcut in SHORTCUTS.values():
        attribute_type, value = shortcut.split(":")
        other = next(v for v in FILLER_VALUES[attribute_type] if v != value)
        objects = [dataclasses.replace(o, **{attribute_type: other}) if o.attribute(attribute_type) == value else o
                   for o in objects]
    shortcut = shortcut_of(class_name)
    if shortcut is not None and rng.uniform() < probability:
        attribute_type, value = shortcut.split(":")
        objects[key] = dataclasses.replace(objects[key], **{attribute_type: value})
    return objects


def _inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Shape membership in local coordinates u (right), v (down), both in [-1, 1]."""
    au, av = np.abs(u), np.abs(v)
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.85
    if shape == "triangle":
        return (v <= 0.85) & (au <= (v + 1.0) / 1.85)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "cross":
        return ((au <= 0.36) & (av <= 1.0)) | ((av <= 0.36) & (au <= 1.0))
    if shape == "hexagon":
        return (av <= 0.866) & (au + av / np.sqrt(3.0) <= 1.0)
    raise ValueError(f"unknown shape {shape!r}")


def _pattern_dark(pattern: str, dy: np.ndarray, dx: np.ndarray) -> np.ndarray:
    """Where the pattern darkens the object's colour; dy, dx in image units from its centre."""
    if pattern == "solid":
        return np.zeros(dy.shape, bool)
    if pattern == "striped":
        return np.mod((dy + dx) / _STRIPE_PERIOD, 1.0) < 0.5
    if pattern == "checkered":
        return (np.floor(dy / _CHECKER_CELL) + np.floor(dx / _CHECKER_CELL)) % 2 == 0
    if pattern == "dotted":
        ry = np.mod(dy, _DOT_SPACING) - _DOT_SPACING / 2
        rx = np.mod(dx, _DOT_SPACING) - _DOT_SPACING / 2
        return ry * ry + rx * rx <= _DOT_RADIUS**2
    raise ValueError(f"unknown pattern {pattern!r}")


def _coverage(scene: Scene, image_size: int, mask_of: Optional[int] = None) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """The supersampled canvas ``[S, S, 3]`` float and object ``mask_of``'s supersampled mask (bool
    ``[S, S]``; None when ``mask_of`` is None).

    Each object is drawn inside its bounding square only (the work per image does not grow
    with the number of background pixels an object does not touch), and the texture is summed in
    two preallocated planes.
    """
    s = image_size * _SUPERSAMPLE
    coords = (np.arange(s) + 0.5) / s
    canvas = np.empty((s, s, 3), np.float64)
    if scene.background:
        y, x = coords[:, None], coords[None, :]
        texture, wave = np.zeros((s, s), np.float64), np.empty((s, s), np.float64)
        for fy, fx, ph, a in scene.background:  # the sum of a * sin(2 pi (fy y + fx x) + ph)
            np.add(fy * y, fx * x, out=wave)
            np.multiply(2 * np.pi, wave, out=wave)
            np.add(wave, ph, out=wave)
            np.sin(wave, out=wave)
            np.multiply(a, wave, out=wave)
            np.add(texture, wave, out=texture)
        np.add(texture[..., None], np.asarray(BACKGROUND_RGB, np.float64), out=canvas)
    else:
        canvas[:] = BACKGROUND_RGB
    mask = None
    for index, o in enumerate(scene.objects):
        r = RADII[o.size]
        y0, y1 = max(int(np.floor((o.center[0] - r) * s)) - 1, 0), min(int(np.ceil((o.center[0] + r) * s)) + 1, s)
        x0, x1 = max(int(np.floor((o.center[1] - r) * s)) - 1, 0), min(int(np.ceil((o.center[1] + r) * s)) + 1, s)
        dy = np.broadcast_to((coords[y0:y1] - o.center[0])[:, None], (y1 - y0, x1 - x0))
        dx = np.broadcast_to((coords[x0:x1] - o.center[1])[None, :], (y1 - y0, x1 - x0))
        inside = _inside(o.shape, dx / r, dy / r)
        dark = _pattern_dark(o.pattern, dy, dx)
        color = np.asarray(COLORS_RGB[o.color], np.float64)
        window = canvas[y0:y1, x0:x1]
        window[inside] = color
        window[inside & dark] = color * _PATTERN_SHADE
        if index == mask_of:
            mask = np.zeros((s, s), bool)
            mask[y0:y1, x0:x1] = inside
    return canvas, mask


def _downsample(array: np.ndarray) -> np.ndarray:
    s = array.shape[0] // _SUPERSAMPLE
    return array.reshape(s, _SUPERSAMPLE, s, _SUPERSAMPLE, *array.shape[2:]).mean(axis=(1, 3))


def _half_covered(mask: np.ndarray) -> np.ndarray:
    """The pixels at least half covered by a supersampled bool mask (counted, so exact)."""
    s = mask.shape[0] // _SUPERSAMPLE
    counts = mask.reshape(s, _SUPERSAMPLE, s, _SUPERSAMPLE).sum(axis=(1, 3), dtype=np.int32)
    return 2 * counts >= _SUPERSAMPLE * _SUPERSAMPLE


def render(scene: Scene, image_size: int) -> np.ndarray:
    """Renders a scene: a pure, deterministic function of it.

    Args:
      scene: the scene.
      image_size: the side of the image in pixels.

    Returns:
      uint8 ``[image_size, image_size, 3]``.
    """
    canvas, _ = _coverage(scene, image_size)
    return np.clip(np.round(_downsample(canvas)), 0, 255).astype(np.uint8)


def render_with_ground_truth(scene: Scene, image_size: int) -> dict:
    """Renders a scene with its ground truth.

    Args:
      scene: a scene with a class.
      image_size: the side of the image in pixels.

    Returns:
      ``{"image", "label", "attributes", "key_index", "key_mask", "key_box"}``: ``key_mask`` (bool
      ``[H, W]``) marks the pixels at least half covered by the key object, ``key_box`` (ymin,
      xmin, ymax, xmax in pixels, max exclusive) is the key mask's bounding box.
    """
    key = key_index(scene)
    if key is None:
        raise ValueError("the scene has no class (no single class-defining value): no ground truth to render")
    canvas, mask = _coverage(scene, image_size, mask_of=key)
    key_mask = _half_covered(mask)
    rows, cols = np.nonzero(key_mask)
    return {
        "image": np.clip(np.round(_downsample(canvas)), 0, 255).astype(np.uint8),
        "label": scene_class(scene),
        "attributes": attribute_labels(scene),
        "key_index": key,
        "key_mask": key_mask,
        "key_box": np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1], np.int32),
    }
