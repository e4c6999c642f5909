"""`layersweep train` on a finished tiny sweep (real local Ray, real MLflow sqlite), then export with MLflow."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient
from safetensors.torch import load_file

from orchestrator.cli import main
from orchestrator.config import load_sweep_config

pytestmark = pytest.mark.slow
TINY = Path(__file__).resolve().parent.parent / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def local_ray():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_train_top_k_then_export_logs_and_registers_the_model(local_ray, tmp_path, capsys, monkeypatch):
    from orchestrator.driver import run_sweep
    from workers.base_model import resolve_model_dir

    monkeypatch.chdir(tmp_path)  # MLflow's default artifact root (./mlruns) stays inside the test's directory
    cfg = load_sweep_config(TINY, {"output_dir": str(tmp_path / "runs"), "model.cache_dir": str(tmp_path / "cache")})
    run_sweep(cfg, emit=lambda line: None, include_dashboard=False)
    sweep_dir = tmp_path / "runs" / "tiny-test"
    ranking = pd.read_csv(sweep_dir / "ranking.csv")
    top2 = sorted(ranking["layer"].head(2).tolist())
    capsys.readouterr()

    assert main(["train", str(sweep_dir), "--top-k", "2", "--no-dashboard"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"training layers {top2[0]}+{top2[1]} together (top-2):\n  ranked by ")
    name = f"set{top2[0]:02d}+{top2[1]:02d}-s0"
    table = pd.read_parquet(sweep_dir / "results.parquet")
    subset = table[table["kind"] == "subset"]
    assert subset["trial"].tolist() == [name] and subset["label"].tolist() == ["top-2"] and subset["status"].tolist() == ["done"]
    assert sorted(table.loc[table["kind"] == "layers", "layer"].tolist()) == [0, 1, 2]  # the sweep's rows are kept
    assert f"| top-2 | {top2[0]}+{top2[1]} | 1 |" in (sweep_dir / "ranking.md").read_text()
    assert main(["train", str(sweep_dir), "--layers", f"{top2[0]},{top2[1]}", "--no-dashboard"]) == 2  # same set, same seed
    assert f"layersweep: error: {name} already finished in " in capsys.readouterr().err

    client = MlflowClient(tracking_uri=f"sqlite:///{sweep_dir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("layersweep").experiment_id])
    parent = next(r for r in runs if r.data.tags.get("layersweep.kind") == "sweep")
    child = next(r for r in runs if r.data.tags.get("layersweep.trial") == name)
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id and child.data.tags["layersweep.kind"] == "subset"
    assert child.data.metrics["final_score"] == pytest.approx(float(subset["score"].iloc[0]))

    assert main(["export", str(sweep_dir), name, "--out", str(tmp_path / "model"), "--mlflow", "--register", "tiny-top2"]) == 0
    base = load_file(str(Path(resolve_model_dir(cfg.trial_config())) / "model.safetensors"))
    exported = load_file(str(tmp_path / "model" / "model.safetensors"))
    changed = {n.split(".")[2] for n in base if not torch.equal(base[n], exported[n])}
    assert changed == {str(i) for i in top2}  # exactly the two chosen layers moved
    versions = client.search_model_versions("name='tiny-top2'")
    assert len(versions) == 1 and versions[0].run_id == child.info.run_id
    assert {a.path for a in client.list_artifacts(child.info.run_id, "layer_delta")} == {
        "layer_delta/delta.json", "layer_delta/delta.safetensors"}
