r"""The GPU check: one command that, on a machine with one CUDA GPU and no network needed, checks the loop's
correctness on the GPU and measures its speed at 1B within about 8 minutes, and writes
benchmarks/results/gpu_check.json: every check with its criterion, its status (pass, fail, or "not run: why")
and its figures.

    python benchmarks/gpu_check.py --smoke                # a CPU, tiny shapes, about a minute (CI); GPU-only
                                                          # checks read "not run: no GPU"
    python benchmarks/gpu_check.py --prepare-data DIR     # with `datasets` installed: the tiny recipe's data
    python benchmarks/gpu_check.py --data DIR --out FILE  # on the GPU machine

The GPU machine needs scratchlm's install (torch with CUDA, transformers, accelerate), not `datasets`: the
tiny recipe's data (shards, probes, CORE bundle) can be prepared on any machine with --prepare-data and
copied over (benchmarks/README.md).

Sections, inside one deadline (--budget-s), the JSON rewritten after each so a killed run still leaves what
it measured:
- environment: versions, the device, peak FLOPs by name, the loop starting without `datasets`;
- correctness: tiny-recipe runs through `python recipes/pretrain.py` in parallel processes (GPU fp32 and bf16
  against CPU fp32, accumulation, FSDP2 on one rank), while this process checks document masking on every
  attention backend, evaluation on the GPU and the chunked loss;
- speed: the 1B shapes through the loop, the rehearsal's real-tensor mode on the same run (each phase's
  measured peak beside the planner's; train/rehearse.py), one profiled step, a bare PyTorch reference
  (gpu_check_speed.py).
Exit status 0 iff every check that ran passed and no section broke off.
"""

import argparse
import contextlib
import datetime
import importlib.util
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # this checkout's scratchlm, installed or not

from gpu_check_correctness import (  # noqa: E402
    ACCUMULATION_STEPS,
    CORE_ITEMS,
    CORRECTNESS_STEPS,
    SMOKE_MODEL,
    TINY,
    LoopRuns,
    NotRun,
    TimeUp,
    child_env,
    chunked_loss,
    correctness_chains,
    correctness_checks,
    evaluation_checks,
    last_lines,
    masking_checks,
)

from scratchlm.config import read_yaml  # noqa: E402
from scratchlm.train.plan import peak_flops_of  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
# The 1B shapes at seq 2048 and the recipes that train them (each at its own micro-batch: all fit one H200).
SHAPES = {"gpuburnout-1b": "a100-1b", "h100-d20": "h100-d20", "genesis-1b": "genesis-1b"}
SMOKE_SHAPES = {"tiny-smoke": "tiny"}

# name: (where it runs: "any" (a CPU too: smoke mode) or "gpu", the pass criterion)
CHECKS = {
    "peak_flops_by_name": (
        "any",
        "peak_flops_of(the device's name) is 989 TFLOP/s for an H200 (smoke mode: of the name 'NVIDIA H200')",
    ),
    "loop_starts_without_datasets": (
        "any",
        "with prepared shards, the loop's data step (loop.prepare_data) runs where `import datasets` fails",
    ),
    "fp32_gpu_matches_cpu": (
        "gpu",
        f"the tiny recipe, {CORRECTNESS_STEPS} steps in fp32 on the GPU and on the CPU: equal windows_checksum "
        "every step, step-1 loss within 1e-5, max loss difference <= 2e-3",
    ),
    "bf16_gpu_tracks_cpu_fp32": (
        "gpu",
        f"the tiny recipe, {CORRECTNESS_STEPS} steps, GPU bf16 against CPU fp32: step-1 loss within 0.02, "
        "mean loss difference <= 0.03",
    ),
    "accumulation_8x1_equals_4x2": (
        "any",
        f"{ACCUMULATION_STEPS} fp32 steps of 8 windows x 1 micro-batch and of 4 x 2: equal windows checksums, "
        "losses within 1e-4 relative",
    ),
    "flash_attn_absent_sdpa_chosen": (
        "gpu",
        "flash-attn is not importable, model/attention.py chooses sdpa, and a GPU run without document masking "
        "says 'attention sdpa'",
    ),
    "fsdp2_one_rank_resume": (
        "any",
        "FSDP2 over a process group of one (NCCL; gloo on a CPU), stopped at step 3 and resumed: steps 4-6 match "
        "the straight run (equal windows checksums; losses within 1e-3 in bf16 on a GPU, 1e-5 relative in fp32)",
    ),
    "fsdp2_export_reloads_bf16": (
        "any",
        "the FSDP2 run's export holds exactly its last checkpoint's weights, loads in bf16, and its bf16 logits "
        "are within 2% (relative norm) of its fp32 logits",
    ),
    "masking_leak_visible": (
        "any",
        "control: a forward with a cache left on lets packed documents attend to each other (logit difference "
        "> 0.1), so the masking checks can see a leak",
    ),
    "masking_train_sdpa": (
        "any",
        "the training step (Stepper through wrap_model): packed documents' logits equal each document's alone "
        "(fp32: within 1e-3 on a GPU, 1e-4 on a CPU)",
    ),
    "masking_train_sdpa_compiled": ("any", "as masking_train_sdpa, blocks compiled (inductor; smoke mode: eager)"),
    "masking_train_sdpa_checkpointing": ("any", "as masking_train_sdpa, with activation checkpointing"),
    "masking_train_eager": ("any", "as masking_train_sdpa, eager attention"),
    "masking_train_flex_attention": ("gpu", "as masking_train_sdpa, flex_attention (no CPU backward)"),
    "masking_train_flex_attention_compiled": ("gpu", "as masking_train_flex_attention, blocks compiled (inductor)"),
    "masking_train_flex_attention_checkpointing": ("gpu", "as masking_train_flex_attention, checkpointing"),
    "masking_eval_sdpa": (
        "any",
        "the evaluation forward (token_nats, and the model without a cache): packed documents' logits and "
        "losses equal each document's alone",
    ),
    "masking_eval_eager": ("any", "as masking_eval_sdpa, eager attention"),
    "masking_eval_flex_attention": ("any", "as masking_eval_sdpa, flex_attention (not in smoke mode)"),
    "probes_on_gpu": ("gpu", "probe accuracy of the fp32 run's export on the GPU equals the CPU's"),
    "core_on_gpu": (
        "gpu",
        f"CORE ({CORE_ITEMS} items per task) of the fp32 run's export on the GPU within 0.02 of the CPU's",
    ),
    "evaluation_bf16_on_gpu": (
        "gpu",
        "in bf16 on the GPU, as the Evaluator runs (autocast) and as `scratchlm eval` loads (load_for_evaluation: "
        "bf16 weights): validation loss within 0.02 (0.03 for bf16 weights) of fp32's; probes and CORE run",
    ),
    "chunked_loss_equals_plain_fp32": (
        "any",
        "model/loss.py's chunked lm_loss against plain_lm_loss in fp32 on the device, with and without softcap: "
        "loss and gradients within 1e-5 relative",
    ),
    "speed_figures_complete": (
        "any",
        "every shape that ran has tok/s, MFU (GPU), peak memory, recompiles, bare eager and compiled tok/s "
        "and a profile by category",
    ),
}
for _shape in SHAPES:
    CHECKS[f"loop_vs_bare_{_shape}"] = ("gpu", "loop tok/s / bare PyTorch tok/s (the recipe's compile) >= 0.95")
    CHECKS[f"mfu_{_shape}"] = ("gpu", "the loop's MFU (dense bf16 peak 989 TFLOP/s) >= 0.50, the target")
    CHECKS[f"memory_estimate_{_shape}"] = ("gpu", "train/memory.py's peak within 15% of max_memory_allocated")
    CHECKS[f"recompiles_{_shape}"] = ("gpu", "no recompilation in the loop's run (dynamo's compilation metrics)")


class Report:
    """The JSON being built: every check declared up front, each section's time, written atomically."""

    def __init__(self, path: Path, smoke: bool, budget_s: float):
        self.path, self.smoke = path, smoke
        self.deadline = time.monotonic() + budget_s
        self.started = time.monotonic()
        gpu = torch.cuda.is_available() and not smoke
        pending, no_gpu = "not run: pending (the check never started)", "not run: no GPU"
        self.data = {
            "mode": "smoke" if smoke else "gpu",
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "budget_s": budget_s,
            "environment": {},
            "sections": {},
            "checks": {
                name: {"status": pending if gpu or where == "any" else no_gpu, "criterion": criterion}
                for name, (where, criterion) in CHECKS.items()
            },
            "speed": {},
        }

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def check(self, name: str, compute, deadline: float | None = None) -> None:
        """compute() -> (passed, figures); an exception fails the check with its last line, NotRun skips it."""
        entry = self.data["checks"][name]
        start = time.monotonic()
        try:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeUp("the section's deadline passed first")
            passed, figures = compute()
        except NotRun as why:
            entry["status"] = f"not run: {why}"
        except Exception as err:  # noqa: BLE001 - any error is this check's failure, not the run's
            entry.update(status="fail", error=f"{type(err).__name__}: {str(err).strip()[:400]}")
            entry["traceback"] = traceback.format_exc(limit=-4)[-1500:]
        else:
            entry.update(status="pass" if passed else "fail", figures=figures)
        entry["seconds"] = round(time.monotonic() - start, 1)

    def skip(self, name: str, why: str) -> None:
        self.data["checks"][name]["status"] = f"not run: {why}"

    @contextlib.contextmanager
    def section(self, name: str):
        start = time.monotonic()
        entry = self.data["sections"].setdefault(name, {"status": "running"})
        try:
            yield
            entry["status"] = "done"
        except Exception as err:  # noqa: BLE001 - the other sections still run
            entry["status"] = f"error: {type(err).__name__}: {str(err)[:300]}"
            traceback.print_exc()
        finally:
            entry["seconds"] = round(time.monotonic() - start, 1)
            self.write()

    def summary(self) -> dict:
        checks = self.data["checks"]
        return {
            "passed": sorted(n for n, c in checks.items() if c["status"] == "pass"),
            "failed": sorted(n for n, c in checks.items() if c["status"] == "fail"),
            "not_run": {
                n: c["status"].removeprefix("not run: ") for n, c in checks.items() if c["status"].startswith("not run")
            },
            "section_errors": {n: s["status"] for n, s in self.data["sections"].items() if "error" in s["status"]},
        }

    def write(self) -> None:
        self.data["elapsed_s"] = round(time.monotonic() - self.started, 1)
        self.data["summary"] = self.summary()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=str))
        tmp.replace(self.path)

    def exit_code(self) -> int:
        """1 when a check failed or a section broke off (its checks then read pending)."""
        summary = self.summary()
        return 1 if summary["failed"] or summary["section_errors"] else 0


# --- data ----------------------------------------------------------------------------------------------


def prepare_check_data(out: Path, small: bool) -> None:
    """The tiny recipe's data as the loop makes it (loop.prepare_data: the embedded default, its tokenizer,
    the shards of recipes/tiny/data.yaml), in a scratch folder; then out/shards, out/probes.jsonl, out/core.
    small: 150,000 tokens of text and a 1,024-token vocabulary (smoke mode's)."""
    from scratchlm.data.default import write_default
    from scratchlm.train.config import parse_pretrain_args
    from scratchlm.train.loop import prepare_data

    if out.exists():
        raise SystemExit(f"{out} exists; remove it first")
    with tempfile.TemporaryDirectory() as scratch:
        here = os.getcwd()
        os.chdir(scratch)  # recipes/tiny/*.yaml name their files relative to the working directory
        try:
            args = ["--config", str(TINY / "pretrain.yaml"), "--data_config", str(TINY / "data.yaml")]
            config = parse_pretrain_args(args + (["--tokenizer_vocab_size", "1024"] if small else []))
            if small:
                write_default(config.default_data, seed=0, tokens=150_000, countries=20)
            prepare_data(config)
            made = Path(scratch) / "runs" / "tiny"
            shutil.copytree(made / "shards", out / "shards")
            shutil.copy(made / "data" / "probes.jsonl", out / "probes.jsonl")
            shutil.copytree(made / "data" / "core", out / "core")
        finally:
            os.chdir(here)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    except OSError:  # no git here
        commit = "unknown"
    (out / "made_by.json").write_text(json.dumps({"command": sys.argv, "commit": commit, "small": small}, indent=1))


# --- environment ---------------------------------------------------------------------------------------


def environment(report: Report, device: torch.device, data: Path) -> None:
    import accelerate
    import transformers

    env = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "scratchlm": str(Path(sys.modules["scratchlm"].__file__).parent),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        "cuda": torch.version.cuda,
        "flash_attn_installed": importlib.util.find_spec("flash_attn") is not None,
        "datasets_installed": importlib.util.find_spec("datasets") is not None,
        "liger_kernel_installed": importlib.util.find_spec("liger_kernel") is not None,
        "data": json.loads((data / "made_by.json").read_text()) if (data / "made_by.json").is_file() else str(data),
    }
    if device.type == "cuda":
        env["memory_gib"] = round(torch.cuda.get_device_properties(device).total_memory / 2**30, 1)
        smi = shutil.which("nvidia-smi")
        query = "name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu"
        if smi:
            env["nvidia_smi"] = subprocess.run([smi, f"--query-gpu={query}", "--format=csv"], capture_output=True,
                                               text=True).stdout.strip()  # fmt: skip
    report.data["environment"] = env

    def peak_flops():
        name = env["device"] if device.type == "cuda" else "NVIDIA H200"
        if "H200" not in name:
            raise NotRun(f"the device is {name}, not an H200")
        peak = peak_flops_of(name)
        return abs(peak / 1e12 - 989) < 1, {"device_name": name, "peak_tflops": peak / 1e12}

    report.check("peak_flops_by_name", peak_flops)


# --- speed at 1B: gpu_check_speed.py, one process per shape -------------------------------------------

# Seconds each shape may take (model init, compilation, the measured steps, the bare reference).
SHAPE_BUDGET_S = {"gpuburnout-1b": 130, "h100-d20": 120, "genesis-1b": 100, "tiny-smoke": 120}


def speed_spec(shape: str, recipe: str, work: Path, data: Path, smoke: bool, budget_s: float) -> dict:
    """The recipe's run, shortened: one device, its micro-batch without accumulation, a few logged steps, no
    saves, evaluations or samples; it stops (stop_at_step) long before its horizon, so it never exports."""
    recipe_yaml = REPO / "recipes" / recipe / "pretrain.yaml"
    warmup, measured = (1, 2) if smoke else (3, 6)
    overrides = dict(
        output_dir=str(work / f"speed_{shape}"), data_dir=str(data / "shards"), data_config="", default_data="",
        tokenizer_vocab_size=0, gradient_accumulation_steps=1,
        tokens_per_step=0, max_steps=100_000, max_tokens=0, target_flops=0.0, tokens_per_param=0.0,
        stop_at_step=warmup + measured, logging_steps=1, eval_steps=0, sample_steps=0, sample_prompts=[],
        save_steps=0, save_minutes=0.0, milestones=[], report_to="none", push_to_hub=False, probes="", core_bundle="",
    )  # fmt: skip
    if smoke:  # the speed machinery on a CPU: the small model, compiled with a backend that compiles fast
        model = work / "smoke_model.yaml"
        model.write_text(yaml.safe_dump(SMOKE_MODEL))
        overrides |= dict(model_preset="", model_config=str(model), seq_len=64, torch_compile=True,
                          torch_compile_backend="eager")  # fmt: skip
    values = {**read_yaml(recipe_yaml), **overrides}
    return {
        "shape": shape,
        "recipe": recipe,
        "recipe_yaml": str(recipe_yaml),
        "overrides": overrides,
        "warmup_steps": warmup,  # records skipped: they include compilation
        "bare_warmup": 1 if smoke else 2,
        "bare_steps": 2 if smoke else 5,
        "compile": bool(values.get("torch_compile")),
        "compile_backend": values.get("torch_compile_backend", "inductor"),
        "budget_s": budget_s,
        "bare_reserve_s": 0 if smoke else 20,  # a bare mode starts only with this many seconds left
    }


def run_speed_worker(spec: dict, work: Path, smoke: bool) -> dict:
    shape = spec["shape"]
    spec_path, out, log = (work / f"speed_{shape}{suffix}" for suffix in (".json", "_result.json", ".log"))
    spec_path.write_text(json.dumps(spec, indent=1))
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check_speed.py"), str(spec_path), str(out)]
    env = child_env(**({"OMP_NUM_THREADS": "2"} if smoke else {}))
    with open(log, "w") as output:
        process = subprocess.Popen(command, cwd=REPO, stdout=output, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)  # fmt: skip
        try:
            returncode = process.wait(timeout=spec["budget_s"] + 15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            returncode = "killed at its deadline"
    result = json.loads(out.read_text()) if out.is_file() else {"shape": shape}
    result["returncode"] = returncode
    if returncode:
        result["error"] = last_lines(log.read_text(), 6)
    return result


def speed_checks(report: Report, shape: str, result: dict, compiled: bool) -> None:
    """The four checks of a 1B shape from its worker's result; `compiled`: the recipe compiles."""
    mode = "compiled" if compiled else "eager"

    def needs(part: str) -> dict:
        value = result.get(part) if part != "bare" else result.get("bare", {}).get(mode)
        if not value and result.get("returncode") == "killed at its deadline":
            raise TimeUp(f"the {shape} process was stopped at its deadline before its {part}")
        if not value:
            raise RuntimeError(f"the speed worker gave no {part}: {result.get('error', 'no error recorded')}")
        status = str(value.get("status", "done"))
        if status.startswith("not run"):
            raise NotRun(status.removeprefix("not run: "))
        if status.startswith("error"):
            raise RuntimeError(f"{part}: {status}")
        return value

    def loop_vs_bare():
        loop, bare = needs("loop"), needs("bare")
        measured = {m: b["tok_per_s"] for m, b in result["bare"].items() if b.get("tok_per_s")}
        figures = {
            "loop_tok_per_s": loop["tok_per_s"],
            "bare_tok_per_s": measured,
            "loop_over_bare": {m: loop["tok_per_s"] / tok_per_s for m, tok_per_s in measured.items()},
            "judged_against": mode,
        }
        return loop["tok_per_s"] / bare["tok_per_s"] >= 0.95, figures

    def mfu():
        loop, profile = needs("loop"), result.get("profile", {})
        shares = {k: round(v["share"], 3) for k, v in profile.get("categories", {}).items()}
        figures = {
            "mfu": loop["mfu"],
            "tok_per_s": loop["tok_per_s"],
            "step_time_shares": shares,  # what costs the rest, from the profiled step
            "matmul_tflops_while_running": profile.get("matmul_tflops_while_running"),
            "attention_tflops_while_running": profile.get("attention_tflops_while_running"),
        }
        if loop["mfu"] is None:
            raise RuntimeError(f"no MFU: no dense bf16 peak is known for {loop['device']}")
        return loop["mfu"] >= 0.50, figures

    def memory():
        estimate = needs("estimate")
        return abs(estimate["relative_error"]) <= 0.15, estimate

    def recompiles():
        loop = needs("loop")
        figures = {k: loop[k] for k in ("recompiles", "recompile_reasons", "frames_compiled", "unique_graphs")}
        return loop["recompiles"] == 0, figures

    report.check(f"loop_vs_bare_{shape}", loop_vs_bare)
    report.check(f"mfu_{shape}", mfu)
    report.check(f"memory_estimate_{shape}", memory)
    report.check(f"recompiles_{shape}", recompiles)


def speed_section(report: Report, work: Path, data: Path, smoke: bool) -> None:
    shapes = SMOKE_SHAPES if smoke else SHAPES
    for shape, recipe in shapes.items():
        budget = min(SHAPE_BUDGET_S[shape], report.time_left() - 10)
        if budget < 40:
            report.data["speed"][shape] = {"status": "not run: time"}
            for name in CHECKS:
                if name.endswith(f"_{shape}"):
                    report.skip(name, "time (the run's deadline came before this shape)")
            continue
        spec = speed_spec(shape, recipe, work, data, smoke, budget)
        result = run_speed_worker(spec, work, smoke)
        report.data["speed"][shape] = result
        if not smoke:
            speed_checks(report, shape, result, spec["compile"])
        report.write()
    report.check("speed_figures_complete", lambda: speed_figures_complete(report.data["speed"], smoke))


def speed_figures_complete(speed: dict, smoke: bool):
    """Every figure of every shape that ran; what the deadline cut (a shape, a bare mode) makes it "not run"."""
    failed = {shape: result.get("error", "no loop figures") for shape, result in speed.items()
              if "loop" not in result and result.get("status") != "not run: time"}  # fmt: skip
    if failed or not speed:
        raise RuntimeError(f"no loop figures: {failed}")
    missing, cut_short = {}, [shape for shape, result in speed.items() if "loop" not in result]
    for shape, result in speed.items():
        if "loop" not in result:
            continue
        loop, bare = result["loop"], result.get("bare", {})
        wanted = {
            "tok_per_s": loop.get("tok_per_s"),
            "mem_peak_gib": loop.get("mem_peak_gib"),
            "recompiles": loop.get("recompiles"),
            "mfu": loop.get("mfu") if not smoke else "not on a CPU",
            "bare_eager": bare.get("eager", {}).get("tok_per_s"),
            "bare_compiled": bare.get("compiled", {}).get("tok_per_s"),
            "profile": result.get("profile", {}).get("categories"),
        }
        timed_out = {f"bare_{mode}" for mode, b in bare.items() if b.get("status") == "not run: time"}
        cut_short += [f"{shape} {name}" for name in sorted(timed_out)]
        missing[shape] = [name for name, value in wanted.items() if value is None and name not in timed_out]
    figures = {"missing": missing, "not_run_for_time": cut_short}
    if not any(missing.values()) and cut_short:
        raise TimeUp(f"measured all that time allowed; not {', '.join(cut_short)}")
    return not any(missing.values()), figures


# --- the run -----------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def print_table(report: Report) -> None:
    print(f"\n{'status':<10} check")
    for name, check in report.data["checks"].items():
        status = check["status"] if len(check["status"]) < 50 else check["status"][:47] + "..."
        why = check.get("error") or check.get("figures", {}).get("error", "")
        print(f"{status:<10} {name}" + (f"   {why[:150]}" if check["status"] == "fail" else ""))
    for shape, result in report.data["speed"].items():
        loop, bare = result.get("loop", {}), result.get("bare", {})
        print(f"speed {shape}: loop {loop.get('tok_per_s', 0):,.0f} tok/s, MFU {loop.get('mfu')}, peak "
              f"{loop.get('mem_peak_gib')} GiB; bare " + ", ".join(f"{m} {b.get('tok_per_s', 0):,.0f}"
              for m, b in bare.items()))  # fmt: skip
    summary = report.summary()
    print(f"{len(summary['passed'])} passed, {len(summary['failed'])} failed, {len(summary['not_run'])} not run, "
          f"{report.data['elapsed_s']} s; written to {report.path}")  # fmt: skip


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes: the CI mode")
    parser.add_argument("--data", type=Path, help="the folder --prepare-data made (smoke: made when absent)")
    parser.add_argument("--out", type=Path, help="the JSON (default benchmarks/results/gpu_check[_smoke].json)")
    parser.add_argument("--work", type=Path, help="where the runs go (default: a new temporary folder)")
    parser.add_argument("--budget-s", type=float, help="the whole check's deadline (default 450 on a GPU, 300 smoke)")
    parser.add_argument("--prepare-data", type=Path, metavar="DIR", help="make the check's data in DIR and stop")
    parser.add_argument("--small", action="store_true", help="with --prepare-data: smoke mode's smaller data")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.prepare_data:
        prepare_check_data(args.prepare_data, args.small)
        return 0
    gpu = torch.cuda.is_available() and not args.smoke
    if not (gpu or args.smoke):
        raise SystemExit("no GPU here: run with --smoke (CPU), or on a GPU machine")
    device = torch.device("cuda" if gpu else "cpu")
    out = args.out or RESULTS / ("gpu_check_smoke.json" if args.smoke else "gpu_check.json")
    report = Report(out.resolve(), args.smoke, args.budget_s or (300 if args.smoke else 450))
    work = (args.work or Path(tempfile.mkdtemp(prefix="gpu_check_"))).resolve()  # the runs' cwd is the repository
    work.mkdir(parents=True, exist_ok=True)
    data = args.data.resolve() if args.data else None
    if data is None and not args.smoke:
        raise SystemExit("--data DIR is required on a GPU: make it where `datasets` is installed (--prepare-data)")
    if data is None:
        data = work / "data"
        with report.section("data"):
            prepare_check_data(data, small=True)
    if not (data / "shards" / "manifest.json").is_file():
        raise SystemExit(f"{data} holds no prepared shards: make it with --prepare-data {data}")
    print(f"gpu_check: {report.data['mode']} mode, runs in {work}, results in {out}", flush=True)

    with report.section("environment"):
        environment(report, device, data)
    # The correctness runs go on in processes of their own while this one checks masking, loss and evaluation.
    correctness_deadline = time.monotonic() + min(150 if args.smoke else 190, report.time_left() - 20)
    runs = LoopRuns(work, data, args.smoke, correctness_deadline)
    chains = correctness_chains(runs, gpu, ports=(free_port(), free_port()))
    with ThreadPoolExecutor(max_workers=len(chains) + 1) as pool:
        results = {name: pool.submit(chain) for name, chain in chains.items()}
        with report.section("masking"):
            masking_checks(report, device, args.smoke, correctness_deadline)
        with report.section("loss"):
            report.check("chunked_loss_equals_plain_fp32", lambda: chunked_loss(device), correctness_deadline)
        with report.section("evaluation"):
            evaluation_checks(report, runs, results, device, data, args.smoke, correctness_deadline)
        with report.section("loop runs"):
            correctness_checks(report, runs, results, device, gpu)
    if gpu:
        torch.cuda.empty_cache()  # the speed processes get the card to themselves
    with report.section("speed"):
        speed_section(report, work, data, args.smoke)
    report.data["finished"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    report.write()
    print_table(report)
    return report.exit_code()


if __name__ == "__main__":
    sys.exit(main())
