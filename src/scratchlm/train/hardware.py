"""Start-up settings that must be in place before CUDA or the process group starts.

Public runs we reproduce lost days to NCCL collectives that hang on consumer cards without peer access (2×RTX
4090 over PCIe) and on cloud boxes without InfiniBand. accelerate only sets these for old drivers
and only under `accelerate launch`; we check the machine itself and say what we set.
"""

import os
from datetime import timedelta
from pathlib import Path

import torch

from .keeper import launcher_pid
from .parallel import World


def prepare_environment() -> None:
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation, fewer OOMs
    if not torch.cuda.is_available():
        torch.set_num_threads(cpu_threads())
    if torch.cuda.device_count() > 1:
        for name, value in nccl_settings(peer_access(), has_infiniband(), os.environ).items():
            os.environ[name] = value
            if int(os.environ.get("LOCAL_RANK", "0")) == 0:
                print(f"scratchlm: set {name}={value} ({NCCL_REASONS[name]})")


LAUNCHERS = (b"accelerate", b"torchrun", b"torch.distributed.run")


def cpu_threads() -> int:
    """The threads a CPU process computes with: what the user asked for (OMP_NUM_THREADS, or accelerate's
    --num_cpu_threads_per_process), else the cores shared among this machine's processes. The launchers set
    OMP_NUM_THREADS=1 themselves when nobody asked; that 1 is theirs, not the user's, and does not count."""
    asked = os.environ.get("OMP_NUM_THREADS", "")
    if asked.isdigit() and int(asked) > 0 and (asked != "1" or _user_asked_for_threads()):
        return int(asked)
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def _user_asked_for_threads() -> bool:
    """Walks up the launchers (accelerate, torchrun): a thread flag on one of them, or OMP_NUM_THREADS in the
    environment the outermost one was started with."""
    pid, started_with = launcher_pid(), None  # a detached trainer's launcher is not its parent (keeper.py)
    for _ in range(4):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
        if not any(part.endswith(LAUNCHERS) for part in command):
            break
        if b"--num_cpu_threads_per_process" in command:
            return True
        pid, started_with = parent, environment
    if started_with is None:  # not under a launcher: the variable is the user's
        return True
    return any(line.startswith(b"OMP_NUM_THREADS=") for line in started_with)


NCCL_REASONS = {
    "NCCL_P2P_DISABLE": "some GPU pairs have no working peer access (none, or copies came back wrong)",
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
    """Which GPU pairs can copy to each other directly AND do so correctly: `can_device_access_peer` says yes
    on 4090s whose driver enables P2P and then hangs or returns zeros, so a known tensor is copied across
    every pair that claims access and compared."""
    count = torch.cuda.device_count()
    claimed = {(a, b): torch.cuda.can_device_access_peer(a, b) for a in range(count) for b in range(count) if a != b}
    pattern = torch.arange(1 << 18, dtype=torch.float32)  # 1 MiB, no two values alike
    for (a, b), ok in claimed.items():
        if ok:
            copied = pattern.to(f"cuda:{a}").to(f"cuda:{b}")
            torch.cuda.synchronize(b)
            claimed[a, b] = torch.equal(copied.cpu(), pattern)
    return claimed


def check_first_collective(world: World, timeout_s: float = 60.0) -> None:
    """One all-reduce before the first step, under a short timeout: NCCL over a broken peer path hangs or sums
    wrongly, and it is better to hear it now, with the setting that avoids it, than to find a hung job later."""
    import torch.distributed as dist

    from ..errors import ScratchError

    if world.size == 1:
        return
    values = torch.full((1024,), float(world.rank + 1), device=world.device)
    fix = 'add NCCL_P2P_DISABLE: "1" to the recipe\'s env: block (or export it) and launch again'
    try:
        dist.all_reduce(values, async_op=True).wait(timeout=timedelta(seconds=timeout_s))
    except RuntimeError as err:
        raise ScratchError(f"the first all-reduce did not finish in {timeout_s:.0f} s ({err}); {fix}") from None
    expected = world.size * (world.size + 1) / 2
    if not torch.all(values == expected):
        raise ScratchError(f"the first all-reduce summed wrongly ({values[0].item()} instead of {expected}); {fix}")


def has_infiniband() -> bool:
    folder = Path("/sys/class/infiniband")
    return folder.is_dir() and any(folder.iterdir())


def describe_hardware(world_size: int = 1) -> str:
    """What this machine trains on, in the words a report and a cost estimate need."""
    import platform

    if torch.cuda.is_available():
        return f"{world_size} x {torch.cuda.get_device_name()}"
    return f"CPU: {os.cpu_count()} cores ({platform.machine()}), {world_size} process(es)"
