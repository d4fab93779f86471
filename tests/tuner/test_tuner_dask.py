"""Measurements on a Dask cluster give the records of the local process pool, for the same seed."""

import socket

import pytest

from energon_tvm.tuner import ClusterError, tune

distributed = pytest.importorskip("distributed")


def test_dask_cluster_gives_the_local_pool_records(tmp_path, cfg, workload, profile, small_knobs):
    common = dict(trials=12, seed=11, batch_size=4, knobs=small_knobs, progress=False,
                  tuner_options={"min_train": 4})
    local = tune(workload, cfg, profile, n_parallel=2, records=tmp_path / "local.jsonl", **common)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        on_dask = tune(workload, cfg, profile, dask_scheduler=cluster.scheduler_address,
                       records=tmp_path / "dask.jsonl", **common)
        with distributed.Client(cluster) as client:  # a caller's own Client is used, not closed
            with_client = tune(workload, cfg, profile, dask_scheduler=client, **common)
            assert client.status == "running"
    assert on_dask.records == local.records == with_client.records
    assert (tmp_path / "dask.jsonl").read_bytes() == (tmp_path / "local.jsonl").read_bytes()


def test_unreachable_scheduler_is_a_typed_error(cfg, workload, profile, small_knobs):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    with pytest.raises(ClusterError, match=f"cannot reach the Dask scheduler at {address} within 1 s"):
        tune(workload, cfg, profile, knobs=small_knobs, dask_scheduler=address, dask_timeout=1, progress=False)


def test_malformed_scheduler_address_is_a_typed_error(cfg, workload, profile, small_knobs):
    with pytest.raises(ClusterError, match="address 'nonsense' is not valid: missing port"):
        tune(workload, cfg, profile, knobs=small_knobs, dask_scheduler="nonsense", progress=False)
