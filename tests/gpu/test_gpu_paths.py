"""The CUDA paths: vLLM's CUDA build on the built-in model in bf16, cuML k-means agreeing with scikit-learn."""

import numpy as np
import pytest

from tests.gpu.conftest import needs

pytestmark = pytest.mark.gpu


@needs("vllm")
def test_vllm_cuda_generates_bf16():
    import torch

    from psi_ray.backends import SamplingParams, load_backend

    b = load_backend("vllm", "smollm2-135m", max_model_len=1024)
    assert b.on_gpu and b.resources == {"GPU": 1.0}
    assert b.llm.model_config.dtype == torch.bfloat16  # the dtype vLLM loaded the weights in
    gens = b.generate([[{"role": "user", "content": "What is 2 + 2?"}]] * 8, SamplingParams(temperature=0,
                                                                                             max_tokens=16))
    assert all(g.output_tokens > 0 and g.error is None for g in gens)
    b.close()


def blobs(k: int, per: int = 20, dim: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """``k`` tight, far-apart Gaussian blobs and the blob each point came from."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, size=(k, dim)) * 10
    vecs = np.concatenate([rng.normal(c, 0.05, size=(per, dim)) for c in centres]).astype(np.float32)
    return vecs, np.repeat(np.arange(k), per)


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """The same grouping of points, up to the names of the labels (a one-to-one map between them)."""
    return len(set(zip(a.tolist(), b.tolist(), strict=True))) == len(set(a.tolist())) == len(set(b.tolist()))


@needs("cuml", "sklearn")
@pytest.mark.parametrize("k", [4, 7])
def test_cuml_kmeans_matches_sklearn_partition(k):
    from psi_ray.stages.cluster import kmeans

    vecs, truth = blobs(k)
    a = kmeans(vecs, k, seed=0, algorithm="cuml")
    b = kmeans(vecs, k, seed=0, algorithm="sklearn")
    assert len(a) == len(vecs) and len(set(a.tolist())) == k  # the requested number of clusters
    assert same_partition(a, truth) and same_partition(a, b)
    assert (a == kmeans(vecs, k, seed=0, algorithm="cuml")).all()  # same seed, same labels
