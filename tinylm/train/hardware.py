"""Peak bf16 throughput of known accelerators, for MFU (model FLOPs utilization).

MFU = tokens/s x ``GPT.flops_per_token()`` / the card's peak. Peaks are the vendors' DENSE
bf16 tensor-core figures (the datasheets' "with sparsity" numbers are twice these, and no
training run uses 2:4 sparsity). An unknown card, and every CPU, gets None: no MFU is better
than a guessed one.
"""

from __future__ import annotations

# (substring of torch.cuda.get_device_name(), dense bf16 FLOP/s); the first match wins, so
# the more specific names come first (H100 PCIe before H100)
BF16_PEAKS: list[tuple[str, float]] = [
    ("H200", 989e12),  # H200 SXM (same tensor cores as H100 SXM)
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    ("GH200", 989e12),
    ("A100", 312e12),  # SXM and PCIe alike
    ("L40S", 362e12),
    ("L40", 181e12),
    ("L4", 121e12),
    ("A10", 125e12),  # the datacenter A10 (not AWS's A10G, whose peak NVIDIA does not publish)
    ("RTX 4090", 165e12),
]


def bf16_peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a CUDA device by its name, or None if it is not known."""
    for key, peak in BF16_PEAKS:
        if key in device_name and "A10G" not in device_name:
            return peak
    return None


def mfu(tokens_per_s: float, flops_per_token: float, device_name: str | None) -> float | None:
    """Model FLOPs utilization in [0, 1], or None where the peak is unknown (CPUs)."""
    peak = bf16_peak_flops(device_name) if device_name else None
    return tokens_per_s * flops_per_token / peak if peak else None
