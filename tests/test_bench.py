"""titan_mimo.bench on CPU at debug size: the colocated whole model runs through the trainer's
build and the bare loop, and the numbers it returns are consistent."""

import math

from titan_mimo.bench import run


def test_bench_colocated_model_runs_and_reports_sane_numbers():
    out = run(["--module", "model", "--model", "vit/debug+hybrid_lm/debug", "--batch", "2",
               "--seq", "32", "--image", "16", "--steps", "2", "--warmup", "1", "--device", "cpu"])
    trainer, bare = out["titan_mimo"], out["bare"]
    for r in (trainer, bare):
        assert r.step_s > 0 and math.isfinite(r.loss)
        assert math.isclose(r.tokens_per_s * r.step_s, 2 * 32, rel_tol=1e-9)
        assert math.isclose(r.images_per_s * r.step_s, 2, rel_tol=1e-9)
        assert r.tflops > 0 and r.mfu is None  # no peak is known for a CPU
    # Same start weights and batch in fp32: the FSDP-built module trains exactly as the bare one.
    assert abs(trainer.loss - bare.loss) < 1e-5, (trainer.loss, bare.loss)
    assert math.isclose(out["overhead"], trainer.step_s / bare.step_s - 1)


def test_model_arg_overrides_parse_as_toml_values():
    from titan_mimo.bench import _parse_model_args
    assert _parse_model_args(["use_cls_token=false", "n_heads=10", "ssd_backend=mamba_ssm"]) == {
        "use_cls_token": False, "n_heads": 10, "ssd_backend": "mamba_ssm"}
    import pytest
    with pytest.raises(ValueError, match="key=value"):
        _parse_model_args(["n_heads"])


def test_device_busy_counts_overlapping_kernels_once():
    from types import SimpleNamespace

    import torch

    from titan_mimo.profiling import device_busy
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(start, end, device=cuda, key="kernel", annotation=False):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=device,
                               key=key, is_user_annotation=annotation)
    events = [ev(0, 10), ev(5, 20), ev(30, 40), ev(0, 100, device=cpu),
              ev(0, 100, key="Optimizer.step#AdamW.step"), ev(0, 100, annotation=True)]
    busy_s, span_s = device_busy(events)
    assert busy_s == 30e-6 and span_s == 40e-6


def test_attention_flag_reaches_both_modules():
    from titan_mimo.bench import lm_overrides, parse_args, vision_overrides
    args = parse_args(["--module", "model", "--model", "vit/h16+hybrid_lm/hybrid_2b", "--attention", "fa4", "--ssd-backend", "mamba_ssm",
                       "--vision-args", "use_cls_token=false"])
    assert lm_overrides(args) == {"ssd_backend": "mamba_ssm", "attention_backend": "fa4"}
    assert vision_overrides(args, 2048) == {"use_cls_token": False, "attention_backend": "fa4",
                                            "out_dim": 2048}
    assert "attention_backend" not in lm_overrides(parse_args(["--module", "language", "--model", "hybrid_lm/debug"]))


def test_memory_budget_flags_are_per_module_and_checked():
    import pytest

    from titan_mimo.bench import _ac_label, parse_args
    lm = ["--module", "language", "--model", "hybrid_lm/debug"]
    assert _ac_label(parse_args(lm + ["--compile", "--memory-budget", "0.85"])) == "none+budget:0.85"
    model = ["--module", "model", "--model", "vit/debug+hybrid_lm/debug", "--compile"]
    assert _ac_label(parse_args(model + ["--memory-budget", "0.5", "--vision-ac", "full"])) == \
        "none+budget:0.5/vision:full"
    assert _ac_label(parse_args(model + ["--memory-budget", "0.5", "--vision-memory-budget", "0.7"])) == \
        "none+budget:0.5/vision:none+budget:0.7"
    vit = ["--module", "vision", "--model", "vit/debug", "--compile"]
    assert _ac_label(parse_args(vit + ["--vision-memory-budget", "0.7"])) == "none+budget:0.7"
    for bad in (lm + ["--memory-budget", "0.5"],                       # no --compile
                lm + ["--compile", "--memory-budget", "0.5", "--ac", "mlp"],
                lm + ["--compile", "--memory-budget", "1.5"],
                vit + ["--memory-budget", "0.5"],
                lm + ["--compile", "--vision-memory-budget", "0.5"],
                vit + ["--vision-memory-budget", "0.5", "--vision-ac", "full"],
                vit + ["--vision-memory-budget", "0.5", "--vision-eager"],
                vit + ["--vision-memory-budget", "0"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_sync_every_step_waits_after_each_timed_step(monkeypatch):
    import torch

    import titan_mimo.bench as bench
    calls = []
    monkeypatch.setattr(bench, "_sync", lambda device: calls.append("sync"))

    def one_step():
        calls.append("step")
        return torch.zeros(())
    for every, expected in ((False, ["step", "sync", "step", "step", "step", "sync"]),
                            (True, ["step", "sync", "step", "sync", "step", "sync", "step", "sync", "sync"])):
        calls.clear()
        bench._time_steps(one_step, torch.device("cpu"), warmup=1, steps=3, profile=False,
                          sync_debug=False, sync_every_step=every)
        assert calls == expected, (every, calls)


def test_profile_kernels_only(monkeypatch):
    """`--profile-kernels-only` needs --profile and reaches the profiler as host=False; without a
    GPU there are no kernels to record alone, so the host ops are recorded as before; a profile
    without host ops says so instead of an empty table."""
    import pytest
    import torch

    import titan_mimo.bench as bench
    from titan_mimo import profiling
    vit = ["--module", "vision", "--model", "vit/debug"]
    with pytest.raises(SystemExit):
        bench.parse_args(vit + ["--profile-kernels-only"])
    assert bench.parse_args(vit + ["--profile", "--profile-kernels-only"]).profile_kernels_only
    seen = []
    monkeypatch.setattr(bench, "print_profile", lambda *a, **k: seen.append(k["host"]))
    for host in (True, False):
        bench._time_steps(lambda: torch.zeros(()), torch.device("cpu"), warmup=0, steps=1, profile=True,
                          sync_debug=False, profile_host=host)
    assert seen == [True, False]
    prof = profiling.profile_steps(lambda: torch.ones(8, 8) @ torch.ones(8, 8), torch.device("cpu"), 1,
                                   host=False)
    assert any(e.key == "aten::mm" for e in prof.key_averages())

    class NoHostOps:
        def key_averages(self):
            return []
    assert profiling.summary(NoHostOps(), torch.device("cpu"), 1)[-1] == "host ops: not recorded (kernels only)"


def test_kernel_kind_names():
    """The profile's per-kind totals sort real kernel names (from H100 profiles) into kinds."""
    from titan_mimo.profiling import kernel_kind
    cases = {
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": "gemm",
        "_chunk_scan_chunk_state_bwd_dx_kernel": "ssd scan",
        "_bmm_chunk_fwd_kernel": "ssd scan",
        "_state_passing_bwd_kernel": "ssd scan",
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "inductor",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128": "attention",
        # FlashAttention-4 (CuTe DSL), as the M1 profile (session 11) named them: not "gemm"
        "kernel_cutlass_kernel_flash_attncuteflash_bwd_sm90FlashAttentionBackwardSm90_object_at__tensor0000o1": "attention",
        "kernel_cutlass_kernel_flash_attncuteflash_fwd_sm90FlashAttentionForwardSm90_object_at__tensor0000o1": "attention",
        "void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4>>": "attention",
        "fmha_cutlassF_bf16_aligned_64x128_rf_sm80": "attention",
        "cutlass3x_sm90_tensorop_gemm_bf16_bf16_f32_bf16_bf16_128x256x64_1x2x1_0_tnn_align8": "gemm",
        "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<at::native::FusedOptimizerTensorListMetadata": "optimizer",
        "Memcpy DtoD (Device -> Device)": "copy",
        "void at::native::(anonymous namespace)::CatArrayBatchedCopy<float>": "copy",
        "Memset (Device)": "fill",
        "void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>": "fill",
        "void at::native::reduce_kernel<512, 1>": "other",
    }
    assert {name: kernel_kind(name) for name in cases} == cases


def test_coordinate_descent_tuning_is_on_for_the_run_only(monkeypatch):
    """`--coordinate-descent-tuning` needs --compile, turns Inductor's setting on while the
    trainer's build and the bare loop run (they compile), off again after, and is in the label."""
    import pytest
    import torch
    import torch._inductor.config as inductor_config

    import titan_mimo.bench as bench
    with pytest.raises(SystemExit):
        bench.parse_args(["--module", "vision", "--model", "vit/debug", "--coordinate-descent-tuning"])
    seen = []
    real_run_one = bench.run_one

    def run_one(*a, **k):
        seen.append(inductor_config.coordinate_descent_tuning)
        return real_run_one(*a, **k)
    monkeypatch.setattr(bench, "run_one", run_one)
    # The setting, not Inductor, is under test: blocks stay eager.
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: None)
    assert inductor_config.coordinate_descent_tuning is False
    out = run(["--module", "vision", "--model", "vit/debug", "--batch", "1", "--image", "16",
               "--steps", "1", "--warmup", "0", "--device", "cpu", "--compile",
               "--coordinate-descent-tuning"])
    assert seen == [True, True] and inductor_config.coordinate_descent_tuning is False
    assert out["titan_mimo"].coordinate_descent_tuning
    assert " compile+cdt " in bench.fmt(out["titan_mimo"])
