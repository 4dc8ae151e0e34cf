"""The device check's correctness sections (gpu_check.py runs them and records their checks):

- tiny-recipe runs as users launch them, `python recipes/pretrain.py --config RUN.yaml`, each in its own
  process and side by side: GPU fp32 and bf16 against CPU fp32, accumulation 8x1 against 4x2, FSDP2 over
  a process group of one (straight, and stopped then resumed), and the comparisons of their metrics;
- in this process: document masking on every attention backend, in the training step and in evaluation
  (tests/test_masking.py on the device), evaluation on the device against the CPU, the chunked loss.

Each check is a function returning (passed, figures), or raising NotRun (with why) or any error (a fail).
"""

import contextlib
import copy
import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from scratchlm.config import read_yaml  # noqa: E402
from scratchlm.data.loader import document_positions  # noqa: E402
from scratchlm.data.shards import TokenShards  # noqa: E402
from scratchlm.disk import read_rows  # noqa: E402
from scratchlm.eval.bpb import evaluate_bpb, token_byte_lengths, token_nats  # noqa: E402
from scratchlm.eval.core import evaluate_core, load_bundle  # noqa: E402
from scratchlm.eval.probes import probe_accuracy  # noqa: E402
from scratchlm.model import ScratchForCausalLM  # noqa: E402
from scratchlm.model.attention import choose as choose_attention  # noqa: E402
from scratchlm.model.files import load_for_evaluation, load_model, load_model_from  # noqa: E402
from scratchlm.model.loss import liger_loss, lm_loss, plain_lm_loss  # noqa: E402
from scratchlm.model.modeling_scratch import SoftCappedLinear  # noqa: E402
from scratchlm.model.presets import build_config  # noqa: E402
from scratchlm.run_dir import RunDir  # noqa: E402
from scratchlm.train.config import PretrainConfig  # noqa: E402
from scratchlm.train.parallel import World, wrap_model  # noqa: E402
from scratchlm.train.step import Stepper  # noqa: E402

TINY = REPO / "recipes" / "tiny"
# Smoke mode's model: the tiny preset at test size (every code path, a fraction of the work); its vocabulary
# takes the tokenizer of either data (1,024 tokens asked for smoke mode's, 1,275 in the full tiny recipe's).
SMOKE_MODEL = {"preset": "tiny", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
               "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 2048,
               "max_position_embeddings": 128}  # fmt: skip
CORRECTNESS_STEPS = 30  # the GPU-against-CPU runs
ACCUMULATION_STEPS = 8
CORE_ITEMS = 16  # CORE items per task in the evaluation checks (smoke mode: 4)


class NotRun(Exception):
    """The check cannot run here (the reason is its status)."""


class TimeUp(NotRun):
    """A section's deadline passed before this work could finish."""

    def __init__(self, why: str):
        super().__init__(f"time ({why})")


def child_env(**extra: str) -> dict:
    """This checkout's scratchlm for every child process, offline."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO / "src"), env.get("PYTHONPATH", "")) if p)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env["TOKENIZERS_PARALLELISM"] = "false"
    env.update(extra)
    return env


def last_lines(text: str, count: int = 3) -> str:
    return " | ".join(line.strip() for line in text.strip().splitlines()[-count:])[-600:]


class LoopRuns:
    """Tiny-recipe runs, each `python recipes/pretrain.py --config RUN.yaml` in its own process."""

    def __init__(self, work: Path, data: Path, smoke: bool, deadline: float):
        self.work, self.data, self.smoke, self.deadline = work, data, smoke, deadline

    def config(self, name: str, **overrides) -> Path:
        values = read_yaml(TINY / "pretrain.yaml")
        values.update(
            output_dir=str(self.work / name), data_dir=str(self.data / "shards"), data_config="", default_data="",
            tokenizer_vocab_size=0, max_steps=CORRECTNESS_STEPS, logging_steps=1, save_steps=0, eval_steps=0,
            sample_steps=0, sample_prompts=[], probes="", core_bundle="",
        )  # fmt: skip
        if self.smoke:
            model = self.work / "smoke_model.yaml"
            model.write_text(yaml.safe_dump(SMOKE_MODEL))
            values.update(model_preset="", model_config=str(model), seq_len=64)
        values.update(overrides)
        path = self.work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(values))
        return path

    def launch(self, name: str, config: Path, log: str = "", **env: str) -> str:
        """Runs to the end; returns its output. A run past the deadline is killed (TimeUp)."""
        if self.smoke:
            env.setdefault("OMP_NUM_THREADS", "1")  # a few processes share two cores
        env.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "4")  # several compiling processes share the cores
        command = [sys.executable, str(REPO / "recipes" / "pretrain.py"), "--config", str(config)]
        log_path = self.work / f"{log or name}.log"
        with open(log_path, "w") as out:
            process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env=child_env(**env),
                                       start_new_session=True)  # fmt: skip
            try:
                returncode = process.wait(timeout=max(1.0, self.deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                raise TimeUp(f"run {name} passed the section's deadline") from None
        output = log_path.read_text()
        if returncode:
            raise RuntimeError(f"run {name} exited with {returncode}: {last_lines(output)}")
        return output

    def steps(self, name: str) -> dict[int, dict]:
        return {m["step"]: m for m in RunDir(self.work / name).training_metrics()}


def loop_without_datasets(data: Path, work: Path) -> tuple[bool, dict]:
    """A process where `import datasets` raises (as where it is not installed) runs the loop's data step."""
    code = (
        "import sys\n"
        "sys.modules['datasets'] = None  # any import of it now raises ImportError\n"
        "from scratchlm.train.config import PretrainConfig\n"
        "from scratchlm.train.loop import prepare_data\n"
        f"prepare_data(PretrainConfig(output_dir={str(work / 'unused')!r}, model_preset='tiny', "
        f"data_dir={str(data / 'shards')!r}, max_steps=1))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=300)
    figures = {"returncode": result.returncode}
    if result.returncode:
        figures["error"] = last_lines(result.stderr)
    return result.returncode == 0, figures


def correctness_chains(runs: LoopRuns, gpu: bool, ports: tuple[int, int]) -> dict:
    """name -> callable; each runs in a thread of its own (the processes run side by side)."""
    fp32 = {"bf16": False, "attn_implementation": "sdpa"}
    # Without document masking and with no attention named: what a GPU run then picks (sdpa, flash-attn absent).
    accumulation = dict(max_steps=ACCUMULATION_STEPS, bf16=False, document_masking=False, attn_implementation="")
    fsdp_env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}
    fsdp = {"max_steps": 6, "save_steps": 3, "bf16": gpu}

    def stopped_then_resumed():
        """Stopped after step 3 (stop_at_step writes its checkpoint), then the run without it resumes there."""
        port_env = {"MASTER_PORT": str(ports[1]), **fsdp_env}
        stop = runs.config("fsdp_resumed", **fsdp, stop_at_step=3)
        first = runs.launch("fsdp_resumed", stop, "fsdp_stop", **port_env)
        second = runs.launch("fsdp_resumed", runs.config("fsdp_resumed", **fsdp), "fsdp_resume", **port_env)
        return first + second

    chains = {
        "accum_8x1": lambda: runs.launch(
            "accum_8x1",
            runs.config("accum_8x1", per_device_train_batch_size=8, gradient_accumulation_steps=1, **accumulation),
        ),
        "accum_4x2": lambda: runs.launch(
            "accum_4x2",
            runs.config("accum_4x2", per_device_train_batch_size=4, gradient_accumulation_steps=2, **accumulation),
        ),
        "fsdp_straight": lambda: runs.launch(
            "fsdp_straight", runs.config("fsdp_straight", **fsdp), MASTER_PORT=str(ports[0]), **fsdp_env
        ),
        "fsdp_resumed": stopped_then_resumed,
        "no_datasets": lambda: loop_without_datasets(runs.data, runs.work),
    }
    if gpu:
        cpu = {"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "8"}
        chains["cpu_fp32"] = lambda: runs.launch("cpu_fp32", runs.config("cpu_fp32", **fp32), **cpu)
        chains["gpu_fp32"] = lambda: runs.launch("gpu_fp32", runs.config("gpu_fp32", **fp32))
        chains["gpu_bf16"] = lambda: runs.launch("gpu_bf16", runs.config("gpu_bf16", **{**fp32, "bf16": True}))
    return chains


def loss_differences(a: dict, b: dict) -> list[float]:
    return [abs(a[step]["loss"] - b[step]["loss"]) for step in sorted(b)]


def same_windows(a: dict, b: dict, steps) -> bool:
    return all(a[s]["windows_checksum"] == b[s]["windows_checksum"] for s in steps)


def gpu_against_cpu(runs: LoopRuns, results: dict, name: str) -> tuple[dict, dict, list[float], dict]:
    results[name].result()
    results["cpu_fp32"].result()
    a, b = runs.steps(name), runs.steps("cpu_fp32")
    steps = list(range(1, CORRECTNESS_STEPS + 1))
    if sorted(a) != steps or sorted(b) != steps:
        raise RuntimeError(f"steps logged: {name} {sorted(a)}, cpu_fp32 {sorted(b)}")
    diffs = loss_differences(a, b)
    figures = {
        "checksums_equal": same_windows(a, b, steps),
        "first_loss": {"gpu": a[1]["loss"], "cpu": b[1]["loss"], "difference": diffs[0]},
        "max_difference": max(diffs),
        "mean_difference": sum(diffs) / len(diffs),
        "last_loss": {"gpu": a[steps[-1]]["loss"], "cpu": b[steps[-1]]["loss"]},
    }
    return a, b, diffs, figures


def correctness_checks(report, runs: LoopRuns, results: dict, device: torch.device, gpu: bool) -> None:
    def fp32():
        _, _, diffs, figures = gpu_against_cpu(runs, results, "gpu_fp32")
        return figures["checksums_equal"] and diffs[0] <= 1e-5 and max(diffs) <= 2e-3, figures

    def bf16():
        _, _, diffs, figures = gpu_against_cpu(runs, results, "gpu_bf16")
        return diffs[0] <= 0.02 and figures["mean_difference"] <= 0.03, figures

    def accumulation():
        results["accum_8x1"].result()
        results["accum_4x2"].result()
        a, b = runs.steps("accum_8x1"), runs.steps("accum_4x2")
        relative = [abs(a[s]["loss"] - b[s]["loss"]) / abs(b[s]["loss"]) for s in sorted(b)]
        figures = {
            "checksums_equal": same_windows(a, b, b),
            "max_relative_difference": max(relative),
            "losses_8x1": [a[s]["loss"] for s in sorted(a)],
            "losses_4x2": [b[s]["loss"] for s in sorted(b)],
        }
        ok = sorted(a) == sorted(b) == list(range(1, ACCUMULATION_STEPS + 1)) and figures["checksums_equal"]
        return ok and max(relative) <= 1e-4, figures

    def sdpa_chosen():
        if importlib.util.find_spec("flash_attn") is not None:
            raise NotRun("flash-attn is installed here")
        said = "attention sdpa" in results["accum_8x1"].result()
        chosen = choose_attention(document_masking=False)
        return said and chosen == "sdpa", {"attention_backend": chosen, "run_said_attention_sdpa": said}

    def fsdp_resume():
        results["fsdp_straight"].result()
        output = results["fsdp_resumed"].result()
        straight, resumed = runs.steps("fsdp_straight"), runs.steps("fsdp_resumed")
        said = "stopped at step 3" in output and "step_00000003 at step 3" in output
        later = [4, 5, 6]
        diffs = [abs(resumed[s]["loss"] - straight[s]["loss"]) for s in later]
        bounds = [1e-3 if gpu else 1e-5 * abs(straight[s]["loss"]) for s in later]
        figures = {
            "stopped_and_resumed_at_step_3": said,
            "checksums_equal": same_windows(straight, resumed, later),
            "loss_differences": diffs,
            "losses_straight": [straight[s]["loss"] for s in later],
        }
        ok = said and sorted(resumed) == list(range(1, 7)) and figures["checksums_equal"]
        return ok and all(d <= b for d, b in zip(diffs, bounds, strict=True)), figures

    def fsdp_export():
        results["fsdp_straight"].result()
        run = RunDir(runs.work / "fsdp_straight")
        saved, _ = load_model_from(run.latest_checkpoint(), with_tokenizer=False)
        exported, _ = load_model(run.export, with_tokenizer=False)
        low, _ = load_model(run.export, dtype=torch.bfloat16, with_tokenizer=False)
        mine, theirs = exported.state_dict(), saved.state_dict()
        same = mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in theirs)
        ids = torch.from_numpy(TokenShards(runs.data / "shards").sources[0].val[:128].astype("int64"))[None]
        with torch.no_grad():
            full = exported.to(device)(input_ids=ids.to(device)).logits.float()
            half = low.to(device)(input_ids=ids.to(device)).logits.float()
        error = float((half - full).norm() / full.norm())
        dtypes = sorted({str(p.dtype) for p in low.parameters()})
        figures = {
            "checkpoint": run.latest_checkpoint().name,
            "export_equals_checkpoint": same,
            "bf16_dtypes": dtypes,
            "bf16_relative_logit_error": error,
        }
        return same and dtypes == ["torch.bfloat16"] and error <= 0.02, figures

    if gpu:
        report.check("fp32_gpu_matches_cpu", fp32)
        report.check("bf16_gpu_tracks_cpu_fp32", bf16)
        report.check("flash_attn_absent_sdpa_chosen", sdpa_chosen)
    report.check("accumulation_8x1_equals_4x2", accumulation)
    report.check("fsdp2_one_rank_resume", fsdp_resume)
    report.check("fsdp2_export_reloads_bf16", fsdp_export)
    report.check("loop_starts_without_datasets", results["no_datasets"].result)


# --- document masking, in this process: every attention backend, training and evaluation -------------

BOS = 0
# head_dim 32 and windows of two 128-token blocks: shapes flex_attention's GPU kernels take as they are.
MASKING_MODEL = {"preset": "tiny", "hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                 "num_key_value_heads": 2, "intermediate_size": 256, "vocab_size": 1024,
                 "max_position_embeddings": 512}  # fmt: skip


class Masking:
    """tests/test_masking.py on the device: two documents packed into each of two windows (a+b, b+a); each
    document's logits there must equal its logits alone (fp32)."""

    def __init__(self, device: torch.device, window: int, compile_backend: str):
        self.device, self.window, self.compile_backend = device, window, compile_backend
        self.tolerance = 1e-3 if device.type == "cuda" else 1e-4
        generator = torch.Generator().manual_seed(0)
        first = window * 2 // 5
        self.first = [BOS] + torch.randint(5, 1000, (first - 1,), generator=generator).tolist()
        self.second = [BOS] + torch.randint(5, 1000, (window - first,), generator=generator).tolist()

    def model(self, attn: str) -> ScratchForCausalLM:
        torch.manual_seed(0)
        config = build_config(MASKING_MODEL)
        config._attn_implementation = attn
        return ScratchForCausalLM(config).to(self.device)

    def batch(self) -> dict:
        rows = torch.tensor([self.first + self.second, self.second + self.first])
        inputs = rows[:, :-1]
        return {
            "input_ids": inputs,
            "labels": rows[:, 1:],
            "position_ids": torch.from_numpy(document_positions(inputs.numpy(), BOS)),
            "window_ids": torch.tensor([[0, 0], [0, 1]]),
        }

    def alone(self, model, document: list[int]) -> torch.Tensor:
        with torch.no_grad():
            return model(input_ids=torch.tensor([document], device=self.device)).logits[0].float()

    def differences(self, packed: torch.Tensor, model) -> float:
        a, b = self.alone(model, self.first), self.alone(model, self.second)
        n, m, w = len(self.first), len(self.second), self.window
        packed = packed.float()
        return max(
            (packed[0, :n] - a).abs().max().item(),
            (packed[0, n:] - b[: w - n]).abs().max().item(),
            (packed[1, :m] - b).abs().max().item(),
            (packed[1, m:] - a[: w - m]).abs().max().item(),
        )

    def training_step(self, attn: str, checkpointing: bool = False, compiled: bool = False):
        model, reference = self.model(attn), self.model(attn)
        config = PretrainConfig(
            output_dir="unused", model_preset="tiny", data_dir="unused", max_steps=1, per_device_train_batch_size=2,
            gradient_checkpointing=checkpointing, torch_compile=compiled,
            torch_compile_backend=self.compile_backend,
        )  # fmt: skip
        world = World(rank=0, size=1, local_rank=0, device=self.device, fsdp=False, bf16=False)
        trained = wrap_model(model, world, config)
        captured = []

        def loss_keeping_logits(hidden, head, labels):
            logits = head(hidden)
            captured.append(logits.detach())
            return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())

        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        stepper = Stepper(
            model=trained,
            optimizer=optimizer,
            loader=iter([self.batch()]),
            accumulation=1,
            world=world,
            config=config,
            loss_fn=loss_keeping_logits,
        )
        result = stepper.step(1, False, lambda: None)
        difference = self.differences(captured[0], reference)
        figures = {"max_logit_difference": difference, "tolerance": self.tolerance, "loss": result.loss}
        figures["grad_norm"] = result.grad_norm
        return result.loss > 0 and result.grad_norm > 0 and difference <= self.tolerance, figures

    def evaluation(self, attn: str):
        model = self.model(attn).eval()
        batch = {k: v.to(self.device) for k, v in self.batch().items()}
        with torch.no_grad():
            nats = token_nats(model, batch["input_ids"], batch["labels"], batch["position_ids"])
            logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits
        second = torch.tensor(self.second[1:], device=self.device)
        alone = F.cross_entropy(self.alone(model, self.second)[:-1], second, reduction="none")
        n, m = len(self.first), len(self.second)
        nats_difference = (nats[0, n : n + m - 1].float() - alone).abs().max().item()
        difference = self.differences(logits, model)
        figures = {"max_logit_difference": difference, "max_loss_difference": nats_difference}
        figures["tolerance"] = self.tolerance
        return max(difference, nats_difference) <= self.tolerance, figures

    def leak(self):
        model = self.model("sdpa")
        batch = self.batch()
        inputs, positions = batch["input_ids"].to(self.device), batch["position_ids"].to(self.device)
        with torch.no_grad():
            leaky = model(input_ids=inputs, position_ids=positions)  # transformers' default: use_cache=True
        difference = self.differences(leaky.logits, model)
        return difference > 0.1, {"max_logit_difference": difference}


def masking_checks(report, device: torch.device, smoke: bool, deadline: float) -> None:
    masking = Masking(device, window=64 if smoke else 256, compile_backend="eager" if smoke else "inductor")
    report.check("masking_leak_visible", masking.leak, deadline)
    for attn in ("sdpa", "eager", "flex_attention"):
        if smoke and attn == "flex_attention":  # the code sdpa's check runs; inductor compiles flex slowly for a CPU
            report.skip("masking_eval_flex_attention", "smoke mode (tests/test_masking.py checks it on a CPU)")
        else:
            report.check(f"masking_eval_{attn}", lambda a=attn: masking.evaluation(a), deadline)
    for name, attn, options in (
        ("masking_train_sdpa", "sdpa", {}),
        ("masking_train_eager", "eager", {}),
        ("masking_train_sdpa_checkpointing", "sdpa", {"checkpointing": True}),
        ("masking_train_sdpa_compiled", "sdpa", {"compiled": True}),
        ("masking_train_flex_attention", "flex_attention", {}),
        ("masking_train_flex_attention_checkpointing", "flex_attention", {"checkpointing": True}),
        ("masking_train_flex_attention_compiled", "flex_attention", {"compiled": True}),
    ):
        if device.type == "cuda" or attn != "flex_attention":
            report.check(name, lambda a=attn, o=options: masking.training_step(a, **o), deadline)


# --- evaluation on the device, against the CPU --------------------------------------------------------


def evaluation_checks(report, runs: LoopRuns, results: dict, device: torch.device, data: Path,
                      smoke: bool, deadline: float) -> None:  # fmt: skip
    """Validation loss, probes and CORE of a trained tiny model on the CPU, then on `device` against those."""
    source = "accum_8x1" if smoke else "gpu_fp32"
    export = runs.work / source / "export"
    try:
        results[source].result()
        model, tokenizer = load_model(export)
        origin = f"the export of run {source}"
    except Exception as err:  # noqa: BLE001 - GPU against CPU needs any weights, trained ones preferred
        export = None
        from scratchlm.tokenization import load_tokenizer

        tokenizer = load_tokenizer(data / "shards" / "tokenizer")
        torch.manual_seed(0)
        config = build_config(SMOKE_MODEL if smoke else {"preset": "tiny"})
        config._attn_implementation = "sdpa"
        model, origin = ScratchForCausalLM(config), f"random weights (run {source}: {str(err)[:200]})"
    shards = TokenShards(data / "shards", tokenizer)
    rows = read_rows(data / "probes.jsonl", ("prompt", "answer"))
    tasks = load_bundle(data / "core")
    token_bytes = token_byte_lengths(tokenizer, model.config.vocab_size)
    seq_len = 64 if smoke else read_yaml(TINY / "pretrain.yaml")["seq_len"]
    metrics = {
        "val_loss": lambda m: evaluate_bpb(m, shards, token_bytes, seq_len, 8, 16, True)["val_loss"],
        "probes": lambda m: probe_accuracy(m, tokenizer, rows)["probe_accuracy"],
        "core": lambda m: evaluate_core(m, tokenizer, tasks, 4 if smoke else CORE_ITEMS, split=False)["core"],
    }
    cpu = {}
    report.data["evaluation"] = {"model": origin, "cpu": cpu}

    def on_cpu(name: str) -> float:  # once, when first needed: a failure is the check's that needed it
        if name not in cpu:
            cpu[name] = metrics[name](model)
        return cpu[name]

    if smoke:
        for name in metrics:
            on_cpu(name)
        return
    on_gpu = copy.deepcopy(model).to(device)

    def probes():
        accuracy = metrics["probes"](on_gpu)
        return accuracy == on_cpu("probes"), {"gpu": accuracy, "cpu": on_cpu("probes"), "probes": len(rows)}

    def core():
        value = metrics["core"](on_gpu)
        return abs(value - on_cpu("core")) <= 0.02, {"gpu": value, "cpu": on_cpu("core")}

    def bf16():
        """As the Evaluator runs in training (bf16 autocast over fp32 weights) and as `scratchlm eval` loads a
        model (load_for_evaluation: bf16 weights on a GPU), against fp32 on the same GPU."""
        fp32 = metrics["val_loss"](on_gpu)
        if export is None:
            raise RuntimeError(f"no export to load for evaluation: {origin}")
        in_bf16, _ = load_for_evaluation(export, device=device)
        figures = {"val_loss_fp32": fp32, "bf16_weights_dtype": str(next(in_bf16.parameters()).dtype)}
        ways = [
            ("autocast", on_gpu, torch.autocast(device.type, dtype=torch.bfloat16), 0.02),
            ("bf16_weights", in_bf16, contextlib.nullcontext(), 0.03),
        ]
        for way, evaluated, precision, tolerance in ways:
            with precision:
                for name, measure in metrics.items():
                    try:
                        figures[f"{name}_{way}"] = measure(evaluated)
                    except Exception as err:  # noqa: BLE001 - every evaluation is tried, each failure named
                        figures[f"{name}_{way}_error"] = f"{type(err).__name__}: {str(err)[:300]}"
            loss = figures.get(f"val_loss_{way}")
            figures[f"{way}_within_{tolerance}"] = loss is not None and abs(loss - fp32) <= tolerance
        passed = all(v for k, v in figures.items() if "_within_" in k) and not any("error" in k for k in figures)
        return passed, figures

    report.check("probes_on_gpu", probes, deadline)
    report.check("core_on_gpu", core, deadline)
    report.check("evaluation_bf16_on_gpu", bf16, deadline)


# --- the chunked loss --------------------------------------------------------------------------------


def chunked_loss(device: torch.device):
    """model/loss.py's chunked loss (600 tokens in chunks of 128) against the plain one, in fp32."""
    figures = {"chunk_tokens": 128}
    worst = 0.0
    for cap in (None, 15.0):
        torch.manual_seed(0)
        head = torch.nn.Linear(64, 1000, bias=False) if cap is None else SoftCappedLinear(64, 1000, cap)
        head = head.to(device)
        hidden = torch.randn(2, 300, 64, device=device, requires_grad=True)
        labels = torch.randint(0, 1000, (2, 300), device=device)
        labels[:, ::7] = -100  # ignored positions, as padding would be
        outputs = []
        for loss_fn, options in ((lm_loss, {"chunk_tokens": 128}), (plain_lm_loss, {})):
            loss = loss_fn(hidden, head, labels, **options)
            outputs.append([loss.detach(), *torch.autograd.grad(loss, (hidden, head.weight))])
        errors = {
            name: float((mine - plain).norm() / plain.norm())
            for name, mine, plain in zip(("loss", "hidden_grad", "weight_grad"), *outputs, strict=True)
        }
        figures[f"softcap_{cap}"] = {"relative_errors": errors, "loss": float(outputs[1][0])}
        worst = max(worst, *errors.values())
    figures["liger_on_this_device"] = liger_loss(device) is not None  # then lm_loss is Liger's kernel
    return worst <= 1e-5, figures
