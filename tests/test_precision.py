"""`mixed_precision: auto` follows the hardware, the choice and its reason are recorded, MFU uses the dtype's peak."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build_model, build_tokenizer

from peftlab import measure
from peftlab.config import TrainConfig
from peftlab.measure import Precision, autocast_context, choose_precision, cpu_bf16_support, cpu_flags, peak_flops
from peftlab.tasks.chat import build_messages, render
from peftlab.train import train

XEON_AMX = ("processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
            "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n")
ZEN4 = "model name\t: AMD EPYC 9654 96-Core Processor\nflags\t\t: fpu sse2 avx avx2 fma avx512f avx512_bf16\n"
ZEN2 = "model name\t: AMD EPYC 7B12\nflags\t\t: fpu sse2 avx avx2 fma sha_ni\n"
GRAVITON3 = "processor\t: 0\nFeatures\t: fp asimd evtstrm aes sve bf16 i8mm\nCPU implementer\t: 0x41\n"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Each test its own peak cache, and no probe remembered from an earlier test."""
    monkeypatch.setenv("PEFTLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(measure, "_PROBED", {})


@pytest.mark.parametrize("cpuinfo,native,feature", [
    (XEON_AMX, True, "AMX"), (ZEN4, True, "AVX512-BF16"), (GRAVITON3, True, "Arm BF16"), (ZEN2, False, None),
])
def test_native_bf16_is_read_from_the_cpu_flags(cpuinfo, native, feature):
    got, label = cpu_bf16_support(cpu_flags(cpuinfo))
    assert got is native
    if native:
        assert label == feature
    else:
        assert label == torch.backends.cpu.get_cpu_capability()  # the best unit there is, for the reason


def test_cpu_model_names_the_peak_cache_entry():
    assert measure.cpu_model(XEON_AMX) == "Intel(R) Xeon(R) Platinum 8480+"
    assert measure.cpu_model(ZEN2) == "AMD EPYC 7B12"
    assert measure.cpu_model(GRAVITON3)  # no model name line: platform's answer, never empty


def test_this_machine_is_read_consistently():
    """Whatever this machine is, the flags and torch's CPUID checks agree with the decision."""
    native, label = cpu_bf16_support()
    flags = cpu_flags()
    says_native = bool(flags & set(measure.NATIVE_BF16_FLAGS)) or any(
        getattr(torch.cpu, name, lambda: False)() for name in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"))
    assert native is says_native
    if not native:
        assert choose_precision("auto", "cpu").dtype == "fp32"


def _hardware(monkeypatch, native: bool, feature: str, bf16_tflops: float = 20.0, fp32_tflops: float = 5.0):
    monkeypatch.setattr(measure, "cpu_bf16_support", lambda flags=None: (native, feature))
    probes = []

    def probe(device, dtype, seconds=0.3):
        probes.append(dtype)
        return (bf16_tflops if dtype == torch.bfloat16 else fp32_tflops) * 1e12

    monkeypatch.setattr(measure, "matmul_peak", probe)
    return probes


def test_auto_picks_bf16_on_a_cpu_with_amx(monkeypatch):
    _hardware(monkeypatch, True, "AMX")
    p = choose_precision("auto", "cpu")
    assert (p.mixed_precision, p.dtype) == ("bf16", "bf16")
    assert p.reason == "bf16: the CPU has AMX (bf16 matmuls 4.0x fp32 here)"
    assert p.record() == {"precision": "bf16", "mixed_precision": "bf16", "precision_reason": p.reason}


def test_auto_picks_fp32_on_a_cpu_without_native_bf16(monkeypatch):
    probes = _hardware(monkeypatch, False, "AVX2")
    p = choose_precision("auto", "cpu")
    assert (p.mixed_precision, p.dtype, p.reason) == ("no", "fp32", "fp32: the CPU has no native bf16 (AVX2)")
    assert probes == []  # no probe needed: the hardware already said no


def test_auto_keeps_fp32_when_the_probe_finds_bf16_slower(monkeypatch):
    _hardware(monkeypatch, True, "AVX512-BF16", bf16_tflops=1.0, fp32_tflops=2.0)
    p = choose_precision("auto", "cpu")
    assert p.dtype == "fp32"
    assert "AVX512-BF16, but a bf16 matmul measured no faster than fp32 here (1.00 vs 2.00 TFLOP/s)" in p.reason


def test_explicit_choices_are_kept_and_explained(monkeypatch):
    _hardware(monkeypatch, False, "AVX2")
    assert choose_precision("no", "cpu") == Precision("no", "fp32", "fp32: train.mixed_precision is no (the weights' dtype)")
    forced = choose_precision("bf16", "cpu")
    assert forced.mixed_precision == "bf16" and "emulated: the CPU has no native bf16, only AVX2" in forced.reason
    assert choose_precision("no", "cpu", torch.bfloat16).dtype == "bf16"
    fp16 = choose_precision("fp16", "cpu")  # accelerate would accept it and silently train in fp32
    assert (fp16.mixed_precision, fp16.dtype) == ("no", "fp32") and "no autocast on CPU" in fp16.reason
    weights = choose_precision("auto", "cpu", torch.bfloat16)
    assert weights.mixed_precision == "no" and weights.dtype == "bf16" and "weights are bf16" in weights.reason


@pytest.mark.parametrize("bf16,expected", [(True, ("bf16", "bf16: the GPU supports bf16 (NVIDIA H200)")),
                                           (False, ("no", "fp32: the GPU has no bf16 (NVIDIA H200)"))])
def test_auto_on_a_gpu_follows_its_bf16_support(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "NVIDIA H200")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    p = choose_precision("auto", "cuda")
    assert (p.mixed_precision, p.reason) == expected


@pytest.mark.parametrize("gpu,dtype,tf32,peak,source", [
    ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989e12, "table:H100 bf16"),
    ("NVIDIA H100 PCIe", torch.bfloat16, False, 756e12, "table:H100 PCIe bf16"),
    ("NVIDIA H200", torch.float32, False, 66.9e12, "table:H200 fp32"),
    ("NVIDIA H200", torch.float32, True, 989e12 / 2, "table:H200 tf32"),
    ("NVIDIA A100-SXM4-80GB", torch.float16, False, 312e12, "table:A100 fp16"),
])
def test_gpu_peaks_follow_the_dtype(monkeypatch, gpu, dtype, tf32, peak, source):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: gpu)
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if tf32 else "highest")
    try:
        assert peak_flops("cuda", dtype) == (pytest.approx(peak), source)
    finally:
        torch.set_float32_matmul_precision(before)
    assert peak_flops("cuda", dtype, user_tflops=100.0) == (100e12, "user")


def test_unknown_gpu_or_bf16_on_a_t4_is_probed(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Tesla T4")
    monkeypatch.setattr(measure, "matmul_peak", lambda device, dtype, seconds=0.3: 9e12)
    assert peak_flops("cuda", torch.float16) == (65e12, "table:T4 fp16")
    assert peak_flops("cuda", torch.bfloat16) == (9e12, "probe:bf16")  # emulated there: no datasheet figure


def test_cpu_peak_is_cached_per_dtype_and_keeps_the_best(monkeypatch, tmp_path):
    rates = {torch.float32: 50e9, torch.bfloat16: 5e9}
    monkeypatch.setattr(measure, "matmul_peak", lambda device, dtype, seconds=0.3: rates[dtype])
    assert peak_flops("cpu", torch.float32) == (50e9, "probe:fp32")
    assert peak_flops("cpu", torch.bfloat16) == (5e9, "probe:bf16")
    path = tmp_path / "cache" / measure.PEAK_CACHE_FILE
    stored = json.loads(path.read_text())
    assert len(stored) == 2
    key = next(k for k in stored if k.endswith("|fp32"))
    assert f"{torch.get_num_threads()} threads" in key and torch.__version__ in key and measure.cpu_model() in key

    # a later process on a busy machine probes slower: the stored best stands
    monkeypatch.setattr(measure, "_PROBED", {})
    rates[torch.float32] = 20e9
    assert peak_flops("cpu", torch.float32) == (50e9, "probe:fp32 (cached best)")
    assert json.loads(path.read_text())[key]["flops"] == 50e9
    # ... and a faster probe raises it
    monkeypatch.setattr(measure, "_PROBED", {})
    rates[torch.float32] = 80e9
    assert peak_flops("cpu", torch.float32) == (80e9, "probe:fp32")
    assert json.loads(path.read_text())[key]["flops"] == 80e9


def test_unwritable_cache_still_gives_a_peak(monkeypatch, tmp_path):
    def refuse(path, text):
        raise OSError("read-only file system")

    monkeypatch.setattr("peftlab.files.atomic_write_text", refuse)
    monkeypatch.setattr(measure, "matmul_peak", lambda device, dtype, seconds=0.3: 7e9)
    assert peak_flops("cpu", torch.float32) == (7e9, "probe:fp32")


def test_the_real_probe_measures_something(one_thread):
    rate = measure.matmul_peak("cpu", torch.float32, seconds=0.05)
    assert 1e8 < rate < 1e14


def test_mfu_is_flops_over_time_over_the_peak_of_the_dtype(monkeypatch):
    monkeypatch.setattr(measure, "matmul_peak", lambda device, dtype, seconds=0.3: 2e12 if dtype == torch.bfloat16
                        else 1e12)
    cost = measure.training_cost(1000, 10, 500, 2.0, False, "cpu", torch.bfloat16)
    flops = (4 * 1000 + 2 * 10) * 500
    assert cost == {"train_flops": flops, "peak_flops": 2e12, "peak_flops_source": "probe:bf16",
                    "peak_flops_dtype": "bf16", "mfu": pytest.approx(flops / 2.0 / 2e12)}
    assert measure.training_cost(1000, 10, 500, 0.0, True, "cpu", torch.float32)["mfu"] is None


def test_autocast_context_runs_matmuls_in_the_chosen_dtype():
    a = torch.randn(4, 4)
    with autocast_context(Precision("bf16", "bf16", "test"), "cpu"):
        assert (a @ a).dtype == torch.bfloat16
    with autocast_context("no", "cpu"):
        assert (a @ a).dtype == torch.float32


@pytest.mark.parametrize("native", [True, False])
def test_training_runs_in_the_chosen_precision_and_records_it(monkeypatch, native, one_thread):
    """The decision reaches the loop: bf16 autocast (a Linear's output is bf16) with AMX, fp32 without."""
    _hardware(monkeypatch, native, "AMX" if native else "AVX2")
    tok = build_tokenizer()
    model = build_model("llama", len(tok))
    examples = [render(tok, build_messages("be brief", q, "yes"), 48) for q in ("a movie", "a film that is bad")] * 2
    seen = []
    model.lm_head.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    outcome = train(model, examples, [],
                    TrainConfig(max_steps=1, warmup_steps=0, batch_size=2, save_adapter=False), 0,
                    tok.pad_token_id, "cpu")
    record = outcome.record()
    if native:
        assert record["precision"] == "bf16" and record["mixed_precision"] == "bf16"
        assert record["precision_reason"].startswith("bf16: the CPU has AMX")
        assert seen[-1] == torch.bfloat16
    else:
        assert record == record | {"precision": "fp32", "mixed_precision": "no",
                                   "precision_reason": "fp32: the CPU has no native bf16 (AVX2)"}
        assert seen[-1] == torch.float32
    assert outcome.steps == 1 and outcome.curves["train_loss"]
