"""Logical hosts on a machine with real GPUs split them: no two hosts can grant the same card.

NVML is mocked away here by passing the device list the cluster service would read from it (this machine has no
GPU); what a replica then sees is its CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from notebookos.gpu_broker.cluster.embedded import EmbeddedCluster, PlacementError
from notebookos.gpu_broker.cluster.ports import PortPool
from notebookos.gpu_broker.cluster.providers import LocalProvider, ProviderError


def _provider(tmp_path: Path, devices: list[int] | None) -> LocalProvider:
    return LocalProvider(tmp_path / "hosts", None, PortPool(), None, devices)


def test_logical_hosts_get_disjoint_slices_and_their_replicas_see_only_theirs(tmp_path: Path) -> None:
    provider = _provider(tmp_path, [0, 1, 2, 3])
    hosts = [provider.add_host(1) for _ in range(4)]
    assert [h.gpu_devices for h in hosts] == [(0,), (1,), (2,), (3,)]
    assert [h.replica_environment(tmp_path)["CUDA_VISIBLE_DEVICES"] for h in hosts] == ["0", "1", "2", "3"]


def test_hosts_past_the_machines_gpus_get_none_and_a_removed_hosts_slice_is_reused(tmp_path: Path) -> None:
    provider = _provider(tmp_path, [0, 1, 2, 3])
    first, second, third = (provider.add_host(2) for _ in range(3))
    assert (first.gpu_devices, second.gpu_devices, third.gpu_devices) == ((0, 1), (2, 3), ())
    assert third.replica_environment(tmp_path)["CUDA_VISIBLE_DEVICES"] == ""  # sees no GPU at all
    provider.remove_host(first)
    assert provider.add_host(2).gpu_devices == (0, 1)


def test_a_slice_of_real_gpus_is_not_resized(tmp_path: Path) -> None:
    provider = _provider(tmp_path, [0, 1])
    host = provider.add_host(1)
    with pytest.raises(ProviderError, match="add or remove hosts"):
        provider.resize_host(host, 2)


def test_virtual_gpus_leave_the_devices_alone(tmp_path: Path) -> None:
    host = _provider(tmp_path, None).add_host(3)
    assert host.gpu_devices is None
    assert host.replica_environment(tmp_path).get("CUDA_VISIBLE_DEVICES") == os.environ.get("CUDA_VISIBLE_DEVICES")


def test_the_scheduler_counts_the_gpus_each_host_really_got(tmp_path: Path) -> None:
    """Two GPUs for four logical hosts: two hosts get none, so a kernel whose three replicas each need a GPU
    cannot be placed (rather than two hosts granting the same card)."""
    cluster = EmbeddedCluster(tmp_path, n_hosts=4, gpus_per_host=1, devices=[0, 1])
    assert [h["gpus"] for h in cluster.describe()["hosts"]] == [1, 1, 0, 0]
    with pytest.raises(PlacementError, match="cannot place"):
        cluster.create_kernel("k", "key", "hmac-sha256", gpus=1)
