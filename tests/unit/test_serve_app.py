"""The Serve app's ``ray.serve.llm`` config on CPU and GPU, the callback that skips the per-node download of a
local folder, and the context a model is served with. No Ray, no engine: the config is what the library gets."""

import asyncio
import json

import pytest


@pytest.fixture
def folder(tmp_path):
    """A model folder holding only ``config.json``."""
    made = iter(range(100))

    def make(config: dict) -> str:
        path = tmp_path / f"m{next(made)}"
        path.mkdir()
        (path / "config.json").write_text(json.dumps(config))
        return str(path)

    return make


def test_the_context_is_the_models_own_at_most_the_cap(folder, tmp_path):
    from psi_ray.serve.args import DEFAULT_MAX_MODEL_LEN, ServeArgs, model_context

    assert model_context(folder({"max_position_embeddings": 512})) == 512
    assert model_context(folder({"max_position_embeddings": 8192})) == DEFAULT_MAX_MODEL_LEN
    assert model_context(folder({"max_position_embeddings": 8192}), cap=2048) == 2048
    assert model_context(folder({"n_positions": 1024})) == 1024  # GPT-2's name for it
    assert model_context(folder({"text_config": {"max_position_embeddings": 300}})) == 300
    assert model_context(folder({"text_config": None})) == DEFAULT_MAX_MODEL_LEN
    assert model_context(str(tmp_path / "missing")) == model_context("org/model") == DEFAULT_MAX_MODEL_LEN
    assert ServeArgs(model="m", max_model_len=100).context(folder({"max_position_embeddings": 512})) == 100


def test_only_a_local_folder_skips_the_per_node_download(tmp_path):
    from types import SimpleNamespace

    from psi_ray.serve.app import LocalFolderInit

    def runs_init(source: str) -> bool:
        callback = LocalFolderInit(llm_config=SimpleNamespace(model_loading_config=SimpleNamespace(
            model_source=source)))
        asyncio.run(callback.on_before_node_init())
        return callback.ctx.run_init_node

    assert runs_init(str(tmp_path)) is False
    assert runs_init("s3://bucket/model") and runs_init("org/model") and runs_init(str(tmp_path / "gone"))


def test_the_engine_config_on_cpu_and_on_gpu(tiny_model, monkeypatch):
    """On CPU: float32, every core (no core kept for vLLM's scheduler), the engine's bundle reserves
    ``num_cpus`` and the replica none, the local-folder callback, the model's own context (512 here). On GPU
    the library's defaults stay."""
    import psi_ray.runtime
    from psi_ray.serve.app import CPU_ENGINE_ENV, LocalFolderInit, llm_config
    from psi_ray.serve.args import ServeArgs

    monkeypatch.setattr(psi_ray.runtime, "cuda_available", lambda: False)
    model = str(tiny_model)
    cpu = llm_config(ServeArgs(model=model, num_cpus=0.5), model, "m")
    assert cpu.engine_kwargs["max_model_len"] == 512 and cpu.engine_kwargs["dtype"] == "float32"
    assert cpu.engine_kwargs["enforce_eager"] is True
    assert cpu.placement_group_config["bundles"] == [{"CPU": 0.5}]
    assert cpu.runtime_env["env_vars"] == CPU_ENGINE_ENV == {"VLLM_CPU_NUM_OF_RESERVED_CPU": "0"}
    assert cpu.deployment_config["ray_actor_options"] == {"num_cpus": 0}
    assert cpu.callback_config.callback_class is LocalFolderInit
    gpu = llm_config(ServeArgs(model=model, num_gpus=1, max_model_len=256), model, "m")
    assert gpu.engine_kwargs == {"max_model_len": 256, "dtype": "bfloat16"}
    assert not (gpu.runtime_env or {}).get("env_vars") and "ray_actor_options" not in gpu.deployment_config


def adapter(tmp_path, name: str, rank, targets=("q_proj", "v_proj"), **config) -> str:
    """A folder with only the ``adapter_config.json`` PEFT writes (its rank and modules are what the engine
    config reads when there are no safetensors weights)."""
    path = tmp_path / name
    path.mkdir()
    config = {"peft_type": "LORA", "r": rank, "target_modules": list(targets) if targets else "all-linear", **config}
    (path / "adapter_config.json").write_text(json.dumps(config))
    return str(path)


def lora_engine(model: str, adapters: dict, **args) -> dict:
    from psi_ray.serve.app import llm_config
    from psi_ray.serve.args import ServeArgs

    return llm_config(ServeArgs(model=model, adapters=adapters, **{"num_gpus": 0, **args}), model, "m").engine_kwargs


def test_adapters_are_static_lora_modules_of_the_one_engine(tiny_model, tmp_path):
    """Each adapter is a LoRA module vLLM loads at start, under its own id; the rank budget is the smallest
    vLLM offers that holds the largest adapter (rank_pattern included); LoRA layers go only on the modules the
    adapters adapt (so not on lm_head, whose CPU op fails on batched prompt log-probabilities), unless one
    names them by a pattern; no adapters, no LoRA."""
    model = str(tiny_model)
    folders = {"a": adapter(tmp_path, "a", 4, rank_pattern={"q_proj": 12}),
               "b": adapter(tmp_path, "b", 4, ["model.layers.0.mlp.down_proj", "q_proj"])}
    kwargs = lora_engine(model, folders)
    assert kwargs["enable_lora"] is True and kwargs["max_loras"] == 2 and kwargs["max_lora_rank"] == 16
    assert [(x.name, x.path, x.base_model_name) for x in kwargs["lora_modules"]] == [
        ("a", folders["a"], "m"), ("b", folders["b"], "m")]
    assert kwargs["lora_target_modules"] == ["down_proj", "q_proj", "v_proj"]
    assert "lora_target_modules" not in lora_engine(model, {"c": adapter(tmp_path, "c", 8, targets=None)})
    assert not {"enable_lora", "lora_modules"} & set(lora_engine(model, {}))


def test_the_adapted_modules_are_read_from_the_weights(tiny_model, tmp_path):
    """The tensor names decide (vLLM goes by them), whatever target_modules says; lm_head weights are refused on
    CPU and served on GPU."""
    import torch
    from safetensors.torch import save_file

    from psi_ray.errors import PsiRayError

    def with_weights(name: str, modules: list[str]) -> str:
        folder = adapter(tmp_path, name, 8, ["q_proj"])
        save_file({f"base_model.model.model.layers.0.{m}.lora_{ab}.weight": torch.zeros(2, 2)
                   for m in modules for ab in "AB"}, f"{folder}/adapter_model.safetensors")
        return folder

    model = str(tiny_model)
    kwargs = lora_engine(model, {"w": with_weights("w", ["self_attn.k_proj", "mlp.up_proj"])})
    assert kwargs["lora_target_modules"] == ["k_proj", "up_proj"]
    head = {"h": with_weights("h", ["lm_head"])}
    with pytest.raises(PsiRayError, match="adapts lm_head"):
        lora_engine(model, head)
    assert lora_engine(model, head, num_gpus=1)["lora_target_modules"] == ["lm_head"]


@pytest.mark.parametrize("adapters,args,needle", [
    ({"x": "/no/such/adapter"}, {}, "not a PEFT LoRA adapter folder"),
    ({"m": "RANK8"}, {}, "the served model's own name"),
    ({"x": "RANK0"}, {}, "rank r=0"),
    ({"x": "RANK1024"}, {}, "vLLM serves ranks up to 512"),
    ({"x": "DORA"}, {}, "not DoRA"),
    ({"x": "BROKEN"}, {}, "cannot read .*adapter_model.safetensors"),
    ({"x": "RANK8"}, {"num_gpus": 1, "dtype": "float32"}, "take float16 or bfloat16"),
])
def test_a_bad_adapter_is_one_clear_error(tiny_model, tmp_path, adapters, args, needle):
    from psi_ray.errors import PsiRayError

    def made(name, spec):
        if spec == "DORA":
            return adapter(tmp_path, name, 8, use_dora=True)
        if spec == "BROKEN":
            folder = adapter(tmp_path, name, 8)
            (tmp_path / name / "adapter_model.safetensors").write_bytes(b"not safetensors")
            return folder
        return adapter(tmp_path, name, int(spec[4:])) if spec.startswith("RANK") else spec

    with pytest.raises(PsiRayError, match=needle):
        lora_engine(str(tiny_model), {k: made(k, v) for k, v in adapters.items()}, **args)


def test_adapter_arguments_as_the_cli_and_serve_run_give_them(tmp_path, monkeypatch):
    """``--adapter NAME=DIR`` values, ``serve run``'s one comma-separated string and a mapping all give
    {id: absolute folder}, ``~`` expanded; a bad value is one line naming it."""
    from psi_ray.errors import PsiRayError
    from psi_ray.serve.args import ServeArgs

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    want = {"a": str(tmp_path / "x"), "b": str(tmp_path / "y")}
    for given in (["a=x", "b=~/y"], "a=x,b=~/y", {"a": "x", "b": "~/y"}):
        assert ServeArgs.parse({"model": "m", "adapters": given}).adapters == want
    for given, needle in ((["a"], "NAME=DIR"), (["a=x", "a=y"], "given twice"), (["m:a=x"], "has a ':'"),
                          (["a=s3://bucket/lora"], "not a local folder")):
        with pytest.raises(PsiRayError, match=needle):
            ServeArgs.parse({"model": "m", "adapters": given})
