"""The CUDA paths: vLLM's CUDA build on the built-in model, cuML k-means agreeing with scikit-learn."""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_vllm_cuda_generates_bf16():
    from psi_ray.backends import SamplingParams, load_backend

    b = load_backend("vllm", "smollm2-135m", max_model_len=1024)
    assert b.on_gpu and b.resources == {"GPU": 1.0}
    gens = b.generate([[{"role": "user", "content": "What is 2 + 2?"}]] * 8, SamplingParams(temperature=0,
                                                                                             max_tokens=16))
    assert all(g.output_tokens > 0 and g.error is None for g in gens)
    b.close()


def test_cuml_kmeans_matches_sklearn_partition():
    from psi_ray.stages.cluster import kmeans

    rng = np.random.default_rng(0)
    vecs = np.concatenate([rng.normal(c, 0.05, size=(20, 16)) for c in (0, 2, 4, 6)]).astype(np.float32)
    a = kmeans(vecs, 4, seed=0, algorithm="cuml")
    b = kmeans(vecs, 4, seed=0, algorithm="sklearn")
    # Same partition up to label names.
    assert len({(x, y) for x, y in zip(a, b, strict=True)}) == 4
    assert (a == kmeans(vecs, 4, seed=0, algorithm="cuml")).all()
