"""psi-ray: PSI instruction-tuning data on Ray.

A large model M_L writes task principles from a few seed examples; a small model M_g writes the bulk of the
dataset guided by them; a target model M_t is fine-tuned, served and scored. Importing this package loads
neither torch nor vLLM: engines are imported on first use (see ``psi_ray.backends``).
"""

__version__ = "0.1.0"
