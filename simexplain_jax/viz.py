"""Figures: saliency overlays and pair galleries (PNG files), and the self-contained HTML report.

Figures are drawn with matplotlib's object-oriented API (``matplotlib.figure.Figure``, rendered by
Agg when saved): importing this module or drawing never touches pyplot or the caller's backend.
matplotlib is imported when the first figure is drawn, not with this module (a command that stops
before drawing, on an error or a kill, does not pay for it).
"""

from __future__ import annotations

import base64
import html
import os
from typing import TYPE_CHECKING, Sequence

import numpy as np

from simexplain_jax.io import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def _new_figure(**kwargs) -> Figure:
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _rectangle(*args, **kwargs):
    from matplotlib.patches import Rectangle

    return Rectangle(*args, **kwargs)


def _figure(rows: int, cols: int, figsize) -> tuple[Figure, np.ndarray]:
    fig = _new_figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Figure, path: str, dpi: int = 100) -> str:
    """Writes the figure atomically (``io.write_atomic``): a symlink planted at ``path`` is replaced,
    never written through."""
    kind = os.path.splitext(path)[1].lstrip(".").lower() or "png"
    write_atomic(path, lambda f: fig.savefig(f, dpi=dpi, format=kind))
    return path


def normalize_map(saliency: np.ndarray) -> np.ndarray:
    """Min-max to [0, 1] for display (a flat map becomes zeros)."""
    s = np.asarray(saliency, np.float64)
    span = s.max() - s.min()
    return np.zeros_like(s) if span <= 0 else (s - s.min()) / span


def overlay(image: np.ndarray, saliency: np.ndarray, alpha: float = 0.5, cmap: str = "jet") -> np.ndarray:
    """``image [H, W, 3]`` uint8 and ``saliency [H, W]`` -> blended uint8 RGB."""
    from matplotlib import colormaps

    heat = colormaps[cmap](normalize_map(saliency))[..., :3]
    blended = (1 - alpha) * np.asarray(image, np.float64) / 255.0 + alpha * heat
    return (np.clip(blended, 0, 1) * 255).astype(np.uint8)


def pair_gallery(path: str, queries: np.ndarray, references: np.ndarray, maps: dict[str, np.ndarray],
                 captions: dict[str, Sequence[str]] | None = None, title: str | None = None) -> str:
    """One row per pair: query, reference, then each method's map over the query. Writes ``path``.

    ``maps[name]`` is ``[P, H, W]``; ``captions[name][i]`` is printed under that panel.
    """
    rows, cols = len(queries), 2 + len(maps)
    fig, axes = _figure(rows, cols, (2.2 * cols, 2.3 * rows))
    for i in range(rows):
        panels = [("query", queries[i], None), ("reference", references[i], None)]
        panels += [(name, overlay(queries[i], m[i]), (captions or {}).get(name, [None] * rows)[i])
                   for name, m in maps.items()]
        for ax, (name, picture, caption) in zip(axes[i], panels):
            ax.imshow(picture, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=9)
            if caption:
                ax.set_xlabel(caption, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


_PAIR_COLOURS = ("#ff2d2d", "#ffd400", "#00e5ff", "#7cff4d", "#ff7bff")


def correspondence_figure(path: str, queries: np.ndarray, references: np.ndarray, pairs: Sequence[Sequence],
                          query_maps: np.ndarray, reference_maps: np.ndarray,
                          captions: Sequence[str] | None = None, title: str | None = None) -> str:
    """One row per pair: the query's and the reference's first-order maps, then both images side by
    side with their strongest cell pairs drawn as numbered boxes joined by lines. Writes ``path``.

    Args:
      queries, references: ``[P, H, W, 3]`` uint8 images.
      pairs: for each pair, its strongest cell pairs, strongest first: objects with ``query_box``,
        ``reference_box`` (``(ymin, xmin, ymax, xmax)``, max exclusive) and ``share``
        (``sx.saliency.strongest_pairs``).
      query_maps, reference_maps: ``[P, H, W]`` first-order maps (the correspondence's row and
        column sums).
      captions: one line of text per pair, under its side-by-side panel.
    """
    rows = len(queries)
    fig_height = 2.5 * rows + (0.4 if title else 0.2)
    fig = _new_figure(figsize=(9.6, fig_height), layout="constrained")
    axes = fig.subplots(rows, 3, squeeze=False, gridspec_kw={"width_ratios": [1, 1, 2.15]})
    for i in range(rows):
        height, width = queries[i].shape[:2]
        gap = max(2, width // 8)
        axes[i, 0].imshow(overlay(queries[i], query_maps[i]), interpolation="nearest")
        axes[i, 1].imshow(overlay(references[i], reference_maps[i]), interpolation="nearest")
        side = axes[i, 2]
        side.imshow(queries[i], extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        offset = width + gap
        side.imshow(references[i], extent=(offset - 0.5, offset + width - 0.5, height - 0.5, -0.5),
                    interpolation="nearest")
        side.set_xlim(-0.5, offset + width - 0.5)
        side.set_ylim(height - 0.5, -0.5)
        for rank, cell_pair in reversed(list(enumerate(pairs[i]))):
            colour = _PAIR_COLOURS[rank % len(_PAIR_COLOURS)]
            (qy0, qx0, qy1, qx1), (ry0, rx0, ry1, rx1) = cell_pair.query_box, cell_pair.reference_box
            for y0, x0, y1, x1 in ((qy0, qx0, qy1, qx1), (ry0, rx0 + offset, ry1, rx1 + offset)):
                side.add_patch(_rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=colour,
                                         linewidth=1.6 if rank == 0 else 1.0))
            start = ((qx0 + qx1 - 1) / 2, (qy0 + qy1 - 1) / 2)
            end = ((rx0 + rx1 - 1) / 2 + offset, (ry0 + ry1 - 1) / 2)
            side.plot([start[0], end[0]], [start[1], end[1]], color=colour, linewidth=2.0 if rank == 0 else 1.2)
            side.text(qx0, qy0 - 1, str(rank + 1), color=colour, fontsize=7, fontweight="bold", va="bottom")
        if captions is not None:
            side.set_xlabel(captions[i], fontsize=7)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
        if i == 0:
            axes[i, 0].set_title("query: first-order map", fontsize=9)
            axes[i, 1].set_title("reference: first-order map", fontsize=9)
            axes[i, 2].set_title("strongest correspondences (1 = strongest)", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path, dpi=110)


def contact_sheet(path: str, images: np.ndarray, titles: Sequence[str], boxes: np.ndarray | None = None,
                  columns: int = 10, title: str | None = None) -> str:
    """A grid of ``images [N, H, W, 3]`` uint8 with a title each and, optionally, one box each
    (``boxes [N, 4]``: ymin, xmin, ymax, xmax in pixels, max exclusive) drawn in cyan. Writes ``path``."""
    rows = -(-len(images) // columns)
    fig, axes = _figure(rows, columns, (1.6 * columns, 1.75 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for i, (image, name) in enumerate(zip(images, titles)):
        ax = axes.ravel()[i]
        ax.imshow(image, interpolation="nearest")
        ax.set_title(name, fontsize=6)
        if boxes is not None:
            ymin, xmin, ymax, xmax = boxes[i]
            ax.add_patch(_rectangle((xmin - 0.5, ymin - 0.5), xmax - xmin, ymax - ymin, fill=False, edgecolor="cyan",
                                   linewidth=1.0))
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi=110)


def curves(path: str, named_curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    """Mean insertion and deletion curves per method (two panels). Writes ``path``."""
    fig, axes = _figure(1, 2, (10, 4))
    axes = axes[0]
    for name, (insertion, deletion) in named_curves.items():
        t = np.linspace(0, 1, len(insertion))
        style = "--" if name == "random" else "-"
        axes[0].plot(t, insertion, style, label=name)
        axes[1].plot(t, deletion, style, label=name)
    for ax, title in zip(axes, ("insertion (higher is better)", "deletion (lower is better)")):
        ax.set_title(title)
        ax.set_xlabel("fraction of pixels")
        ax.set_ylabel("normalised similarity")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def image_html(path: str, alt: str = "", width: str = "100%") -> str:
    """An ``<img>`` with the PNG embedded as base64 (the page needs no other file)."""
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode()
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}" style="max-width:{width}">'


def table_html(rows: Sequence[dict], columns: Sequence[str], digits: int = 3) -> str:
    """An HTML table of ``rows`` (dicts) over ``columns``; floats rounded, None shown as a dash."""
    def cell(value):
        if value is None:
            return "-"
        if isinstance(value, float):
            return f"{value:.{digits}f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def write_report(path: str, title: str, sections: Sequence[tuple[str, str]]) -> str:
    """A self-contained HTML page: ``sections`` are (heading, HTML fragment). Writes ``path``."""
    style = ("body{font-family:sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px;"
             "text-align:right}th{background:#f0f0f0}h2{border-bottom:1px solid #ddd;padding-bottom:4px}")
    body = "".join(f'<section id="s{i}"><h2>{html.escape(h)}</h2>{fragment}</section>'
                   for i, (h, fragment) in enumerate(sections))
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>")
    write_atomic(path, page)
    return path
