"""Start-up settings that must be in place before CUDA or the process group starts.

The seeds lost days to NCCL collectives that hang on consumer cards without peer access (2×RTX
4090 over PCIe) and on cloud boxes without InfiniBand. accelerate only sets these for old drivers
and only under `accelerate launch`; we check the machine itself and say what we set.
"""

import os
import signal
import sys
from pathlib import Path

import torch


def prepare_environment() -> None:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation, fewer OOMs
    follow_the_launcher()
    if not torch.cuda.is_available():
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # Without this, accelerate leaves each CPU process training alone on the same data.
            os.environ.setdefault("ACCELERATE_USE_CPU", "true")
        # `accelerate launch` pins every process to one thread (OMP_NUM_THREADS=1): share the cores instead.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))))
    if torch.cuda.device_count() > 1:
        for name, value in nccl_settings(peer_access(), has_infiniband(), os.environ).items():
            os.environ[name] = value
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                print(f"scratchlm: set {name}={value} ({NCCL_REASONS[name]})")


def follow_the_launcher() -> None:
    """SIGTERM to `accelerate launch` with one process kills the launcher but not this process (its simple
    launcher passes no signal on), which then trains on unseen, beside whatever runs next. So when our
    parent is accelerate's launcher, its death delivers SIGTERM here too (Linux's parent-death signal),
    and the loop stops cleanly. torchrun, the multi-process launcher, forwards signals itself."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:
        command = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    if not any(part.endswith(b"accelerate") for part in command) or b"launch" not in command:
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


NCCL_REASONS = {
    "NCCL_P2P_DISABLE": "some GPU pairs have no peer access; NCCL P2P would hang or corrupt",
    "NCCL_IB_DISABLE": "no InfiniBand device; NCCL would probe it and can stall",
}


def nccl_settings(peer: dict[tuple[int, int], bool], infiniband: bool, env) -> dict[str, str]:
    """The NCCL variables to set, never overriding what the user (or the recipe's env:) chose."""
    settings = {}
    if peer and not all(peer.values()) and "NCCL_P2P_DISABLE" not in env:
        settings["NCCL_P2P_DISABLE"] = "1"
    if not infiniband and "NCCL_IB_DISABLE" not in env:
        settings["NCCL_IB_DISABLE"] = "1"
    return settings


def peer_access() -> dict[tuple[int, int], bool]:
    count = torch.cuda.device_count()
    return {(a, b): torch.cuda.can_device_access_peer(a, b) for a in range(count) for b in range(count) if a != b}


def has_infiniband() -> bool:
    folder = Path("/sys/class/infiniband")
    return folder.is_dir() and any(folder.iterdir())


def describe_hardware(world_size: int = 1) -> str:
    """What this machine trains on, in the words a report and a cost estimate need."""
    import platform

    if torch.cuda.is_available():
        return f"{world_size} x {torch.cuda.get_device_name()}"
    return f"CPU: {os.cpu_count()} cores ({platform.machine()}), {world_size} process(es)"
