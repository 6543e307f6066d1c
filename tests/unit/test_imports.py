"""`import psi_ray` (and the CLI, config, pipeline modules) must not import torch or vLLM."""

import subprocess
import sys


def test_import_psi_ray_is_light():
    code = (
        "import sys, psi_ray, psi_ray.cli, psi_ray.config, psi_ray.backends, psi_ray.pipeline, psi_ray.models; "
        "heavy = [m for m in ('torch', 'vllm', 'transformers') if m in sys.modules]; "
        "print(heavy); sys.exit(1 if heavy else 0)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
