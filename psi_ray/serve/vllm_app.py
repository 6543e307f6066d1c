"""The vLLM-backed Serve app: ``ray.serve.llm``'s OpenAI app over one model folder (CUDA machines).

Same URLs as the own deployment (``/v1/models``, ``/v1/completions``, ``/v1/chat/completions``). Needs the
``vllm`` package of the machine's kind and a GPU per replica.
"""

from __future__ import annotations

from psi_ray.errors import PsiRayError, require


def build_vllm_app(model: str, name: str, args: dict):
    require("vllm", "serving with the vllm engine", extra="gpu")
    try:
        from ray.serve.llm import LLMConfig, build_openai_app
    except ImportError as exc:  # ray.serve.llm imports vLLM internals
        raise PsiRayError(f"ray.serve.llm cannot be imported here ({exc}); use --engine hf") from None
    engine_kwargs = {"max_model_len": int(args.get("max_model_len", 4096)),
                     "dtype": args.get("dtype", "bfloat16")}
    config = LLMConfig(
        model_loading_config={"model_id": name, "model_source": model},
        deployment_config={"num_replicas": int(args.get("replicas", 1))},
        engine_kwargs=engine_kwargs,
    )
    return build_openai_app({"llm_configs": [config]})
