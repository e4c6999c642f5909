"""A new sweep's MLflow sqlite file, copied from a template rather than built table by table.

On first use of a new sqlite file MLflow creates its tables and runs its schema migrations, then the Default
experiment: 0.9 s of the driver's core per sweep (measured on the default sweep), spent after Ray is up and
before the first trial can start. The result depends only on MLflow's version and on the working directory
(Default's artifact location is `./mlruns/0` resolved against it), so it is built once per pair in the model
cache (`LAYERSWEEP_CACHE`, default ~/.cache/layersweep) and a new sweep gets a copy (a few milliseconds) in which
only Default's creation time is set to now. An existing file is never touched; other URIs are left to MLflow.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient

from workers.config import default_cache_dir

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The file a `sqlite:///` URI names (absolute with four slashes, else relative); None for other stores."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri[len(SQLITE_PREFIX):].split("?", 1)[0])


def template_path(cache_dir: Path) -> Path:
    workdir = hashlib.sha1(os.getcwd().encode()).hexdigest()[:12]
    return cache_dir / "mlflow-sqlite" / f"mlflow-{mlflow.__version__}-{workdir}.db"


def _build_template(template: Path) -> None:
    """What MLflow itself makes of a new file, written beside the template and renamed into place (two sweeps
    building it at once each rename a complete file)."""
    template.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(suffix=".db", dir=template.parent)
    os.close(handle)
    os.unlink(staging)  # MLflow creates the file itself
    try:
        MlflowClient(tracking_uri=f"{SQLITE_PREFIX}{staging}").search_experiments(max_results=1)
        os.replace(staging, template)
    finally:
        Path(staging).unlink(missing_ok=True)


def create_from_template(tracking_uri: str, cache_dir: Path | None = None) -> bool:
    """Make the sqlite file `tracking_uri` names from the template when it does not exist yet; True if it did."""
    path = sqlite_file(tracking_uri)
    if path is None or path.exists():
        return False
    template = template_path(cache_dir or default_cache_dir())
    if not template.exists():
        _build_template(template)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.copyfile(template, staging)
    now_ms = int(time.time() * 1000)
    with sqlite3.connect(staging) as connection:
        connection.execute("UPDATE experiments SET creation_time = ?, last_update_time = ? WHERE experiment_id = 0",
                           (now_ms, now_ms))
    connection.close()
    os.replace(staging, path)
    return True
