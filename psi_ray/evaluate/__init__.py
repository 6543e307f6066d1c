"""Stage 10, eval: score a served model with lm-eval on tasks and data that ship in the package.

``psi-ray eval ENDPOINT|MODEL_DIR --tasks gsm8k,mmlu``: a model folder is served first (Ray Serve, see
:mod:`psi_ray.serve`), an endpoint is scored as it is. Generative tasks go through lm-eval's
``local-chat-completions`` (the model's own chat template, on the server), log-likelihood tasks through
``local-completions`` with ``echo`` and ``logprobs``. A base model and its LoRA adapter are scored from one
served engine (:func:`evaluate_with_adapter`).
"""

from psi_ray.evaluate.run import TASKS, evaluate, evaluate_with_adapter

__all__ = ["TASKS", "evaluate", "evaluate_with_adapter"]
