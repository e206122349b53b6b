"""titan_mimo.profiling: device-busy share, kernel kinds, kernels-only profiles (CPU)."""

from types import SimpleNamespace

import torch

from titan_mimo import profiling


def test_device_busy_counts_overlapping_kernels_once():
    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU

    def ev(start, end, device=cuda, key="kernel", annotation=False):
        return SimpleNamespace(time_range=SimpleNamespace(start=start, end=end), device_type=device,
                               key=key, is_user_annotation=annotation)
    events = [ev(0, 10), ev(5, 20), ev(30, 40), ev(0, 100, device=cpu),
              ev(0, 100, key="Optimizer.step#AdamW.step"), ev(0, 100, annotation=True)]
    busy_s, span_s = profiling.device_busy(events)
    assert busy_s == 30e-6 and span_s == 40e-6


def test_a_profile_without_host_ops_says_so():
    """Without a GPU there are no kernels to record alone, so the host ops are recorded; a
    profile without host ops says so instead of an empty table."""
    prof = profiling.profile_steps(lambda: torch.ones(8, 8) @ torch.ones(8, 8), torch.device("cpu"), 1,
                                   host=False)
    assert any(e.key == "aten::mm" for e in prof.key_averages())

    class NoHostOps:
        def key_averages(self):
            return []
    assert profiling.summary(NoHostOps(), torch.device("cpu"), 1)[-1] == "host ops: not recorded (kernels only)"


def test_kernel_kind_names():
    """The profile's per-kind totals sort real kernel names (from H100 profiles) into kinds."""
    cases = {
        "nvjet_sm90_tst_256x128_64x4_1x2_h_bz_coopA_NNT": "gemm",
        "_chunk_scan_chunk_state_bwd_dx_kernel": "ssd scan",
        "_bmm_chunk_fwd_kernel": "ssd scan",
        "_state_passing_bwd_kernel": "ssd scan",
        "triton_per_fused__to_copy_add_mean_mul_pow_rsqrt_0": "inductor",
        "cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x128": "attention",
        # FlashAttention-4 (CuTe DSL) kernels: attention, not "gemm" (their names say cutlass)
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
    assert {name: profiling.kernel_kind(name) for name in cases} == cases
