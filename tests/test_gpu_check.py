"""benchmarks/gpu_check.py, the GPU check, in its CPU smoke mode: every section's code that a CPU can run
runs in CI, so the check is ready, unrotted, for the first GPU it meets (its GPU run needs the GPU)."""

import json
import subprocess
import sys

from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))

import gpu_check  # noqa: E402
from gpu_check_speed import category_of, compilations, covered_ms  # noqa: E402

# CPU-runnable checks that smoke mode leaves out, and why (anything else must pass).
SMOKE_SKIPS = {
    "masking_eval_flex_attention": "smoke mode (tests/test_masking.py checks it on a CPU)",
}


def test_smoke_mode_runs_every_cpu_check_and_they_pass(tmp_path):
    out = tmp_path / "gpu_check_smoke.json"
    command = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--smoke", "--out", str(out),
               "--work", str(tmp_path / "work")]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    report = json.loads(out.read_text())
    checks = report["checks"]
    failed = {name: check for name, check in checks.items() if check["status"] == "fail"}
    assert result.returncode == 0 and not failed, (failed, result.stdout[-3000:], result.stderr[-3000:])
    assert set(checks) == set(gpu_check.CHECKS) and report["summary"]["failed"] == []
    for name, (where, criterion) in gpu_check.CHECKS.items():
        status = checks[name]["status"]
        assert checks[name]["criterion"] == criterion
        if where == "gpu":
            assert status == "not run: no GPU", name
        elif status != "pass":
            assert status == f"not run: {SMOKE_SKIPS.get(name)}", (name, status)
    assert {name: s["status"] for name, s in report["sections"].items()} == dict.fromkeys(
        ["data", "environment", "masking", "loss", "evaluation", "loop runs", "speed"], "done"
    )
    # The runs really ran: their figures are in the JSON.
    accumulation = checks["accumulation_8x1_equals_4x2"]["figures"]
    assert len(accumulation["losses_8x1"]) == gpu_check.ACCUMULATION_STEPS and accumulation["checksums_equal"]
    assert checks["fsdp2_one_rank_resume"]["figures"]["stopped_and_resumed_at_step_3"]
    assert checks["masking_leak_visible"]["figures"]["max_logit_difference"] > 0.1
    assert set(report["evaluation"]["cpu"]) == {"val_loss", "probes", "core"}
    speed = report["speed"]["tiny-smoke"]
    assert speed["complete"] and speed["loop"]["measured_steps"] >= 2 and speed["loop"]["tok_per_s"] > 0
    assert speed["loop"]["compile"] and speed["loop"]["recompiles"] == 0  # one graph for both decoder blocks
    assert all(speed["bare"][mode]["tok_per_s"] > 0 for mode in ("eager", "compiled"))
    # The memory figures are the rehearsal's real-tensor mode on the same run (train/rehearse.py), every phase.
    from scratchlm.train.rehearse import PHASES

    rehearsed = speed["estimate"]
    assert rehearsed["status"] == "done" and list(rehearsed["phases_gib"]) == list(PHASES)
    assert rehearsed["tok_per_s"] > 0 and rehearsed["measured_gib"] > 0 and abs(rehearsed["relative_error"]) < 1
    categories = speed["profile"]["categories"]
    assert categories["matmul"]["ms"] > 0 and sum(c["share"] for c in categories.values()) >= 0.99
    assert not (tmp_path / "work" / "speed_tiny-smoke" / "export").exists()  # stopped before its export


def test_a_failing_or_crashing_check_fails_the_run_and_unrun_checks_say_why(tmp_path):
    report = gpu_check.Report(tmp_path / "report.json", smoke=True, budget_s=60)
    report.check("peak_flops_by_name", lambda: (True, {"peak_tflops": 989.0}))
    report.check("masking_train_sdpa", lambda: 1 / 0)
    report.check("masking_eval_sdpa", lambda: (False, {"max_logit_difference": 0.5}))
    report.check("masking_eval_eager", lambda: (True, {}), deadline=0.0)  # its section's deadline has passed
    report.write()
    checks = json.loads((tmp_path / "report.json").read_text())["checks"]
    assert checks["peak_flops_by_name"]["status"] == "pass" and checks["peak_flops_by_name"]["figures"]
    assert checks["masking_train_sdpa"]["status"] == "fail"
    assert checks["masking_train_sdpa"]["error"].startswith("ZeroDivisionError")
    assert checks["masking_eval_sdpa"]["status"] == "fail"
    assert checks["masking_eval_eager"]["status"].startswith("not run: time")
    assert checks["masking_eval_flex_attention"]["status"] == "not run: pending (the check never started)"
    assert checks["probes_on_gpu"]["status"] == "not run: no GPU"
    assert report.exit_code() == 1


def test_profile_categories_of_real_kernel_names_and_overlapping_kernels():
    """The GPU profile's summary, on names from CUDA traces of these models (it cannot run in CI)."""
    names = {
        "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize2x1x1_execute_segment_k_off_kernel"
        "__5x_cublas": "matmul",
        "nvjet_hsh_256x128_64x4_1x2_h_bz_coopA_NNT": "matmul",
        "triton_tem_fused_flex_attention_0": "attention",
        "pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>>":
        "attention",
        "fmha_cutlassB_bf16_aligned_64x64_k128_sm80": "attention",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::(anonymous namespace)::"
        "FusedOptimizerTensorListMetadata<4>, at::native::(anonymous namespace)::FusedAdamMathFunctor<float, 4>>":
        "optimizer",
        "triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_0": "norm/elementwise/other",
        "ncclDevKernel_AllGather_RING_LL(ncclDevKernelArgsStorage<4096ul>)": "communication",
        "Memcpy HtoD (Pageable -> Device)": "memory copy",
        "aten::addmm": "matmul",
    }  # fmt: skip
    assert {name: category_of(name) for name in names} == names
    # µs intervals, two of them overlapping (kernels on two streams): 10 + 5 + 10 µs of busy device.
    assert covered_ms([(0.0, 10.0), (5.0, 15.0), (20.0, 30.0), (22.0, 25.0)]) == 0.025


def test_recompilations_are_counted_with_their_reasons():
    import torch

    before = compilations()["recompiles"]
    scale = torch.compile(lambda x, factor: x * factor, backend="eager")
    scale(torch.ones(3), 2)
    scale(torch.ones(3), 3)  # an int argument is guarded on: the frame compiles again
    counted = compilations()
    assert counted["recompiles"] == before + 1 and counted["frames_compiled"] >= 2
    assert any("factor" in reason for reason in counted["recompile_reasons"])
