"""Stage 8, train: fine-tune the target model M_t on a psi-ray dataset with Ray Train.

``psi-ray train RUN_DIR|DATASET --model M_t`` (or ``train.enabled`` in a job) runs a ``TorchTrainer`` whose
workers execute :func:`psi_ray.train.loop.train_loop`, then exports an HF model folder (LoRA merged).
"""

from psi_ray.train.run import TrainResult, train

__all__ = ["TrainResult", "train"]
