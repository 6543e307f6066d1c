"""lm-eval against an OpenAI-compatible endpoint, with the package's own task YAMLs (no hub needed)."""

from __future__ import annotations

import json
import os
import socket
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from psi_ray.backends.base import check_key_transport
from psi_ray.errors import PsiRayError, last_line, require
from psi_ray.rundir import SCORES_FILE

HERE = Path(__file__).parent
EVAL_ROUTE = "/psi-ray-eval"  # where a model served for scoring lives on the cluster's Serve
# The context a model is served with for scoring (or its own, if shorter): GSM8K's prompts and answers fit.
EVAL_MAX_MODEL_LEN = 2048
SERVED_BY = "vllm"  # what serves a model folder while it is scored (saved scores record it)


@dataclass(frozen=True)
class Task:
    lm_eval_name: str
    kind: str  # "generate" (chat completions) or "loglikelihood" (completions with echo + logprobs)
    main_metric: str


TASKS = {
    "gsm8k": Task("psi_gsm8k", "generate", "exact_match,strict-match"),
    "mmlu": Task("psi_mmlu", "loglikelihood", "acc,none"),
}


def parse_tasks(text: str | list[str]) -> list[str]:
    names = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise PsiRayError(f"unknown task(s) {', '.join(unknown) or '(none given)'}; choose from: {', '.join(TASKS)}")
    return names


def write_task_dir(folder: Path) -> Path:
    """The task YAMLs with the data path filled in, in ``folder`` (lm-eval's ``include_path``)."""
    folder.mkdir(parents=True, exist_ok=True)
    for src in (HERE / "tasks").glob("*.yaml"):
        (folder / src.name).write_text(src.read_text().replace("__DATA__", str(HERE / "data")))
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def endpoint(target: str, port: int | None = None, api_key_env: str | None = None, name: str | None = None,
             adapters: dict[str, str] | None = None):
    """Yield ``(base_url, tokenizer_path or None)``: a URL as given, or a model folder served for the duration
    (as ``name``, default its folder's name, with ``adapters`` {id: LoRA folder} beside it in its engine)."""
    if target.startswith(("http://", "https://")):
        yield target.rstrip("/").removesuffix("/v1") + "/v1", None
        return
    from psi_ray import serve
    from psi_ray.models import resolve_model
    from psi_ray.serve.args import model_context

    model_dir = resolve_model(target)
    name = name or Path(model_dir).name
    # Its own route, so a model the user serves at / on the same cluster is neither replaced nor in the way.
    url = serve.start(model_dir, port=port or free_port(), name=name, api_key_env=api_key_env,
                      route_prefix=EVAL_ROUTE, request_timeout_s=REQUEST_TIMEOUT_S,
                      max_model_len=model_context(model_dir, EVAL_MAX_MODEL_LEN), adapters=adapters)
    try:
        yield url, model_dir
    finally:
        serve.stop(name)


def served_name(base_url: str, api_key: str | None, wanted: str | None = None) -> str:
    """The model id to score (lm-eval sends it with every request): ``wanted`` if the endpoint serves it, else
    the first it lists."""
    from psi_ray.backends.openai import served_models

    served = served_models(base_url, api_key, timeout=30)
    if not served:
        raise PsiRayError(f"{base_url}/models lists no model")
    if wanted is not None and wanted not in served:
        raise PsiRayError(f"{base_url} does not serve '{wanted}'; it serves {', '.join(served)}")
    return wanted or served[0]


def evaluate(target: str, tasks: list[str], out_dir: str | Path, limit: int | None = None,
             tokenizer: str | None = None, api_key_env: str | None = None, max_gen_tokens: int = 256,
             concurrency: int = 64, allow_insecure_key: bool = False, model: str | None = None) -> dict:
    """Score ``target`` (endpoint URL or model) on ``tasks``; write lm-eval's outputs and ``scores.json``.

    A model folder is served for the duration (:mod:`psi_ray.serve`: ray.serve.llm's vLLM app). ``model``: the
    served id to score (an endpoint may serve adapters beside its model); default the first it lists.

    A key from ``$api_key_env`` is refused for plain http to another host unless ``allow_insecure_key``."""
    require("lm_eval", "evaluation", package="lm-eval[api]")
    tasks = parse_tasks(tasks)
    api_key = os.environ.get(api_key_env, "") if api_key_env else ""
    if target.startswith(("http://", "https://")):
        check_key_transport(target, api_key, api_key_env, allow_insecure_key, "--allow-insecure-key")
    elif model is not None:
        raise PsiRayError("--model picks one of the models an endpoint serves; a model folder is served and "
                          "scored as itself")
    needs_tokens = [t for t in tasks if TASKS[t].kind == "loglikelihood"]
    if needs_tokens and not tokenizer and target.startswith(("http://", "https://")):
        raise PsiRayError(f"task(s) {', '.join(needs_tokens)} score log-likelihoods of token ids: pass --tokenizer "
                          "MODEL_DIR (the served model's tokenizer)")
    with endpoint(target, api_key_env=api_key_env) as (base_url, served_tokenizer):
        return score(base_url, served_name(base_url, api_key, model), tasks, out_dir, target,
                     tokenizer or served_tokenizer, limit, max_gen_tokens, concurrency, api_key)


def evaluate_with_adapter(base: str, adapter: str, tasks: list[str], out_dirs: dict[str, Path],
                          records: dict[str, str], limit: int | None = None, max_gen_tokens: int = 256,
                          concurrency: int = 64) -> dict[str, dict]:
    """Score a base model (label ``"base"``) and its LoRA ``adapter`` (label ``"finetuned"``) from one served
    engine (vLLM multi-LoRA): one engine start instead of two, and the same base weights in memory once.
    ``out_dirs``: the labels to score, each with its output folder; ``records``: what each report names as its
    model (the fine-tuned one: the merged folder the adapter was exported with; its report also names the
    adapter that was served)."""
    require("lm_eval", "evaluation", package="lm-eval[api]")
    tasks = parse_tasks(tasks)
    ids = {"base": "eval-base", "finetuned": "eval-finetuned"}
    with endpoint(base, name=ids["base"], adapters={ids["finetuned"]: adapter}) as (base_url, tokenizer):
        return {label: score(base_url, ids[label], tasks, out, records[label], tokenizer, limit, max_gen_tokens,
                             concurrency, adapter=adapter if label == "finetuned" else None)
                for label, out in out_dirs.items()}


def score(base_url: str, name: str, tasks: list[str], out_dir: str | Path, model: str, tokenizer: str | None,
          limit: int | None, max_gen_tokens: int, concurrency: int, api_key: str = "",
          adapter: str | None = None) -> dict:
    """lm-eval on the model served as ``name`` at ``base_url``; write its samples and ``scores.json`` (naming
    ``model``, and ``adapter`` when that LoRA adapter is what answered) in ``out_dir``; return that report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    scores, samples = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        include = write_task_dir(Path(tmp))
        for task in tasks:
            spec = TASKS[task]
            result = _run_lm_eval(spec, base_url, name, tokenizer, include, limit, max_gen_tokens,
                                  concurrency, api_key)
            scores[task] = {k: float(v) for k, v in result["results"][spec.lm_eval_name].items()
                            if "," in k and "_stderr" not in k}
            samples[task] = result.get("samples", {}).get(spec.lm_eval_name, [])
            _write_samples(out_dir / f"samples_{task}.jsonl", samples[task])
    report = {"model": model, **({"adapter": adapter} if adapter else {}), "served_name": name,
              "endpoint": base_url, "limit": limit, "tasks": scores,
              "main_metric": {t: TASKS[t].main_metric for t in tasks}}
    (out_dir / SCORES_FILE).write_text(json.dumps(report, indent=2))
    return report


# lm-eval's per-request timeout (its default is 300 s). The served engine runs every request in flight as one
# batch, so on a small CPU machine a whole wave of answers can take longer than 300 s: lm-eval then cancels and
# re-sends all of them, and the engine does the same work again (make run's eval stage took over 10 minutes that
# way). A slow answer is not a failed one.
REQUEST_TIMEOUT_S = 3600


def _run_lm_eval(spec: Task, base_url: str, name: str, tokenizer: str | None, include: Path,
                 limit: int | None, max_gen_tokens: int, concurrency: int, api_key: str) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    if spec.kind == "generate":
        model = "local-chat-completions"
        args = {"base_url": f"{base_url}/chat/completions", "model": name, "num_concurrent": concurrency,
                "max_retries": 3, "tokenized_requests": False, "max_gen_toks": max_gen_tokens,
                "timeout": REQUEST_TIMEOUT_S}
    else:
        model = "local-completions"
        args = {"base_url": f"{base_url}/completions", "model": name, "tokenizer_backend": "huggingface",
                "tokenizer": tokenizer, "batch_size": concurrency, "max_retries": 3, "timeout": REQUEST_TIMEOUT_S}
    old_key = os.environ.get("OPENAI_API_KEY")
    os.environ["OPENAI_API_KEY"] = api_key  # lm-eval's local API models read the bearer key from here
    try:
        # Only psi-ray's own task files: indexing lm-eval's ~14,700 built-in tasks took 10 s per call here.
        tasks = TaskManager(include_path=str(include), include_defaults=False)
        return lm_eval.simple_evaluate(
            model=model, model_args=args, tasks=[spec.lm_eval_name], task_manager=tasks, limit=limit,
            apply_chat_template=spec.kind == "generate", log_samples=True,
            gen_kwargs=f"max_gen_toks={max_gen_tokens}" if spec.kind == "generate" else None)
    except Exception as exc:
        raise PsiRayError(f"lm-eval failed on {spec.lm_eval_name}: {last_line(exc)}") from None
    finally:
        if old_key is None:
            os.environ.pop("OPENAI_API_KEY", None)
        else:
            os.environ["OPENAI_API_KEY"] = old_key


def _write_samples(path: Path, samples: list[dict]) -> None:
    """One line per question and filter (lm-eval logs a task with two filters, like GSM8K's strict-match and
    flexible-extract, twice per question: ``filter`` says which line is which)."""
    with open(path, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps({k: s.get(k) for k in ("doc_id", "filter", "doc", "target", "resps", "filtered_resps",
                                                       "exact_match", "acc")}, default=str) + "\n")
