"""Host facts a node reports, read through psutil on every OS: memory, the interfaces
discovery announces on, and the accelerator its runners will really compute on."""

from __future__ import annotations

import psutil

from exo.environment import detect_accelerator, interface_addresses, read_memory


def test_memory_is_the_operating_systems_count() -> None:
    total, available = read_memory()
    assert 0 < available <= total == psutil.virtual_memory().total


def test_discovery_announces_on_every_interface_that_is_up_loopback_included() -> None:
    addresses = interface_addresses()
    assert "127.0.0.1" in addresses
    assert all(a.count(".") == 3 for a in addresses)  # IPv4 only


def test_cuda_only_with_mlxs_cuda_backend_installed_and_a_driver() -> None:
    cuda_wheel, cpu_wheel = ["mlx", "mlx-cuda-13"], ["mlx", "mlx-cpu"]
    assert detect_accelerator(lambda: cuda_wheel, nvidia_driver=True) in ("cuda", "metal")
    # An NVIDIA machine with the CPU wheel computes on the CPU (it read "cuda" before).
    assert detect_accelerator(lambda: cpu_wheel, nvidia_driver=True) in ("cpu", "metal")
    assert detect_accelerator(lambda: cuda_wheel, nvidia_driver=False) in ("cpu", "metal")
