"""The PSI stages in pipeline order, each a module of pure functions (no Ray, no engine):

``seeds`` → ``expand`` → ``principles`` → ``cluster`` → ``summarize`` → ``instances`` → ``filter`` →
``dataset``. ``psi_ray.pipeline`` wires them to engines and Ray Data.
"""

from psi_ray.errors import PsiRayError


def require_columns(stage: str, rows: list[dict], columns: list[str]) -> None:
    """Fail with the stage's name, the missing columns and the present ones."""
    if not rows:
        return
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise PsiRayError(f"stage {stage}: missing input columns {missing}; present: {sorted(rows[0])}")
