"""A new sweep's sqlite store copied from the template is the store MLflow itself would have created."""

import sqlite3
import time

from mlflow.tracking import MlflowClient

from orchestrator.mlflow_sqlite import create_from_template, sqlite_file, template_path
from orchestrator.tracking import SweepTracker


def _clauses(sql):
    """A CREATE statement's lines as a set: the order of a table's constraints follows Python's string hashing in
    the process that ran MLflow's migrations, so two MLflow-made files differ in it anyway."""
    return frozenset(line.strip().rstrip(",").strip() for line in (sql or "").splitlines())


def _dump(path):
    with sqlite3.connect(path) as connection:
        schema = sorted((kind, name, _clauses(sql)) for kind, name, sql in connection.execute("SELECT type, name, sql FROM sqlite_master"))
        migration = connection.execute("SELECT version_num FROM alembic_version").fetchall()
        experiments = connection.execute("SELECT experiment_id, name, artifact_location, lifecycle_stage, creation_time "
                                         "FROM experiments").fetchall()
    connection.close()
    return schema, migration, experiments


def test_template_copy_equals_what_mlflow_creates(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tmp_path / "cache"
    by_mlflow, copied = tmp_path / "mlflow.db", tmp_path / "sweep" / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{by_mlflow}").search_experiments()
    before = int(time.time() * 1000)
    assert create_from_template(f"sqlite:///{copied}", cache)
    assert template_path(cache).exists()
    schema, migration, experiments = _dump(by_mlflow)
    copied_schema, copied_migration, copied_experiments = _dump(copied)
    assert copied_schema == schema and len(schema) > 20
    assert copied_migration == migration
    assert [row[:4] for row in copied_experiments] == [row[:4] for row in experiments]
    assert experiments[0][2] == str(tmp_path / "mlruns" / "0")  # Default's artifacts: ./mlruns/0 of this directory
    assert copied_experiments[0][4] >= before  # created now, not when the template was
    assert not list(copied.parent.glob(".*.tmp"))


def test_only_a_new_sqlite_file_is_made_and_the_tracker_uses_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LAYERSWEEP_CACHE", str(tmp_path / "cache"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert sqlite_file(uri) == tmp_path / "mlflow.db"
    assert sqlite_file("http://127.0.0.1:5000") is None
    assert not create_from_template("http://127.0.0.1:5000", tmp_path / "cache")
    tracker = SweepTracker(uri, "layersweep", tmp_path)  # makes the file from the template ($LAYERSWEEP_CACHE)
    assert not create_from_template(uri, tmp_path / "cache")  # exists: left alone
    parent = tracker.start_sweep("s", {"seed": 0})
    client = MlflowClient(tracking_uri=uri)
    assert client.get_run(parent).info.experiment_id == client.get_experiment_by_name("layersweep").experiment_id
    assert (tmp_path / "cache" / "mlflow-sqlite").is_dir()


def test_uris_it_leaves_to_mlflow_and_a_damaged_template_is_dropped(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert sqlite_file("sqlite:///:memory:") is None
    assert sqlite_file("sqlite:///file:runs.db?mode=ro&uri=true") is None
    assert sqlite_file(f"sqlite:///{tmp_path}/my%20runs.db") == tmp_path / "my runs.db"  # as SQLAlchemy reads it
    cache = tmp_path / "cache"
    template = template_path(cache)
    template.parent.mkdir(parents=True)
    template.write_bytes(b"not a database")
    uri = f"sqlite:///{tmp_path / 'sweep' / 'mlflow.db'}"
    assert not create_from_template(uri, cache)
    assert "template not used" in caplog.text and not template.exists()
    assert not (tmp_path / "sweep" / "mlflow.db").exists() and not list((tmp_path / "sweep").glob(".*.tmp"))
    assert create_from_template(uri, cache)  # rebuilt
    MlflowClient(tracking_uri=uri).create_experiment("layersweep")
