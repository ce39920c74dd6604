import numpy as np

from emodetect.analysis.embeddings import analyse, cluster


def test_clustering_metrics_separate_two_obviously_distinct_classes():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (100, 16))
    b = rng.normal(8, 1, (100, 16))
    labels = np.repeat([0, 1], 100)
    good = cluster(np.vstack([a, b]), labels)
    assert good["k"] == 2 and good["ari"] > 0.95 and good["nmi"] > 0.9 and good["silhouette_true_labels"] > 0.5
    mixed = cluster(rng.normal(0, 1, (200, 16)), labels)  # no structure at all
    assert mixed["ari"] < 0.1 and mixed["nmi"] < 0.1


def test_analyse_returns_two_dimensional_projections():
    rng = np.random.default_rng(1)
    x = np.vstack([rng.normal(0, 1, (60, 80)), rng.normal(5, 1, (60, 80))])
    labels = np.repeat([3, 5], 60)
    r = analyse(x, labels)
    assert r["tsne"].shape == (120, 2) and r["umap"].shape == (120, 2)
    assert r["assignments"].shape == (120,) and r["dims"] == 80 and r["n_images"] == 120
    # the projections keep the two groups apart: centroid distance well above the within-group spread
    for key in ("tsne", "umap"):
        p = r[key]
        gap = np.linalg.norm(p[:60].mean(0) - p[60:].mean(0))
        assert gap > 2 * max(p[:60].std(0).mean(), p[60:].std(0).mean())
