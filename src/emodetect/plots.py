"""Drawing only: every function takes numbers (or pixels) and returns a matplotlib Figure.

Uses the object-oriented API (``matplotlib.figure.Figure``), so no global backend or pyplot state is touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def _figure(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=100, layout="constrained")


def save(fig, path) -> None:
    fig.savefig(path, dpi=fig.dpi)


def heatmap(
    matrix: np.ndarray,
    row_labels: Sequence[str],
    col_labels: Sequence[str],
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    fmt: str = "d",
    cmap: str = "Blues",
    vmin: float | None = None,
    vmax: float | None = None,
    annotations: np.ndarray | None = None,
):
    """A labelled heatmap with every cell's value written in it (``annotations`` overrides the text)."""
    matrix = np.asarray(matrix)
    text = matrix if annotations is None else np.asarray(annotations)
    fig = _figure(0.55 * len(col_labels) + 2.6, 0.45 * len(row_labels) + 1.6)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(len(col_labels)), col_labels, rotation=45, ha="right")
    ax.set_yticks(range(len(row_labels)), row_labels)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    lo, hi = im.get_clim()
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            if np.isnan(v):
                continue
            dark = (v - lo) / (hi - lo + 1e-12) > 0.55
            ax.text(j, i, format(text[i, j], fmt), ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")  # fmt: skip
    fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def confusion_matrix(cm: np.ndarray, classes: Sequence[str], *, title: str = "", normalize: bool = True):
    """Rows = true class, columns = predicted; colour by row-normalised rate, text shows the rate (or counts)."""
    cm = np.asarray(cm, float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    if normalize:
        return heatmap(rates, classes, classes, title=title, xlabel="predicted", ylabel="true", fmt=".2f",
                       vmin=0, vmax=1)  # fmt: skip
    return heatmap(rates, classes, classes, title=title, xlabel="predicted", ylabel="true", fmt=".0f",
                   vmin=0, vmax=1, annotations=cm)  # fmt: skip


def grid(images: np.ndarray, row_titles: Sequence[str], *, n_cols: int, title: str = "", col_titles=None):
    """A grid of images, ``len(row_titles)`` rows by ``n_cols`` columns; images: (rows * n_cols, H, W[, 3])."""
    n_rows = len(row_titles)
    fig = _figure(1.0 * n_cols + 1.0, 1.05 * n_rows + (0.4 if title else 0))
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r in range(n_rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            k = r * n_cols + c
            if k < len(images) and images[k] is not None:
                ax.imshow(images[k], cmap="gray" if images[k].ndim == 2 else None, vmin=0, vmax=255)
            if c == 0:
                ax.set_ylabel(row_titles[r], rotation=0, ha="right", va="center")
            if col_titles is not None and k < len(col_titles):
                ax.set_title(col_titles[k], fontsize=7)
    if title:
        fig.suptitle(title)
    return fig


def bars(values: dict[str, float] | np.ndarray, labels: Sequence[str] | None = None, *, title: str = "",
         ylabel: str = "", ylim=(0, 1), series: dict[str, np.ndarray] | None = None):  # fmt: skip
    """Bar chart of one series (``values``) or grouped bars of several (``series``: name -> values per label)."""
    if series is None:
        series = {"": np.asarray(values if labels is not None else list(values.values()))}
        labels = labels if labels is not None else list(values.keys())
    n = len(series)
    fig = _figure(max(5.0, 0.5 * len(labels) * max(1, n / 2) + 2), 3.4)
    ax = fig.add_subplot()
    width = 0.8 / n
    x = np.arange(len(labels))
    for k, (name, vals) in enumerate(series.items()):
        ax.bar(x + (k - (n - 1) / 2) * width, vals, width, label=name or None)
    ax.set_xticks(x, labels, rotation=30, ha="right")
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    if n > 1:
        ax.legend(fontsize=7, ncols=min(n, 4))
    ax.grid(axis="y", alpha=0.3)
    return fig


def histograms(groups: dict[str, np.ndarray], *, bins: int = 40, title: str = "", xlabel: str = ""):
    """Overlaid step histograms, one per group (e.g. relFCs per class)."""
    fig = _figure(6.5, 3.6)
    ax = fig.add_subplot()
    finite = [v[np.isfinite(v)] for v in groups.values() if np.isfinite(v).any()]
    edges = np.histogram_bin_edges(np.concatenate(finite), bins=bins) if finite else bins
    for name, v in groups.items():
        v = v[np.isfinite(v)]
        if len(v):
            ax.hist(v, bins=edges, histtype="step", label=f"{name} (n={len(v)})", linewidth=1.3)
    ax.set(title=title, xlabel=xlabel, ylabel="images")
    ax.legend(fontsize=7, ncols=2)
    return fig


def curves(history: list[dict], *, title: str = "", best_epoch: int | None = None):
    """Training curves: loss and accuracy per epoch, train and validation; a dotted line at the kept epoch
    (`best_epoch`, 1-based; default: the best validation accuracy)."""
    fig = _figure(9, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    ep = [h["epoch"] for h in history]
    for ax, key in ((ax1, "loss"), (ax2, "accuracy")):
        ax.plot(ep, [h[f"train_{key}"] for h in history], label="train", marker=".")
        ax.plot(ep, [h[f"val_{key}"] for h in history], label="val", marker=".")
        if key == "accuracy" and "val_accuracy_unaveraged" in history[0]:  # a run with a weight average (ema_decay)
            ax.plot(ep, [h["val_accuracy_unaveraged"] for h in history], label="val, unaveraged weights",
                    linestyle="--", color="gray")  # fmt: skip
        ax.set(xlabel="epoch", ylabel=key)
        ax.grid(alpha=0.3)
        ax.legend()
    best = best_epoch or max(history, key=lambda h: h["val_accuracy"])["epoch"]
    ax2.axvline(best, color="gray", linestyle=":", linewidth=1)
    if title:
        fig.suptitle(title)
    return fig


def reliability_diagram(curves: dict[str, dict], *, title: str = "Reliability"):
    """Accuracy against confidence per bin for each named calibration (e.g. before/after temperature)."""
    fig = _figure(4.6, 4.2)
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    for name, r in curves.items():
        conf = np.array(r["confidence"], float)
        acc = np.array(r["accuracy"], float)
        ok = np.isfinite(conf)
        ax.plot(conf[ok], acc[ok], marker="o", label=f"{name} (ECE {r['ece']:.3f})")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def scatter(points: dict[str, np.ndarray], colors: dict[str, np.ndarray], names: Sequence[str], *, title: str = ""):
    """One panel per (projection, colouring): 2-D points coloured by integer labels named by `names`."""
    import matplotlib

    keys = [(p, c) for p in points for c in colors]
    n_cols = len(colors)
    n_rows = len(points)
    fig = _figure(4.2 * n_cols + 1.4, 3.8 * n_rows)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    cmap = matplotlib.colormaps["tab10"]
    for k, (p, c) in enumerate(keys):
        ax = axes[k // n_cols, k % n_cols]
        xy, lab = points[p], colors[c]
        for v in np.unique(lab):
            m = lab == v
            label = names[v] if c == "true label" else f"cluster {v}"
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=cmap(int(v) % 10), label=label, alpha=0.7)
        ax.set(title=f"{p} - {c}", xticks=[], yticks=[])
        ax.legend(fontsize=6, markerscale=3, ncols=2, loc="best")
    if title:
        fig.suptitle(title)
    return fig


def timeline(tracks: dict[int, list], classes: Sequence[str], *, title: str = ""):
    """Smoothed emotion probabilities over time, one panel per track: tracks maps id -> [(time_s, (K,) probs)]."""
    import matplotlib

    n = max(1, len(tracks))
    fig = _figure(9, 1.9 * n + 0.8)
    axes = fig.subplots(n, 1, squeeze=False, sharex=True)[:, 0]
    cmap = matplotlib.colormaps["tab10"]
    for ax, (tid, history) in zip(axes, tracks.items()):
        if not history:
            continue
        t = np.array([h[0] for h in history])
        p = np.array([h[1] for h in history])  # (T, K)
        ax.stackplot(t, p.T, colors=[cmap(k % 10) for k in range(len(classes))], labels=list(classes), alpha=0.9)
        ax.set(ylim=(0, 1), ylabel=f"track {tid}")
    axes[0].legend(fontsize=7, ncols=len(classes), loc="lower left", bbox_to_anchor=(0, 1.02))
    axes[-1].set_xlabel("time (s)")
    if title:
        fig.suptitle(title)
    return fig
