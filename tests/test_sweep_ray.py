"""The Ray executor on a local Ray instance (2 CPUs) started by the test: a 4-run sweep, then a worker
that dies mid-run (recorded `failed` with the Ray error by the driver)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import fake_load_records
from test_sweep import assert_index_matches_files, load, write_experiment

ray = pytest.importorskip("ray")
TESTS_DIR = Path(__file__).resolve().parent


def install_crashing_data() -> None:
    """Setup hook whose data layer kills the worker process (as the OOM killer would) on the train split."""
    import peftlab.data as data

    def load_records(task, split, source="auto", limit=None, seed=0):
        if split == "train":
            os._exit(9)
        return fake_load_records(task, split, source, limit, seed)

    data.load_records = load_records


@pytest.fixture(scope="module")
def local_ray():
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 2**20, logging_level="WARNING",
             log_to_driver=False)
    yield ray
    ray.shutdown()


def ray_executor(setup: str) -> dict:
    # workers import the setup hook from tests/ (PYTHONPATH), each run asks for 1 CPU and 1 GiB
    return {"kind": "ray", "num_cpus": 1, "memory_gb": 1, "setup": setup, "env": {"PYTHONPATH": str(TESTS_DIR)}}


@pytest.mark.timeout(240)
def test_ray_executor_runs_a_4_run_sweep(local_ray, tmp_path, tiny_llama_dir, capsys) -> None:
    from peftlab.cli.display import Display
    from peftlab.executors import run_sweep
    from peftlab.store import Store

    exp = load(write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, name="rayx", methods=["lora", "ia3"],
                                seeds=[0, 1], executor=ray_executor("test_sweep:install_fake_data")), tmp_path / "s")
    store = Store(tmp_path / "s")
    summary = run_sweep(exp, store, executor="ray", listener=Display())
    out = capsys.readouterr().out
    assert summary.counts() == {"ok": 4} and summary.ok, [r.get("error") for r in summary.results]
    assert "submitted 4 run(s) to Ray (num_cpus=1, num_gpus=0, memory=1GiB each" in out
    assert "[4/4] " in out
    results = store.results(experiment="rayx")
    assert len(results) == 4 and {r["status"] for r in results} == {"ok"}
    assert {r["sweep_id"] for r in results} == {summary.sweep_id}
    # the runs happened in the Ray workers: only they got the fake data layer through the setup hook
    import peftlab.data

    assert peftlab.data.load_records.__module__ == "peftlab.data"
    assert all((store.run_dir(r["run_id"]) / "adapter").exists() for r in results)
    again = run_sweep(exp, store, executor="ray")  # resume: nothing left to do
    assert again.results == [] and len(again.already_ok) == 4
    assert_index_matches_files(store)


@pytest.mark.timeout(180)
def test_ray_worker_death_is_recorded_failed_by_the_driver(local_ray, tmp_path, tiny_llama_dir) -> None:
    from peftlab.executors import run_sweep
    from peftlab.store import Store

    exp = load(write_experiment(tmp_path / "exp.yaml", tiny_llama_dir, name="crash", methods=["lora"],
                                executor=ray_executor("test_sweep_ray:install_crashing_data")), tmp_path / "s")
    store = Store(tmp_path / "s")
    summary = run_sweep(exp, store, executor="ray")
    assert summary.counts() == {"failed": 1} and not summary.ok
    result = store.read_result(summary.ran[0])
    assert result["status"] == "failed" and "Ray task running this run was lost" in result["error"]
    assert "pid" not in result and result["finished_at"]
    assert store.status(summary.ran[0]) == "failed"
