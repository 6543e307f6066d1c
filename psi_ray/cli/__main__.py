"""``python -m psi_ray.cli``: the ``psi-ray`` command (what submitted Ray jobs run)."""

import sys

from psi_ray.cli import main

sys.exit(main())
