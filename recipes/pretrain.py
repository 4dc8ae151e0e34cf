"""Pretraining and midtraining.

    accelerate launch recipes/pretrain.py --config recipes/<run>/pretrain.yaml [--key value ...]

Re-running the same command resumes from the newest complete checkpoint; `--extend_to STEPS`
continues a finished run. Keys: `python recipes/pretrain.py --help` (src/scratchlm/train/config.py).
SIGTERM or Ctrl-C stop the run after the current step, with a checkpoint, however long the step and the
save take (train/keeper.py: what that needs under `accelerate launch` with one process).
"""

import os
import sys

from scratchlm.errors import ScratchError
from scratchlm.train.config import parse_pretrain_args
from scratchlm.train.keeper import run_beside_launcher
from scratchlm.train.loop import Stopped, train


def main() -> int:
    try:
        run_dir = train(parse_pretrain_args())
    except ScratchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Stopped as stop:
        print(f"scratchlm: {stop}", file=sys.stderr)
        return 128 + stop.signum
    if (run_dir / "export" / "config.json").is_file() and os.environ.get("RANK", "0") == "0":  # once per launch
        print(f"done: {run_dir / 'export'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_beside_launcher(main))  # under `accelerate launch` with one process: keeper.py says why
