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
import logging
import os
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import mlflow
from mlflow.tracking import MlflowClient
from sqlalchemy.engine import make_url

from workers.config import default_cache_dir

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def sqlite_file(tracking_uri: str) -> Path | None:
    """The file a `sqlite:///` URI names, as SQLAlchemy reads it (percent-escapes decoded); None for other stores,
    an in-memory database and SQLite's own `file:` URI form."""
    if not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    url = make_url(tracking_uri)
    if not url.database or url.database == ":memory:" or url.database.startswith("file:") or "uri" in url.query:
        return None
    return Path(url.database)


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
    """Make the sqlite file `tracking_uri` names from the template when it does not exist yet; True if it did.
    Never overwrites: a file that appeared meanwhile (another sweep on the same store) is left as it is. Any
    failure (an unwritable cache, a damaged template, which is then removed) returns False with a warning, and
    MLflow creates the store itself as before."""
    path = sqlite_file(tracking_uri)
    if path is None or path.exists():
        return False
    template = template_path(cache_dir or default_cache_dir())
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        if not template.exists():
            _build_template(template)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(template, staging)
        now_ms = int(time.time() * 1000)
        connection = sqlite3.connect(staging)
        try:
            with connection:
                updated = connection.execute("UPDATE experiments SET creation_time = ?, last_update_time = ? "
                                             "WHERE experiment_id = 0", (now_ms, now_ms)).rowcount
        finally:
            connection.close()
        if updated != 1:
            raise sqlite3.DatabaseError("the template has no Default experiment")
        os.link(staging, path)  # unlike a rename, fails on an existing file
        return True
    except FileExistsError:
        return False
    except (OSError, sqlite3.Error) as error:
        if isinstance(error, sqlite3.Error):
            template.unlink(missing_ok=True)  # damaged: the next sweep builds a new one
        log.warning("MLflow sqlite template not used for %s (%s); MLflow creates the store", path, error)
        return False
    finally:
        staging.unlink(missing_ok=True)
