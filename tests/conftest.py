"""Shared fixtures: a tiny random causal LM built in a temp folder, one Ray instance per session, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not (loop.last and m['role'] == 'assistant') %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_model(folder: Path) -> Path:
    """A 2-layer random Llama with a byte-level BPE tokenizer trained on a few sentences: loads in < 1 s. One
    attention head of 32 dimensions, a head size vLLM's CPU attention takes, so the Serve app can serve it."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    corpus = ["Question: What is 2 + 3? Answer: 2 + 3 = <<2+3=5>>5\n#### 5", "principles of math word problems"] * 20
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|im_start|>")
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=512,
                         eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                         bos_token_id=fast.bos_token_id, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def random_lora(base: str | Path, folder: Path, rank: int = 8, targets="all-linear"):
    """Save a PEFT LoRA adapter of ``base`` in ``folder`` whose B matrices are drawn at random (std 0.02), so it
    changes the model (a freshly initialised one would not); return the model with it merged, in transformers,
    float32: what the adapter's answers through an engine must equal."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=targets))
    for name, weight in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(weight, std=0.02)
    model.save_pretrained(folder)
    return model.merge_and_unload()


def token_logprobs(model, tokenizer_dir: str | Path, text: str) -> list[float]:
    """Each token's log-probability after the ones before it (the first token has none), as an echo with
    ``logprobs`` returns them."""
    import torch
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(tokenizer_dir)(text, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    return torch.log_softmax(logits, -1)[:-1].gather(1, ids[0, 1:, None])[:, 0].tolist()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def chat_dataset(tmp_path_factory) -> Path:
    """A 24-row chat dataset (``messages``) of tiny GSM8K-style sums, as the dataset stage writes it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path_factory.mktemp("chat-data") / "data.parquet"
    rows = [{"messages": [{"role": "user", "content": f"What is {i} + 3?"},
                          {"role": "assistant", "content": f"{i} + 3 = <<{i}+3={i + 3}>>{i + 3}\n#### {i + 3}"}]}
            for i in range(24)]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole test session (each start costs ~20 s here)."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False,
                 runtime_env={"env_vars": {k: os.environ[k] for k in ("PSI_RAY_HOME", "HF_HUB_OFFLINE")
                                           if k in os.environ}})
    yield ray
    ray.shutdown()


def run_cli(*args: str, env: dict | None = None, timeout: int = 600, cwd: Path | None = None):
    """Run ``psi-ray ARGS`` in a fresh interpreter, as a user would."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "psi_ray.cli", *args], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=cwd or ROOT)
