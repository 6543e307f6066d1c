"""The PSI stages in pipeline order, each a module of pure functions (no Ray, no engine):

``seeds`` → ``expand`` → ``principles`` → ``cluster`` → ``summarize`` → ``instances`` → ``filter`` →
``dataset``. ``psi_ray.pipeline`` wires them to engines and Ray Data.
"""

from psi_ray.errors import PsiRayError


def require_columns(stage: str, rows: list[dict], columns: list[str]) -> None:
    """Fail with the stage's name, the missing columns and the present ones."""
    if rows:
        require_column_names(stage, list(rows[0]), columns)


def require_column_names(stage: str, present: list[str], columns: list[str]) -> None:
    """:func:`require_columns` for a table's column names (an Arrow table's ``column_names``)."""
    missing = [c for c in columns if c not in present]
    if missing:
        raise PsiRayError(f"stage {stage}: missing input columns {missing}; present: {sorted(present)}")
