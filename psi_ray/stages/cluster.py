"""Stage 3, cluster: embed low-level principles and group them with k-means.

A global step (all vectors at once). Reads ``principle_id, text`` (and ``valid``: rejected principles are not
clustered; a missing ``valid`` counts as True, for runs made before hygiene); writes ``principle_id, text,
cluster_id, x, y, centrality``: ``x, y`` a 2-D PCA projection for the report, ``centrality`` the cosine
similarity of the principle's embedding to its cluster's mean (stage 4 falls back to the most central member).
cuML k-means on CUDA, scikit-learn on CPU; both take the job's seed, so the same seed and config give the
same clusters.
"""

from __future__ import annotations

import numpy as np

from psi_ray.errors import PsiRayError, require
from psi_ray.runtime import cuda_available


def embed(texts: list[str], model: str, device: str | None = None) -> np.ndarray:
    """Unit-length sentence embeddings (sentence-transformers), offline."""
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from psi_ray.models import resolve_model

    st = require("sentence_transformers", "embedding principles", package="sentence-transformers")
    encoder = st.SentenceTransformer(resolve_model(model), device=device or "cpu")
    return np.asarray(encoder.encode(texts, batch_size=64, normalize_embeddings=True, show_progress_bar=False))


def kmeans(vectors: np.ndarray, k: int, seed: int, algorithm: str = "auto") -> np.ndarray:
    """Cluster labels for ``vectors``; ``algorithm`` is ``auto`` (cuML where CUDA is), ``cuml`` or ``sklearn``."""
    if k > len(vectors):
        raise PsiRayError(f"cluster.num_clusters={k} but only {len(vectors)} low-level principles were written")
    if algorithm == "auto":
        algorithm = "cuml" if cuda_available() else "sklearn"
    if algorithm == "cuml":
        cuml = require("cuml", "GPU k-means", package="cuml-cu12", extra="gpu")
        if not cuda_available():
            raise PsiRayError("cluster.algorithm=cuml needs a CUDA GPU; use sklearn (or auto) on CPU")
        model = cuml.KMeans(n_clusters=k, random_state=seed, n_init=10)
        return np.asarray(model.fit_predict(vectors.astype(np.float32))).astype(int)
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=k, random_state=seed, n_init=10).fit_predict(vectors).astype(int)


def project_2d(vectors: np.ndarray) -> np.ndarray:
    """A 2-D PCA projection (for plotting only)."""
    centered = vectors - vectors.mean(axis=0)
    if len(vectors) < 2:
        return np.zeros((len(vectors), 2))
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    return centered @ vt[:2].T


def centrality(vectors: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Cosine similarity of each vector to the mean vector of its cluster; 1.0 for a lone member."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors = vectors / np.where(norms > 0, norms, 1.0)  # embed() gives unit vectors; others are made so
    out = np.zeros(len(vectors))
    for c in np.unique(labels):
        members = labels == c
        mean = vectors[members].mean(axis=0)
        norm = np.linalg.norm(mean)
        out[members] = vectors[members] @ mean / norm if norm > 0 else 0.0
    return out


def cluster_principles(rows: list[dict], model: str, k: int, seed: int,
                       algorithm: str = "auto") -> list[dict]:
    """Cluster the valid principles that have text; one output row each (rejected rows are left out here).

    The rejected rows stay in stage 2's output with their ``reject_reason``; clustering them would let an echo
    or a looping generation become, or pull, a high-level principle.
    """
    usable = [r for r in rows if r.get("valid", True) and r.get("text")]
    rejected = len(rows) - len(usable)
    if not usable:
        raise PsiRayError(f"no valid low-level principle among {len(rows)} rows ({rejected} rejected or "
                          "unparsed); see 02_principles")
    if k > len(usable):
        raise PsiRayError(f"cluster.num_clusters={k} but only {len(usable)} valid low-level principles were "
                          f"written ({rejected} rejected or unparsed; see 02_principles)")
    vectors = embed([r["text"] for r in usable], model)
    labels = kmeans(vectors, k, seed, algorithm)
    xy = project_2d(vectors)
    central = centrality(vectors, labels)
    return [{"principle_id": r["principle_id"], "text": r["text"], "cluster_id": int(c),
             "x": float(p[0]), "y": float(p[1]), "centrality": float(m)}
            for r, c, p, m in zip(usable, labels, xy, central, strict=True)]
