"""The run directory is the state: ``runs/<run_id>/<NN>_<stage>/part-*.parquet`` and a manifest written last.

A stage whose manifest exists is done and is read back instead of recomputed; a manifest made from a
different config is an error, not a silent reuse. An unfinished stage carries its config digest in
``_config_digest`` from its first part on, so parts left by a run with another config (say another
``shard_size``) are refused too, never mixed in. Every file is written to a temporary name and renamed, so a
killed run never leaves a half-written part or manifest, and one driver at a time holds a run directory
(:func:`locked`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import tempfile
from contextlib import contextmanager
from pathlib import Path

from psi_ray.errors import PsiRayError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes files private; run artifacts are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# The type a column takes in a part where every value is None (or every list empty), so the parts of one stage
# share a schema and the folder reads as one table; columns not named here are text.
EMPTY_COLUMN_TYPES = {"verified": "bool_", "agreement": "float64"}


def typed_table(rows: list[dict]):
    """``rows`` as an Arrow table whose all-None columns and empty-list columns have their real type, not
    ``null``: a shard where no row had an error must not make ``error`` unreadable beside the other shards."""
    import pyarrow as pa

    table = pa.Table.from_pylist(rows)
    fields = []
    for f in table.schema:
        if pa.types.is_null(f.type):
            f = f.with_type(getattr(pa, EMPTY_COLUMN_TYPES.get(f.name, "string"))())
        elif pa.types.is_list(f.type) and pa.types.is_null(f.type.value_type):
            f = f.with_type(pa.list_(pa.string()))
        fields.append(f)
    return table.cast(pa.schema(fields, metadata=table.schema.metadata))


def write_parquet(path: Path, rows: list[dict]) -> None:
    write_table(path, typed_table(rows))


def write_table(path: Path, table) -> None:
    """An Arrow table as one Parquet file, renamed into place once whole."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


def read_table(path: Path):
    """One Parquet file as an Arrow table."""
    import pyarrow.parquet as pq

    return pq.read_table(path)


def read_parquet_rows(paths: list[Path]) -> list[dict]:
    import pyarrow.parquet as pq

    rows: list[dict] = []
    for p in paths:
        rows.extend(pq.read_table(p).to_pylist())
    return rows


class ParquetSink:
    """Append batches of rows to one Parquet file, renamed into place on a clean exit only."""

    def __init__(self, path: Path, schema=None):
        self.path, self.rows, self._writer, self.schema = Path(path), 0, None, schema
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.with_name(f".{self.path.name}.tmp")

    def write(self, rows: list[dict]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=self._writer.schema if self._writer else self.schema)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, table.schema)
        self._writer.write_table(table)
        self.rows += len(rows)

    def write_table(self, table) -> None:
        """Append an Arrow table (cast to the sink's schema)."""
        import pyarrow.parquet as pq

        if not table.num_rows:
            return
        if self._writer is None:
            self._writer = pq.ParquetWriter(self._tmp, self.schema or table.schema)
        self._writer.write_table(table.cast(self._writer.schema))
        self.rows += table.num_rows

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if self._writer is None:
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(self.schema.empty_table() if self.schema else pa.table({}), self._tmp)
        else:
            self._writer.close()
        if exc_type is None:
            os.replace(self._tmp, self.path)
        else:
            self._tmp.unlink(missing_ok=True)


# In a stage folder the table is the ``*.parquet`` files; everything else starts with "_", which pandas,
# pyarrow.dataset and Spark skip, so ``pd.read_parquet("runs/X/05_instances")`` reads the stage's rows.
STAMP = "_config_digest"
MANIFEST = "_manifest.json"
LEGACY_MANIFEST = "manifest.json"  # run directories written before the "_" names
DATASET_FILE = "data.parquet"  # in the dataset stage's folder
DATASET_CARD = "_README.md"  # beside it (rename to README.md to publish the folder on the Hugging Face Hub)
TRAIN_STATE = "_ray"  # in a training output folder: Ray Train's checkpoints and run snapshot
TRAIN_CLAIM = "_training.json"  # beside it: what that folder trains (dataset digest, model, settings)
MODEL_DIR = "model"  # in the run directory: the exported HF model of the train stage
ADAPTER_DIR = "adapter"  # in a LoRA-trained model folder: the PEFT adapter it was merged from
SAMPLES_DIR = "_samples"  # in the eval stage's folder: lm-eval's outputs per model
SCORES_FILE = "scores.json"  # what ``evaluate`` writes in its output folder
STAGE_SCORES = "_scores.json"  # in the eval stage's folder: base vs fine-tuned

# The run layout: each stage's folder is ``<index:02d>_<name>``; verify shares instances' index (stage 5b).
STAGES = {"seeds": 0, "expand": 1, "principles": 2, "cluster": 3, "summarize": 4, "instances": 5, "verify": 5,
          "filter": 6, "dataset": 7, "train": 8, "eval": 9}


@contextmanager
def locked(run_dir: Path):
    """Hold ``run_dir`` for this process: a second driver on the same folder fails at once, naming the holder.

    An advisory ``flock`` on ``run_dir/.lock``: the kernel drops it when the holder exits, even on SIGKILL, so
    a killed run never leaves a stale lock behind.
    """
    path = Path(run_dir) / ".lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise PsiRayError(f"{run_dir} is in use by another psi-ray run ({holder}); wait for it to finish, "
                              "or use another run_id") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


class StageDir:
    """One stage's folder: parts, extra files, and the manifest that marks it done."""

    def __init__(self, run_dir: Path, index: int, name: str):
        self.name = name
        self.path = Path(run_dir) / f"{index:02d}_{name}"

    @property
    def manifest_path(self) -> Path:
        """``_manifest.json``; in a run directory from before the "_" names, its ``manifest.json``."""
        legacy = self.path / LEGACY_MANIFEST
        return legacy if legacy.exists() and not (self.path / MANIFEST).exists() else self.path / MANIFEST

    @classmethod
    def named(cls, run_dir: Path, name: str) -> StageDir:
        """The folder of stage ``name`` in ``run_dir``, as :data:`STAGES` places it."""
        return cls(run_dir, STAGES[name], name)

    def manifest(self) -> dict | None:
        if not self.manifest_path.exists():
            return None
        return json.loads(self.manifest_path.read_text())

    def finished(self, digest: str) -> dict | None:
        """The manifest if this stage is done with the same config; an error if done with another."""
        m = self.manifest()
        if m is not None and m.get("digest") != digest:
            raise PsiRayError(
                f"{self.path} was made with a different config (digest {m.get('digest')} != {digest}); "
                "use another run_id, or delete the run directory to start over"
            )
        return m

    def claim(self, digest: str) -> None:
        """Before computing: refuse parts an unfinished run left with another config; stamp this one's digest.

        Parts with no stamp are refused as well: nothing says which config made them.
        """
        stamp = self.path / STAMP
        left = stamp.read_text().strip() if stamp.exists() else None
        if left != digest and self.parts():
            raise PsiRayError(
                f"{self.path} holds unfinished parts made with a different config (digest {left or 'unknown'} "
                f"!= {digest}); restore that config to resume, use another run_id, or delete {self.path} to "
                "compute this stage again")
        atomic_write_text(stamp, digest)

    def part_path(self, part: int) -> Path:
        return self.path / f"part-{part:05d}.parquet"

    def parts(self) -> dict[int, Path]:
        return {int(p.stem.split("-")[1]): p for p in sorted(self.path.glob("part-*.parquet"))}

    def write_part(self, part: int, rows: list[dict]) -> None:
        write_parquet(self.part_path(part), rows)

    def write_table(self, part: int, table) -> None:
        write_table(self.part_path(part), table)

    def read(self) -> list[dict]:
        return read_parquet_rows(list(self.parts().values()))

    def read_table(self, columns: list[str]):
        """The stage's parts as one Arrow table of ``columns`` (no Python rows: sizes and counts at scale)."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        tables = [pq.read_table(p, columns=columns) for p in self.parts().values()]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def read_column(self, name: str) -> list:
        import pyarrow.parquet as pq

        return [v for p in self.parts().values() for v in pq.read_table(p, columns=[name]).column(name).to_pylist()]

    def write_manifest(self, data: dict) -> None:
        atomic_write_text(self.path / MANIFEST, json.dumps(data, indent=2, sort_keys=True, default=str))


def dataset_file(run_dir: Path) -> Path:
    """The dataset a run made (``07_dataset/data.parquet``)."""
    return StageDir.named(run_dir, "dataset").path / DATASET_FILE


def scores_file(run_dir: Path) -> Path:
    """The eval stage's base vs fine-tuned scores (``09_eval/_scores.json``; older runs: ``scores.json``, or
    ``eval/scores.json`` before the stage had an index)."""
    stage = StageDir.named(run_dir, "eval").path
    for path in (stage / STAGE_SCORES, stage / SCORES_FILE, Path(run_dir) / "eval" / SCORES_FILE):
        if path.exists():
            return path
    return stage / STAGE_SCORES


def model_dir(run_dir: Path) -> Path:
    """The fine-tuned model a run's train stage exported (``model/``; older runs: ``08_train/model``)."""
    legacy = StageDir.named(run_dir, "train").path / MODEL_DIR
    return legacy if legacy.is_dir() and not (Path(run_dir) / MODEL_DIR).exists() else Path(run_dir) / MODEL_DIR


def stage_dirs(run_dir: Path) -> list[StageDir]:
    """The stage folders present in a run, in pipeline order."""
    out = []
    for p in sorted(Path(run_dir).glob("[0-9][0-9]_*")):
        idx, _, name = p.name.partition("_")
        out.append(StageDir(run_dir, int(idx), name))
    return out
