"""Cost measurements: parameters, bytes, memory, time, FLOPs/MFU and provenance.

Counts follow what a user pays for: a 4-bit weight is one parameter even though two of them share
a byte in storage, a soft prompt's virtual tokens are trainable parameters, and tied embeddings
count once.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import socket
import subprocess
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn


def param_numel(p: torch.Tensor) -> int:
    """Logical element count: bitsandbytes packs two 4-bit weights per uint8 element."""
    quant_state = getattr(p, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return int(torch.Size(quant_state.shape).numel())
    if p.__class__.__name__ == "Params4bit":
        return p.numel() * 2
    return p.numel()


def count_parameters(model: nn.Module) -> dict[str, float]:
    """Trainable, total and trainable % (shared tensors counted once)."""
    trainable = total = 0
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        n = param_numel(p)
        total += n
        if p.requires_grad:
            trainable += n
    pct = 100.0 * trainable / total if total else 0.0
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": pct}


def tensor_bytes(tensors: Any) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor)))


def directory_bytes(path: str | Path) -> int:
    path = Path(path)
    if not path.exists():
        return 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def rss_bytes() -> int:
    """Current resident set size of this process (Linux /proc; psutil elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import psutil

        return int(psutil.Process().memory_info().rss)


class PeakMemory:
    """Peak memory of one run: CUDA allocator peaks on a GPU, sampled RSS on CPU.

    The process-lifetime `ru_maxrss` cannot separate runs that share a process (a sweep), so a
    background thread samples RSS every few milliseconds between `start()` and `stop()`.
    """

    def __init__(self, device: str, interval_s: float = 0.02):
        self.device = device
        self.interval_s = interval_s
        self.peak_rss = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PeakMemory":
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.peak_rss = rss_bytes()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_rss = max(self.peak_rss, rss_bytes())

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_rss = max(self.peak_rss, rss_bytes())
        out: dict[str, Any] = {"peak_rss_bytes": self.peak_rss, "cuda_max_allocated_bytes": None,
                               "cuda_max_reserved_bytes": None}
        if self.device == "cuda":
            torch.cuda.synchronize()
            out["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated())
            out["cuda_max_reserved_bytes"] = int(torch.cuda.max_memory_reserved())
            out["peak_memory_bytes"] = out["cuda_max_allocated_bytes"]
            out["memory_kind"] = "cuda"
        else:
            out["peak_memory_bytes"] = self.peak_rss
            out["memory_kind"] = "rss"
        return out


def memory_breakdown(model: nn.Module, optimizer: torch.optim.Optimizer | None, peak: int) -> dict[str, int]:
    """Split the peak into weights, gradients, optimizer state and the rest (activations, runtime)."""
    seen: set[int] = set()
    weights = grads = 0
    for p in list(model.parameters()) + list(model.buffers()):
        if id(p) in seen:
            continue
        seen.add(id(p))
        weights += p.numel() * p.element_size()
        if isinstance(p, nn.Parameter) and p.requires_grad:
            grads += p.numel() * p.element_size()
    opt = 0
    if optimizer is not None:
        for state in optimizer.state.values():
            opt += tensor_bytes(state.values())
    return {"weights": weights, "gradients": grads, "optimizer": opt,
            "activations_and_other": max(0, peak - weights - grads - opt)}


def training_flops(total_params: int, trainable_params: int, tokens: int, full: bool) -> float:
    """Dense-transformer estimate (Kaplan et al.): forward 2N per token, backward 4N.

    With a frozen base the backward pass still propagates activation gradients through every
    layer (2N) but computes weight gradients only for trainable tensors (2·N_trainable), so a
    PEFT step costs about (4N + 2·N_trainable) per token instead of 6N.
    """
    if full:
        return 6.0 * total_params * tokens
    return (4.0 * total_params + 2.0 * trainable_params) * tokens


# Dense bf16 tensor-core peaks (FLOP/s) of common accelerators, for MFU.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12,
                 "L4": 121e12, "4090": 165e12, "V100": 125e12, "T4": 65e12}


def peak_flops(device: str, dtype: torch.dtype, user_tflops: float | None = None) -> tuple[float, str]:
    """The peak MFU is measured against: user's, known GPU table, or a quick CPU matmul probe."""
    if user_tflops:
        return user_tflops * 1e12, "user"
    if device == "cuda":
        name = torch.cuda.get_device_name()
        for key, value in GPU_PEAK_BF16.items():
            if key in name:
                factor = 0.5 if dtype == torch.float32 else 1.0  # TF32 peak is about half of bf16
                return value * factor, f"table:{key}"
        return 0.0, "unknown-gpu"
    return cpu_matmul_peak(dtype), "cpu-probe"


_CPU_PEAK: dict[torch.dtype, float] = {}


def cpu_matmul_peak(dtype: torch.dtype, n: int = 1024, seconds: float = 0.3) -> float:
    """Best observed FLOP/s of an n×n matmul on this CPU, cached per process."""
    if dtype in _CPU_PEAK:
        return _CPU_PEAK[dtype]
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    torch.mm(a, b)
    best = 0.0
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    _CPU_PEAK[dtype] = best
    return best


# --------------------------------------------------------------------------------- provenance

PACKAGES = ("peftlab", "torch", "transformers", "peft", "accelerate", "datasets", "bitsandbytes", "numpy")


def git_state(cwd: str | Path | None = None) -> dict[str, Any]:
    """Commit and dirty flag of the checkout peftlab runs from (None outside git)."""
    cwd = Path(cwd or Path(__file__).resolve().parent)
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd,
                                capture_output=True, text=True, timeout=5).stdout
        return {"git_commit": commit, "git_dirty": bool(status.strip()) if commit else None}
    except (OSError, subprocess.SubprocessError):
        return {"git_commit": None, "git_dirty": None}


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def hardware() -> dict[str, Any]:
    info: dict[str, Any] = {"platform": platform.platform(), "machine": platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_count"] = torch.cuda.device_count()
        info["cuda"] = torch.version.cuda
    return info


LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"  # beside pyproject.toml in a checkout


def lock_state(path: Path = LOCK_FILE) -> dict[str, Any]:
    """The environment lock behind a result: its SHA-256 and every installed package that differs from it.

    `lock_sha256` is None when peftlab runs outside a checkout (no lock file); `lock_mismatches`
    lists `{name, locked, installed}` for pinned packages installed at another version (or not
    at all), so a result produced on a drifted environment says so.
    """
    try:
        text = path.read_text()
    except OSError:
        return {"lock_sha256": None, "lock_mismatches": None}
    mismatches = []
    for name, locked in re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\;]+)", text, re.M):
        try:
            installed: str | None = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed != locked:
            mismatches.append({"name": name, "locked": locked, "installed": installed})
    return {"lock_sha256": hashlib.sha256(text.encode()).hexdigest(), "lock_mismatches": mismatches}


def provenance() -> dict[str, Any]:
    return {**git_state(), **lock_state(), "packages": package_versions(), "hardware": hardware(),
            "python": platform.python_version(), "hostname": socket.gethostname()}
