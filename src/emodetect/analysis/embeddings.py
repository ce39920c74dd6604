"""K-Means, t-SNE and UMAP on a model's embeddings: arrays and numbers only."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.manifold import TSNE
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score, silhouette_score
from sklearn.preprocessing import StandardScaler


def prepare(embeddings: np.ndarray, max_dims: int = 50, random_state: int = 0) -> np.ndarray:
    """Standardise and, above `max_dims`, reduce with PCA (the usual step before t-SNE/UMAP)."""
    x = StandardScaler().fit_transform(np.asarray(embeddings, np.float64))
    if x.shape[1] > max_dims and len(x) > max_dims:
        x = PCA(max_dims, random_state=random_state).fit_transform(x)
    return x


def cluster(embeddings: np.ndarray, labels: np.ndarray, n_clusters: int | None = None, random_state: int = 0) -> dict:
    """K-Means with k = number of classes present; ARI, NMI against the true labels, silhouettes."""
    k = min(n_clusters or len(np.unique(labels)), len(embeddings))
    km = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit(embeddings)
    sample = min(len(embeddings), 5000)  # silhouette is O(n^2)

    def silhouette(assign) -> float:  # defined for 2 to n - 1 groups only
        if not 2 <= len(np.unique(assign)) <= len(embeddings) - 1:
            return float("nan")
        return float(silhouette_score(embeddings, assign, sample_size=sample, random_state=random_state))

    return {
        "k": int(k),
        "assignments": km.labels_,
        "ari": float(adjusted_rand_score(labels, km.labels_)),
        "nmi": float(normalized_mutual_info_score(labels, km.labels_)),
        "silhouette_clusters": silhouette(km.labels_),
        "silhouette_true_labels": silhouette(labels),
    }


def tsne(embeddings: np.ndarray, random_state: int = 0) -> np.ndarray:
    perplexity = float(min(30, max(2, (len(embeddings) - 1) / 3)))
    return TSNE(2, perplexity=perplexity, init="pca", random_state=random_state).fit_transform(embeddings)


def umap(embeddings: np.ndarray, random_state: int = 0) -> np.ndarray:
    import umap as umap_lib  # imported here: numba compiles on first import

    n_neighbors = int(min(15, max(2, len(embeddings) - 1)))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*n_jobs value.*")  # random_state forces one thread; expected
        return umap_lib.UMAP(n_components=2, n_neighbors=n_neighbors, random_state=random_state).fit_transform(embeddings)


def analyse(embeddings: np.ndarray, labels: np.ndarray, random_state: int = 0) -> dict:
    """Everything the embedding section of a report needs: cluster numbers and both 2-D projections."""
    x = prepare(embeddings, random_state=random_state)
    result = cluster(x, labels, random_state=random_state)
    result["tsne"] = tsne(x, random_state)
    result["umap"] = umap(x, random_state)
    result["n_images"] = int(len(labels))
    result["dims"] = int(np.asarray(embeddings).shape[1])
    return result
