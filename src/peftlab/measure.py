"""Cost measurements: parameters, bytes, memory, time, FLOPs/MFU and provenance.

Counts follow what a user pays for: a 4-bit weight is one parameter even though two of them share
a byte in storage, a soft prompt's virtual tokens are trainable parameters, and tied embeddings
count once.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
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


# ------------------------------------------------------------------------------- precision

#: CPU features that execute bf16 natively: AMX tiles (Sapphire Rapids and later Xeons) and the
#: AVX-512 bf16 dot products (Cooper Lake, Zen 4 and later); `bf16` is the Arm equivalent (Graviton 3,
#: Neoverse V1/V2). Without one of them torch emulates bf16 and a bf16 matmul is far slower than fp32.
NATIVE_BF16_FLAGS = {"amx_bf16": "AMX", "avx512_bf16": "AVX512-BF16", "bf16": "Arm BF16"}

DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return DTYPE_NAMES.get(dtype, str(dtype).replace("torch.", ""))


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The feature flags of this CPU (`/proc/cpuinfo`'s `flags` on x86, `Features` on Arm; empty elsewhere)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (`/proc/cpuinfo`), else what `platform` knows."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "cpu model", "hardware") and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_bf16_support(flags: set[str] | None = None) -> tuple[bool, str]:
    """(native bf16?, the feature that says so, or else the best vector unit the CPU has instead).

    Reads the hardware twice over: the flags the kernel reports (`flags`, for tests: a given set
    instead) and torch's own CPUID checks (`torch.cpu._is_amx_tile_supported`,
    `_is_avx512_bf16_supported`); either one is enough.
    """
    read = flags is None
    flags = cpu_flags() if read else flags
    for flag, label in NATIVE_BF16_FLAGS.items():
        if flag in flags:
            return True, label
    if read:
        for probe, label in (("_is_amx_tile_supported", "AMX"), ("_is_avx512_bf16_supported", "AVX512-BF16")):
            check = getattr(torch.cpu, probe, None)
            try:
                if callable(check) and check():
                    return True, label
            except RuntimeError:
                pass
    return False, torch.backends.cpu.get_cpu_capability()


@dataclass(frozen=True)
class Precision:
    """The arithmetic a run trains in, and why.

    `mixed_precision` is what accelerate is given (`no`, `bf16`, `fp16`: autocast on top of the
    weights' dtype); `dtype` is the dtype the matmuls run in (the autocast dtype, else the weights'),
    the one MFU is measured against; `reason` is the sentence result.json keeps.
    """

    mixed_precision: str
    dtype: str
    reason: str

    def record(self) -> dict[str, str]:
        return {"precision": self.dtype, "mixed_precision": self.mixed_precision, "precision_reason": self.reason}

    @property
    def torch_dtype(self) -> torch.dtype:
        return {name: dt for dt, name in DTYPE_NAMES.items()}.get(self.dtype, torch.float32)


def choose_precision(requested: str, device: str, weights: torch.dtype = torch.float32) -> Precision:
    """Resolve `train.mixed_precision` (`auto`, `no`, `bf16`, `fp16`) on `device` for weights in `weights`.

    `auto`: bf16 autocast on a GPU that supports bf16, and on a CPU that executes bf16 natively (AMX
    or AVX-512 bf16, `cpu_bf16_support`) once a short matmul probe (`peak_flops`, cached per
    machine) confirms bf16 is the faster dtype there; no autocast elsewhere (fp32, the reference).
    """
    weights_name = dtype_name(weights)
    if requested == "fp16" and device == "cpu":  # accelerate has no CPU fp16 autocast: it would train in fp32 silently
        return Precision("no", weights_name, f"{weights_name}: train.mixed_precision is fp16, which has no autocast on "
                                             f"CPU (accelerate), so the weights' dtype is used; bf16 is the CPU option")
    if requested in AUTOCAST_DTYPES:
        reason = f"{requested}: train.mixed_precision is {requested}"
        if device == "cpu" and requested == "bf16":
            native, feature = cpu_bf16_support()
            if not native:
                reason += f" (emulated: the CPU has no native bf16, only {feature}; expect it slower than fp32)"
        return Precision(requested, requested, reason)
    if requested == "no":
        return Precision("no", weights_name, f"{weights_name}: train.mixed_precision is no (the weights' dtype)")
    use_bf16, why = auto_bf16(device)
    if use_bf16:
        return Precision("bf16", "bf16", f"bf16: {why}")
    if weights_name != "fp32":
        why += f"; the weights are {weights_name} (model.dtype)"
    return Precision("no", weights_name, f"{weights_name}: {why}")


def auto_bf16(device: str) -> tuple[bool, str]:
    """Whether `mixed_precision: auto` trains in bf16 on `device`, and the reason in words."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        if torch.cuda.is_bf16_supported():
            return True, f"the GPU supports bf16 ({name})"
        return False, f"the GPU has no bf16 ({name})"
    if device != "cpu":
        return False, f"no mixed precision on device {device!r}"
    native, feature = cpu_bf16_support()
    if not native:
        return False, f"the CPU has no native bf16 ({feature})"
    bf16, fp32 = peak_flops("cpu", torch.bfloat16)[0], peak_flops("cpu", torch.float32)[0]
    if bf16 <= fp32:
        return False, (f"the CPU has {feature}, but a bf16 matmul measured no faster than fp32 here "
                       f"({bf16 / 1e12:.2f} vs {fp32 / 1e12:.2f} TFLOP/s)")
    return True, f"the CPU has {feature} (bf16 matmuls {bf16 / fp32:.1f}x fp32 here)"


def autocast_context(precision: Precision | str, device: str) -> contextlib.AbstractContextManager:
    """The autocast a run trained under (`Precision` or its `mixed_precision`), for evaluating it the same way."""
    mode = precision.mixed_precision if isinstance(precision, Precision) else precision
    if mode not in AUTOCAST_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type="cuda" if device == "cuda" else "cpu", dtype=AUTOCAST_DTYPES[mode])


# --------------------------------------------------------------------------- FLOPs and MFU

#: Dense peaks (FLOP/s) of common accelerators: (bf16/fp16 tensor cores, plain fp32). Datasheet
#: figures without sparsity; TF32 matmuls (when torch allows them) run at half the bf16 figure.
#: Longer names first, so "H100 PCIe" is not read as the SXM part.
GPU_PEAKS = {"H100 PCIe": (756e12, 51.2e12), "H100": (989e12, 66.9e12), "H200": (989e12, 66.9e12),
             "A100": (312e12, 19.5e12), "L40S": (362e12, 91.6e12), "A10": (125e12, 31.2e12),
             "L4": (121e12, 30.3e12), "4090": (165e12, 82.6e12), "V100": (125e12, 15.7e12), "T4": (65e12, 8.1e12)}
NO_BF16_GPUS = ("V100", "T4")  # fp16 tensor cores only: bf16 is emulated there
PEAK_CACHE_FILE = "peak_flops.json"


def peak_flops(device: str, dtype: torch.dtype, user_tflops: float | None = None) -> tuple[float, str]:
    """The peak MFU is measured against, for matmuls in `dtype`: (FLOP/s, where the figure comes from).

    The user's `train.peak_tflops`, else a known GPU's datasheet figure for the dtype, else the best
    measured rate of a matmul probe in that dtype on this machine (cached per machine, torch
    version, dtype and thread count in `<cache>/peak_flops.json`: probed once, then read).
    """
    if user_tflops:
        return user_tflops * 1e12, "user"
    name = dtype_name(dtype)
    if device == "cuda":
        gpu = torch.cuda.get_device_name()
        for key in sorted(GPU_PEAKS, key=len, reverse=True):
            if key in gpu and not (name == "bf16" and key in NO_BF16_GPUS):
                tensor, fp32 = GPU_PEAKS[key]
                if name != "fp32":
                    return tensor, f"table:{key} {name}"
                if torch.get_float32_matmul_precision() != "highest":  # TF32 allowed (allow_tf32 sets it too)
                    return tensor / 2, f"table:{key} tf32"
                return fp32, f"table:{key} fp32"
    return cached_peak(device, dtype)


def _peak_key(device: str, dtype: torch.dtype) -> str:
    where = torch.cuda.get_device_name() if device == "cuda" else f"{cpu_model()}|{torch.get_num_threads()} threads"
    return f"{device}|{where}|torch {torch.__version__}|{dtype_name(dtype)}"


_PROBED: dict[str, float] = {}


def cached_peak(device: str, dtype: torch.dtype) -> tuple[float, str]:
    """The best matmul rate in `dtype` ever measured on this machine (same torch and thread count).

    Each process probes once per dtype (`matmul_peak`, about 0.3 s) and keeps the maximum of that
    and every earlier probe in `<cache>/peak_flops.json`: a probe slowed by other load never lowers
    the peak, so MFU is not inflated by a busy moment.
    """
    from peftlab.files import atomic_write_text
    from peftlab.paths import cache_dir

    key = _peak_key(device, dtype)
    path = cache_dir() / PEAK_CACHE_FILE
    try:
        known = json.loads(path.read_text())
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    stored = float(entry["flops"]) if isinstance(entry, dict) and isinstance(entry.get("flops"), (int, float)) else 0.0
    if key not in _PROBED:
        _PROBED[key] = matmul_peak(device, dtype)
        if _PROBED[key] > stored:
            known[key] = {"flops": _PROBED[key], "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            try:
                atomic_write_text(path, json.dumps(known, indent=1, sort_keys=True))
            except OSError:
                pass  # a read-only cache only means this process's own probe is used
    best = max(stored, _PROBED[key])
    return best, f"probe:{dtype_name(dtype)}" + (" (cached best)" if stored >= _PROBED[key] else "")


def matmul_peak(device: str, dtype: torch.dtype, seconds: float = 0.3) -> float:
    """Best observed FLOP/s of a square matmul in `dtype` on `device` over about `seconds`.

    n = 8192 on a GPU, 1024 on a CPU, 256 for a dtype the CPU only emulates (bf16 without AMX or
    AVX-512 bf16: seconds per 1024-product); at least two timed products whatever the budget.
    """
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    n = 8192 if device == "cuda" else 1024
    if device == "cpu" and dtype != torch.float32 and not cpu_bf16_support()[0]:
        n = 256
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    torch.mm(a, b)  # warm-up: kernel selection, first touch of the output
    sync()
    best, timed, end = 0.0, 0, time.perf_counter() + seconds
    while timed < 2 or time.perf_counter() < end:
        t0 = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = max(best, 2 * n**3 / max(time.perf_counter() - t0, 1e-9))
        timed += 1
    return best


def training_cost(total_params: int, trainable_params: int, tokens: int, seconds: float, full: bool,
                  device: str, dtype: torch.dtype, user_tflops: float | None = None) -> dict[str, Any]:
    """FLOPs, the peak for the dtype the matmuls ran in, and MFU: the cost fields of a trained run."""
    flops = training_flops(total_params, trainable_params, tokens, full)
    peak, source = peak_flops(device, dtype, user_tflops)
    return {"train_flops": flops, "peak_flops": peak, "peak_flops_source": source, "peak_flops_dtype": dtype_name(dtype),
            "mfu": flops / seconds / peak if peak and seconds > 0 else None}


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
