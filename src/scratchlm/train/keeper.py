"""One training process under accelerate's single-process launcher, kept out of its kill path.

`accelerate launch` with one process (`distributed_type: 'NO'`, `--num_processes 1`: every single-GPU
recipe) runs the script as its child. Ctrl-C or SIGTERM to the launcher makes it SIGTERM that child and
SIGKILL it, and every descendant, 5 seconds later (`_terminate_process_tree` in
accelerate/commands/launch.py); nothing configures the 5 seconds. A step of a 1B model takes longer than
that, so the loop's "stop after this step, with a checkpoint" died half-way. No signal handler survives a
SIGKILL, so the process that trains must not be one the launcher kills:

- the launched process forks the trainer twice (the middle process exits at once), so the trainer is no
  descendant of it, in a session of its own, so that a Ctrl-C at the terminal does not reach it twice;
- the launched process then becomes the keeper (`python -m scratchlm.train.keeper`, so `pgrep -f
  pretrain.py` finds the trainer alone): it passes each SIGINT and SIGTERM on to the trainer, and
  exits with the trainer's exit status, which the trainer sends it through a pipe;
- the launcher may still kill the keeper; the trainer then finishes its step and its checkpoint alone
  (the launcher has returned by then: the run directory stays locked until it has), writing what it
  has to say to stdout once the launcher's pipe for its stderr is closed;
- when the trainer stopped on a signal the launcher did not get (SIGINT or SIGTERM sent to the trainer,
  or to the keeper), the keeper gives the launcher the same signal: it then exits with 128 + the signal
  and without printing its traceback of a "failed" subprocess.

torchrun (several processes) waits 30 s before its SIGKILL (TORCH_ELASTIC_SHUTDOWN_TIMEOUT) and is left
alone: its ranks must die together when one of them fails, not train on waiting for a dead peer.
"""

import os
import signal
import sys
import time
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

LAUNCHER_PID = "SCRATCHLM_LAUNCHER_PID"  # set in the trainer: where the launcher's environment is read


def accelerate_launcher(pid: int) -> bool:
    """Whether process `pid` is `accelerate launch` (Linux: its command line)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"accelerate") for part in command) and b"launch" in command


def launcher_pid() -> int:
    """The process that launched this one: the parent, or for a detached trainer the launcher it left."""
    return int(os.environ.get(LAUNCHER_PID) or os.getppid())


def run_beside_launcher(main: Callable[[], int]) -> int:
    """main()'s exit status; under accelerate's single-process launcher main() runs in a detached trainer
    and this process becomes its keeper (it never returns then)."""
    parent = os.getppid()
    single = "TORCHELASTIC_RUN_ID" not in os.environ and int(os.environ.get("WORLD_SIZE", "1")) == 1
    if not (sys.platform.startswith("linux") and single and accelerate_launcher(parent)):
        return main()
    read, write = os.pipe()
    middle = os.fork()
    if middle == 0:
        os.setsid()
        if os.fork():
            os._exit(0)
        os.close(read)
        return _train(main, write, parent)
    os.close(write)
    os.waitpid(middle, 0)
    os.set_inheritable(read, True)
    keeper = [sys.executable, "-m", "scratchlm.train.keeper", str(read), str(parent)]
    os.execv(sys.executable, keeper)


def _train(main: Callable[[], int], write: int, launcher: int) -> int:
    os.environ[LAUNCHER_PID] = str(launcher)
    sys.stderr = _Stderr()
    os.write(write, f"{os.getpid()}\n".encode())
    status = 1  # an exception escaping main()
    try:
        status = main()
    except SystemExit as exit:  # argparse: --help (0) and its refusals (2)
        status = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
        raise
    except KeyboardInterrupt:  # Ctrl-C twice: stopped at once
        status = 128 + signal.SIGINT
        raise
    finally:
        with suppress(OSError):  # the keeper may be gone
            os.write(write, f"{status}\n".encode())
    return status


class _Stderr:
    """sys.stderr, then stdout once it fails: the launcher reads our stderr through a pipe that closes when it
    exits, and after a signal it may exit before the stop's checkpoint is written and said."""

    def __init__(self):
        self.target = sys.stderr

    def write(self, text: str) -> int:
        try:
            written = self.target.write(text)
            self.target.flush()
            return written
        except OSError:  # BrokenPipeError (Python ignores SIGPIPE)
            if self.target is sys.stdout:
                return len(text)
            self.target = sys.stdout
            return self.write(text)

    def flush(self) -> None:
        with suppress(OSError):
            self.target.flush()

    def __getattr__(self, name):  # fileno, isatty, encoding: the current target's
        return getattr(self.target, name)


def keep(read: int, launcher: int) -> int:
    """The keeper's life: the trainer's pid, then its exit status, arrive through the pipe."""
    signals = (signal.SIGINT, signal.SIGTERM)
    with os.fdopen(read, "rb") as pipe:
        trainer = int(pipe.readline() or 0)
        if trainer <= 0:  # it never started (os.kill of 0 would signal this whole process group)
            return 1

        def forward(signum, frame):
            with suppress(ProcessLookupError):
                os.kill(trainer, signum)

        for signum in signals:
            signal.signal(signum, forward)
        _follow(launcher)
        line = pipe.readline().strip()
    status = int(line) if line else 1  # no status: the trainer was killed (kill -9, out of memory)
    if status - 128 in signals:  # mirrored to the launcher; its SIGTERM back to us then ends this process
        for signum in signals:
            signal.signal(signum, lambda signum, frame: os._exit(status))
        _let_the_launcher_copy_what_was_said()
        with suppress(ProcessLookupError):
            os.kill(launcher, status - 128)
        time.sleep(30)
    return status


def _let_the_launcher_copy_what_was_said(timeout_s: float = 5.0) -> None:
    """The launcher copies our stderr pipe (the trainer's too) to its own in its main thread; a signal that
    lands between its read of the trainer's last lines ("stopped by SIGINT at step N") and its write of them
    loses them. So the signal waits until the pipe is empty, then a moment for that write."""
    import fcntl
    import struct
    import termios

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            unread = struct.unpack("i", fcntl.ioctl(2, termios.FIONREAD, b"\0\0\0\0"))[0]
        except OSError:  # not a pipe (a terminal, a file): nothing in flight
            return
        if unread == 0:
            break
        time.sleep(0.02)
    time.sleep(0.3)


def _follow(launcher: int) -> None:
    """SIGTERM here when the launcher dies (kill -9 of it): the trainer then stops too, with a checkpoint."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != launcher:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(keep(int(sys.argv[1]), int(sys.argv[2])))
