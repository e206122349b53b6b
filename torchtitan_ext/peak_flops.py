"""Peak dense bf16 FLOP/s of a GPU by name, from torchtitan's table (`tools.utils.get_peak_flops`),
for MFU. Checked on torchtitan 0.2.2 (`TORCHTITAN_CHECKED`): it knows A100, H100 (SXM, PCIe,
NVL), H200, H20, B200, L40S, MI250X/MI300X/MI325X/MI355X and Intel PVC, and falls back to the A100's value
(with a warning in its log) for any other name."""

from torchtitan.tools.utils import get_peak_flops

__all__ = ["gpu_peak_flops"]


def gpu_peak_flops(device_name: str) -> float:
    """FLOP/s of one GPU named `device_name` (`torch.cuda.get_device_name`)."""
    return float(get_peak_flops(device_name))
