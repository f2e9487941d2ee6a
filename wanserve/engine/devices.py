"""Device kinds wanserve runs on: CUDA GPUs, Ascend NPUs (torch_npu) and the CPU.

Per kind: how to detect it, which torch.distributed backend a group uses, the default dtype,
the best attention backend of diffusers' dispatcher, and a memory report.
"""

from __future__ import annotations

import importlib.util
import os
import platform
from dataclasses import dataclass, field
from typing import Literal

import torch

Kind = Literal["cuda", "npu", "cpu"]

DIST_BACKENDS: dict[str, str] = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class DeviceError(RuntimeError):
    """The requested device kind is not available on this machine."""


@dataclass(frozen=True)
class DeviceInfo:
    kind: Kind
    count: int
    names: list[str] = field(default_factory=list)

    @property
    def dist_backend(self) -> str:
        return DIST_BACKENDS[self.kind]

    @property
    def default_dtype(self) -> torch.dtype:
        # bf16 is what Wan was trained in; CPUs run it slowly and imprecisely, so fp32 there.
        return torch.float32 if self.kind == "cpu" else torch.bfloat16

    def torch_device(self, index: int = 0) -> torch.device:
        return torch.device("cpu") if self.kind == "cpu" else torch.device(self.kind, index)

    def describe(self) -> str:
        if self.kind == "cpu":
            return f"cpu ({os.cpu_count()} cores, {platform.machine()})"
        return f"{self.count} x {self.names[0] if self.names else self.kind}"


def npu_available() -> bool:
    """True when torch_npu is installed and sees at least one NPU (imported only here)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers torch.npu)

    return bool(torch.npu.is_available())  # type: ignore[attr-defined]


def detect(preferred: str = "auto") -> DeviceInfo:
    """The device kind to run on: `preferred`, or the best one present (cuda > npu > cpu)."""
    if preferred in ("auto", "cuda") and torch.cuda.is_available():
        count = torch.cuda.device_count()
        return DeviceInfo("cuda", count, [torch.cuda.get_device_name(i) for i in range(count)])
    if preferred in ("auto", "npu") and npu_available():
        count = torch.npu.device_count()  # type: ignore[attr-defined]
        return DeviceInfo("npu", count, [torch.npu.get_device_name(i) for i in range(count)])  # type: ignore[attr-defined]
    if preferred in ("cuda", "npu"):
        raise DeviceError(f"DEVICE={preferred} but no {preferred.upper()} device is available on this machine")
    return DeviceInfo("cpu", 1, [platform.processor() or platform.machine()])


def resolve_dtype(name: str, info: DeviceInfo) -> torch.dtype:
    return info.default_dtype if name == "auto" else DTYPES[name]


def best_attention_backend(info: DeviceInfo) -> str:
    """The fastest exact attention diffusers can dispatch to on this device kind."""
    if info.kind == "npu":
        return "_native_npu"
    if info.kind == "cuda":
        if importlib.util.find_spec("flash_attn_interface") is not None:
            return "_flash_3"
        if importlib.util.find_spec("flash_attn") is not None:
            return "flash"
        return "_native_cudnn"
    return "native"


def available_attention_backends() -> list[str]:
    from diffusers.models.attention_dispatch import AttentionBackendName

    return [b.value for b in AttentionBackendName]


def attention_backend_returns_lse(name: str) -> bool:
    """Ring attention merges partial results by their log-sum-exp; backends that do not return it can't ring."""
    return name in {"flash", "flash_hub", "_flash_3", "_flash_3_hub", "_native_cudnn", "_native_flash", "sage"}


def memory_report(info: DeviceInfo) -> list[dict[str, float | int | str]]:
    """Per device: total, used by this process (allocated, reserved) and free memory, in GiB."""
    gib = 1024**3
    rows: list[dict[str, float | int | str]] = []
    if info.kind == "cpu":
        total = free = 0.0
        try:
            with open("/proc/meminfo") as f:
                meminfo = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f}
            total, free = meminfo["MemTotal"] / gib, meminfo["MemAvailable"] / gib
        except OSError:
            pass
        rows.append({"device": "cpu", "total_gib": round(total, 2), "free_gib": round(free, 2),
                     "process_rss_gib": round(process_rss_bytes() / gib, 3)})
        return rows
    module = torch.cuda if info.kind == "cuda" else torch.npu  # type: ignore[attr-defined]
    for i in range(info.count):
        free, total = module.mem_get_info(i)
        rows.append({
            "device": f"{info.kind}:{i}",
            "name": info.names[i] if i < len(info.names) else info.kind,
            "total_gib": round(total / gib, 2),
            "free_gib": round(free / gib, 2),
            "allocated_gib": round(module.memory_allocated(i) / gib, 3),
            "reserved_gib": round(module.memory_reserved(i) / gib, 3),
            "peak_allocated_gib": round(module.max_memory_allocated(i) / gib, 3),
        })
    return rows


def memory_usage(device: torch.device) -> dict[str, int | str]:
    """This process's memory on `device`, in bytes, as a worker group reports it to the registry
    (tasks.records.DeviceMemory): used / peak = what this process holds (the caching allocator's
    reserve on a GPU / NPU, resident memory on the CPU); free / total = the whole device.

    Only the process's own device is queried: asking about another GPU would create a context
    there (hundreds of MiB on a device another rank uses)."""
    if device.type == "cpu":
        meminfo, rss = _meminfo(), process_rss_bytes()
        # The kernel's high-water mark lags the current RSS by a page or so: never below it.
        return {"device": "cpu", "used_bytes": rss, "peak_bytes": max(rss, peak_rss_bytes()),
                "free_bytes": meminfo.get("MemAvailable", 0), "total_bytes": meminfo.get("MemTotal", 0)}
    module = torch.cuda if device.type == "cuda" else torch.npu  # type: ignore[attr-defined]
    index = device.index if device.index is not None else module.current_device()
    free, total = module.mem_get_info(index)
    return {"device": f"{device.type}:{index}", "used_bytes": int(module.memory_reserved(index)),
            "peak_bytes": int(module.max_memory_reserved(index)), "free_bytes": int(free), "total_bytes": int(total)}


def _meminfo() -> dict[str, int]:
    """/proc/meminfo in bytes (empty where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            return {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if len(line.split()) >= 2}
    except (OSError, ValueError):
        return {}


def process_rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def peak_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def empty_cache(info: DeviceInfo) -> None:
    """Give cached device memory back after a task (or an out-of-memory error)."""
    import gc

    gc.collect()
    if info.kind == "cuda":
        torch.cuda.empty_cache()
    elif info.kind == "npu":
        torch.npu.empty_cache()  # type: ignore[attr-defined]


def is_out_of_memory(error: BaseException) -> bool:
    if isinstance(error, torch.OutOfMemoryError):
        return True
    text = str(error)
    return "out of memory" in text.lower() or "NPU out of memory" in text
