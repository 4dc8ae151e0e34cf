"""Every shipped recipe rehearsed at full scale on fake tensors (train/rehearse.py), beside the formula
planner (train/memory.py), on the GPUs and world size it is launched with; writes
benchmarks/results/rehearsal.json. Each recipe runs in a process of its own, on one thread, so its time
and peak RAM are its own.

    python benchmarks/rehearsal.py                    # every recipe
    python benchmarks/rehearsal.py --recipe genesis-1b

The planner is held to the rehearsal within 5%, in total (the training phase's allocated peak) and for
each family of terms: weights (with the bf16 copies compute reads), gradients, optimizer state,
activations and the loss's saved tensors.

Beside it, the step's time on the GPU it is launched on, two ways: the roofline of the rehearsed step's ops
(train/roofline.py: FLOPs at the dense bf16 peak or bytes at the HBM bandwidth, per op, summed; no fusion,
no overlap, no communication) and the planner's FLOPs at the MFU it assumes for that card; and the
roofline's step on every GPU the planner knows.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
RESULTS = REPO / "benchmarks" / "results" / "rehearsal.json"
# recipe: (GPU it is launched on, how many): the public runs the recipes reproduce (recipes/*/README.md).
LAUNCHES = {
    "tiny": ("3060", 1),
    "bitnet-95m": ("3060", 1),
    "genesis-1b": ("4090", 2),
    "a100-1b": ("a100-80gb", 1),
    "h100-d20": ("h100-sxm", 8),
}
TOLERANCE = 0.05


def one(recipe: str) -> dict:
    """The rehearsal of one recipe in this process: its phases, the planner beside it, time and RAM."""
    import torch

    torch.set_num_threads(1)
    from scratchlm.train.plan import gpu_profile
    from scratchlm.train.rehearse import compare_with_planner, rehearse_recipe, step_time

    gpu, num_gpus = LAUNCHES[recipe]
    started = time.monotonic()
    report, setup = rehearse_recipe(str(REPO / "recipes" / recipe / "pretrain.yaml"), gpu, num_gpus)
    seconds = time.monotonic() - started
    roofline = report.as_dict()["roofline"]
    return {
        "recipe": recipe,
        "gpu": gpu,
        "num_gpus": num_gpus,
        "seconds": round(seconds, 1),
        "max_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3),
        "phases_gib": {p.name: round(p.peak / 2**30, 3) for p in report.phases},
        "peak_phase": report.peak.name,
        "checkpoint_host_gib": {k: round(v / 2**30, 3) for k, v in report.checkpoint_host.items()},
        "planner_vs_rehearsal": compare_with_planner(report),
        "training_families_gib": {k: round(v / 2**30, 3) for k, v in report.phases[0].families.items()},
        "planner_terms_gib": {k: round(v / 2**30, 3) for k, v in report.estimate["terms"].items()},
        "step_time": step_record(step_time(report, gpu_profile(gpu))),
        "roofline_seconds_per_step": {k: round(v, 4) for k, v in roofline["seconds_per_step"].items()},
    }


def step_record(times: dict) -> dict:
    """One rank's step on the launch GPU: the roofline's and the planner's seconds, the MFU each stands for."""
    return {
        "gpu": times["gpu"],
        "roofline_s": round(times["roofline_s"], 4),
        "planner_s": round(times["planner_s"], 4),
        "roofline_over_planner": round(times["roofline_s"] / times["planner_s"], 3),
        "planner_mfu": times["planner_mfu"],
        "roofline_mfu": round(times["roofline_mfu"], 3),
        "tflop_per_rank": round(times["flops"] / 1e12, 2),
        "gb_moved_per_rank": round(times["bytes"] / 1e9, 1),
        "biases": times["biases"],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", choices=sorted(LAUNCHES), help="one recipe (default: all)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(one(args.recipe)))
        return 0
    results = {}
    for recipe in [args.recipe] if args.recipe else LAUNCHES:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, __file__, "--child", "--recipe", recipe]
        done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if done.returncode:
            results[recipe] = {"error": done.stderr.strip().splitlines()[-1:]}
        else:
            results[recipe] = json.loads(done.stdout.strip().splitlines()[-1])
        row = results[recipe]
        shown = ("seconds", "max_rss_gib", "planner_vs_rehearsal", "step_time", "error")
        print(recipe, json.dumps({k: row.get(k) for k in shown}))
    within = all(
        abs(d) <= TOLERANCE for r in results.values() for d in r.get("planner_vs_rehearsal", {"error": 1}).values()
    )
    if args.recipe is None:
        args.out.write_text(json.dumps({"tolerance": TOLERANCE, "within_tolerance": within, "recipes": results},
                                       indent=1) + "\n")  # fmt: skip
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
