"""Where and how a run computes: the device and the autocast precision the config asks for.
(Seeding: `pitscope.seeding`; several processes: `pitscope.distributed`.)"""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device=cuda but no CUDA device is available; use auto or cpu")
    return torch.device(name)


def resolve_precision(name: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype train.precision asks for on `device`; None means plain float32.

    "auto" is bf16 (fp16 on GPUs without bf16) on CUDA and float32 on the CPU, where bf16 is
    asked for explicitly: only CPUs with native bfloat16 run it faster. "bf16_where_native" is
    bf16 where the device runs it natively (a GPU with bf16, a CPU with AVX-512 BF16 or AMX) and
    float32 elsewhere, where emulated bf16 would be slower than float32.
    """
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if native_bf16(device) else torch.float16
        return None
    if name == "bf16_where_native":
        return torch.bfloat16 if native_bf16(device) else None
    if name == "fp16" and device.type != "cuda":
        raise ValueError("train.precision=fp16 needs CUDA; use bf16 or fp32 on the CPU")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def precision_name(dtype: torch.dtype | None) -> str:
    """The autocast dtype resolve_precision returned, as a word: float32, bfloat16 or float16."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def native_bf16(device: torch.device) -> bool:
    """Whether `device` runs bfloat16 natively (not emulated: a GPU of compute capability 8 or
    newer, a CPU with AVX-512 BF16 or AMX)."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    return device.type == "cpu" and cpu_has_bf16()


def cpu_has_bf16() -> bool:
    """Whether oneDNN runs bfloat16 natively on this CPU (AVX-512 or AMX); elsewhere it is emulated
    and slower than float32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
