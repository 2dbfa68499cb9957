"""The hardware reference: what a GPU model or a CPU family can do at most, and the floor a
healthy one reaches on each probe, every figure with its source.

The figures live in bench/reference/gpus.json and bench/reference/cpus.json (schema
bench/schema/reference-v1.schema.json). A GPU peak is the datasheet's dense figure, never the
with-sparsity one. A floor of kind "dcgm" is NVIDIA DCGM's own per-SKU diagnostic target; a
floor of kind "rule" is a stated fraction of a datasheet figure and says so. A CPU peak is
computed here: usable cores x clock x FLOP per cycle of the family, with the text of how. A
figure no source gives is reported unknown, with the reason, never guessed.

Probe keys (floors, peaks): gemm_fp32, gemm_tf32, gemm_fp16, gemm_bf16, memory_bandwidth,
host_to_device, device_to_host, pcie_gen, pcie_width, and gemm_fp64 where DCGM's target is a
DGEMM.
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from functools import lru_cache
from pathlib import Path

from . import precisions

REFERENCE_DIR = Path(__file__).parent / "reference"
GPU_TABLE = REFERENCE_DIR / "gpus.json"
CPU_TABLE = REFERENCE_DIR / "cpus.json"
CPU_TABLE_NAME = "bench/reference/cpus.json"
GPU_TABLE_NAME = "bench/reference/gpus.json"

DEVICES = ("cpu", "gpu")
PROBE_KEYS = ("gemm_fp32", "gemm_tf32", "gemm_fp16", "gemm_bf16", "memory_bandwidth",
              "host_to_device", "device_to_host", "pcie_gen", "pcie_width")
CPU_PRECISIONS = ("fp32", "fp64", "bf16")

# The matmul peak each run precision (bench/precisions.py) can reach.
GPU_PEAK_KEY = {"fp32": "gemm_fp32", "tf32": "gemm_tf32", "amp-fp16": "gemm_fp16", "amp-bf16": "gemm_bf16"}
CPU_PEAK_PRECISION = {"fp32": "fp32", "amp-bf16": "bf16"}
CPU_NO_PEAK = {"tf32": "tf32 is a GPU tensor-core mode (bench/precisions.py): a CPU has no tf32 peak",
               "amp-fp16": "amp-fp16 runs on GPUs only (bench/precisions.py): a CPU has no fp16 peak"}

# PCIe transfer rate per lane (GT/s) and line encoding, generations 3-5 (the table's pcie-spec source).
PCIE_LANE_RATE = {3: 8.0e9, 4: 16.0e9, 5: 32.0e9}
PCIE_ENCODING = 128 / 130

_PROC_CPUINFO = Path("/proc/cpuinfo")


# ---------------------------------------------------------------------------------------------
# The tables


@lru_cache(maxsize=None)
def _table(path: Path) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable reference table ({exc})") from None
    if not isinstance(doc, dict) or "sources" not in doc:
        raise ValueError(f"{path}: not a reference table (no 'sources')")
    return doc


def gpu_table() -> dict:
    return _table(GPU_TABLE)


def cpu_table() -> dict:
    return _table(CPU_TABLE)


def source_text(doc: dict, ids, sku_name: str | None = None) -> str:
    """Source ids ('a100-ds', 'dcgm-skus:20b2') as 'document <url>' texts joined by '; '."""
    if isinstance(ids, str):
        ids = [ids]
    texts = []
    for sid in ids:
        base, _, sku = sid.partition(":")
        src = doc["sources"][base]
        text = src["document"]
        if sku:
            text += f", SKU {sku}" + (f" '{sku_name}'" if sku_name else "")
        texts.append(f"{text} <{src['url']}>")
    return "; ".join(texts)


# ---------------------------------------------------------------------------------------------
# GPUs


def _name_key(name: str) -> str:
    # NVML names differ only in case, spacing and a leading "NVIDIA " between drivers.
    key = " ".join(name.split()).casefold()
    return key[len("nvidia "):] if key.startswith("nvidia ") else key


def normalize_pci_device_id(value) -> str:
    """'0x20B2', '20b2', '10de:20b2' or NVML's pciDeviceId '0x20B210DE' -> '0x20B2'."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = f"{value:x}"
        if len(value) == 8:
            value = "0x" + value
    if not isinstance(value, str):
        raise ValueError(f"a PCI device id is text such as '0x20B2', not {value!r}")
    text = value.strip().lower()
    if ":" in text:
        vendor, _, text = text.partition(":")
        if vendor != "10de":
            raise ValueError(f"{value!r} is not an NVIDIA PCI id (vendor {vendor}, NVIDIA's is 10de)")
    if text.startswith("0x"):
        text = text[2:]
    if re.fullmatch(r"[0-9a-f]{8}", text):
        if not text.endswith("10de"):  # NVML packs the device id above the vendor id
            raise ValueError(f"{value!r} is not an NVIDIA PCI id (NVML's form ends in 10DE, NVIDIA's vendor id)")
        text = text[:4]
    if not re.fullmatch(r"[0-9a-f]{4}", text):
        raise ValueError(f"{value!r} is not a PCI device id (expected e.g. 0x20B2, 20B2 or NVML's 0x20B210DE)")
    return "0x" + text.upper()


def gpu_reference(name: str | None, pci_device_id: str | None = None) -> dict | None:
    """The gpus.json row for a GPU, by its NVML name or its PCI device id (the id wins when both
    match different rows: it is the hardware's own), or None when neither is in the table.
    The row is a copy, with "matched_by": "pci_device_id" or "name"."""
    if name is not None and not isinstance(name, str):
        raise ValueError(f"a GPU name is text such as 'NVIDIA A100-SXM4-80GB', not {name!r}")
    if (name is None or not name.strip()) and pci_device_id is None:
        raise ValueError("gpu_reference needs a GPU name or a PCI device id")
    rows = gpu_table()["gpus"]
    if pci_device_id is not None:
        pid = normalize_pci_device_id(pci_device_id)
        for row in rows:
            if pid in row["pci_device_ids"]:
                return dict(copy.deepcopy(row), matched_by="pci_device_id")
    if name is not None and name.strip():
        key = _name_key(name)
        for row in rows:
            if any(_name_key(n) == key for n in row["nvml_names"]):
                return dict(copy.deepcopy(row), matched_by="name")
    return None


def pcie_link_rate(gen: int, width: int) -> float | None:
    """Raw bytes/s one direction of a PCIe link carries (transfer rate x lanes x encoding / 8)."""
    rate = PCIE_LANE_RATE.get(gen)
    if rate is None or width < 1:
        return None
    return rate * width * PCIE_ENCODING / 8


def _check_device(device) -> None:
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; use one of {', '.join(DEVICES)}")


def _gpu_row(device_name, pci_device_id):
    if (device_name is None or (isinstance(device_name, str) and not device_name.strip())) \
            and pci_device_id is None:
        return None
    return gpu_reference(device_name, pci_device_id)


def floors(device: str, device_name: str | None, pci_device_id: str | None = None) -> dict:
    """Probe key -> {"floor", "unit", "source", "rule", "kind"} for a GPU model in the table.
    Missing keys: no floor known. A CPU has none (no vendor publishes one; a computed peak is
    not a floor)."""
    _check_device(device)
    if device == "cpu":
        return {}
    row = _gpu_row(device_name, pci_device_id)
    if row is None:
        return {}
    doc = gpu_table()
    sku_name = (row.get("dcgm_sku") or {}).get("name")
    return {key: {"floor": f["floor"], "unit": f["unit"], "source": source_text(doc, f["source"], sku_name),
                  "rule": f["rule"], "kind": f["kind"]}
            for key, f in row["floors"].items()}


def peaks(device: str, device_name: str | None, pci_device_id: str | None = None) -> dict:
    """Probe key -> {"value", "unit", "source"}: a GPU's datasheet figures (host_to_device and
    device_to_host from its PCIe link); a CPU's computed matmul peaks (this machine's)."""
    _check_device(device)
    if device == "cpu":
        out = {}
        for prec, value in cpu_peak().items():
            if value.get("flops_per_s") is not None:
                out[f"gemm_{prec}"] = {"value": value["flops_per_s"], "unit": "flops_per_s", "source": value["how"]}
        return out
    row = _gpu_row(device_name, pci_device_id)
    if row is None:
        return {}
    doc = gpu_table()
    out = {key: {"value": p["value"], "unit": p["unit"],
                 "source": f"{p['datasheet']} - {source_text(doc, p['source'])}"}
           for key, p in row["peaks"].items()}
    if "pcie_gen" in row["peaks"] and "pcie_width" in row["peaks"]:
        gen, width = int(row["peaks"]["pcie_gen"]["value"]), int(row["peaks"]["pcie_width"]["value"])
        rate = pcie_link_rate(gen, width)
        if rate is not None:
            text = (f"PCIe Gen{gen} x{width} raw rate per direction ({PCIE_LANE_RATE[gen] / 1e9:g} GT/s x {width} "
                    f"lanes x 128/130 / 8) - {source_text(doc, ['pcie-spec', row['peaks']['pcie_gen']['source']])}")
            for key in ("host_to_device", "device_to_host"):
                out[key] = {"value": rate, "unit": "bytes_per_s", "source": text}
    return out


# ---------------------------------------------------------------------------------------------
# CPUs


def _parse_cpuinfo(text: str) -> list:
    """/proc/cpuinfo as one dict per processor block."""
    blocks, cur = [], {}
    for line in text.splitlines():
        if not line.strip():
            if cur:
                blocks.append(cur)
                cur = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            cur[key.strip()] = value.strip()
    if cur:
        blocks.append(cur)
    return [b for b in blocks if "processor" in b or "vendor_id" in b]


def _int(value, base: int = 10):
    try:
        return int(str(value).strip(), base)
    except (TypeError, ValueError):
        return None


def _simd(flags) -> tuple:
    for flag, bits in (("avx512f", 512), ("avx2", 256), ("avx", 256), ("sse2", 128), ("asimd", 128)):
        if flag in flags:
            return bits, flag
    return None, None


def cpu_info(cpuinfo_text: str | None = None, cpu_count: int | None = None,
             max_mhz: float | None = None) -> dict:
    """This machine's CPU as the peak needs it: vendor, family, model, flags, the cores this
    process may use and the clock, each with where it came from.

    cpuinfo_text replaces /proc/cpuinfo: all its processors count as usable, and neither the
    affinity mask nor psutil is asked (the text may describe another machine); cpu_count
    replaces the core count, max_mhz the clock."""
    if cpuinfo_text is not None and not isinstance(cpuinfo_text, str):
        raise ValueError(f"cpuinfo_text is the text of /proc/cpuinfo, not {type(cpuinfo_text).__name__}")
    if cpu_count is not None and (isinstance(cpu_count, bool) or not isinstance(cpu_count, int) or cpu_count < 1):
        raise ValueError(f"cpu_count is a whole number of cores, 1 or more, not {cpu_count!r}")
    if max_mhz is not None:
        if isinstance(max_mhz, bool) or not isinstance(max_mhz, (int, float)) \
                or not math.isfinite(max_mhz) or max_mhz <= 0:
            raise ValueError(f"max_mhz is a clock in MHz, more than 0, not {max_mhz!r}")
    given_text = cpuinfo_text is not None
    if not given_text:
        try:
            cpuinfo_text = _PROC_CPUINFO.read_text(errors="replace")
        except OSError:
            cpuinfo_text = ""
    blocks = _parse_cpuinfo(cpuinfo_text)

    # The CPUs this process may run on; a given text (maybe another machine's) counts whole.
    allowed = None
    if not given_text:
        try:
            allowed = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            allowed = None
    usable = blocks
    if allowed is not None and blocks:
        usable = [b for b in blocks if _int(b.get("processor")) in allowed]
    first = usable[0] if usable else (blocks[0] if blocks else {})

    if usable or given_text:
        logical = len(usable)
    else:  # no /proc/cpuinfo (not Linux): count what the OS says
        logical = len(allowed) if allowed else (os.cpu_count() or 0)
    core_ids = {(b.get("physical id"), b.get("core id")) for b in usable}
    if cpu_count is not None:
        cores, cores_how = cpu_count, f"{cpu_count} cores (given)"
    elif usable and all(b.get("core id") is not None for b in usable):
        cores = len(core_ids)
        cores_how = (f"{cores} physical cores among the {logical} CPUs this process may use "
                     "(os.sched_getaffinity, /proc/cpuinfo core ids)")
    elif logical:
        cores = logical
        cores_how = f"{logical} logical CPUs this process may use (no core ids in /proc/cpuinfo to merge SMT siblings)"
    else:
        cores, cores_how = None, "no CPUs found in /proc/cpuinfo"

    hz, hz_source, hz_is_max = None, None, False
    if max_mhz is not None:
        hz, hz_source, hz_is_max = float(max_mhz) * 1e6, f"{max_mhz:g} MHz (given)", True
    if hz is None and not given_text:
        try:
            import psutil

            freq = psutil.cpu_freq()
        except Exception:  # psutil absent or no frequency interface: /proc/cpuinfo below
            freq = None
        if freq is not None and freq.max and freq.max > 0:
            hz, hz_source, hz_is_max = freq.max * 1e6, "psutil.cpu_freq().max (the cpufreq maximum)", True
    if hz is None:
        mhz = [m for m in (_float(b.get("cpu MHz")) for b in usable) if m]
        if mhz:
            hz = max(mhz) * 1e6
            hz_source = ("/proc/cpuinfo 'cpu MHz': the clock the kernel reports now, not a maximum "
                         "(no cpufreq maximum is exposed here)")

    flags = sorted(set(first.get("flags", first.get("Features", "")).split()))
    bits, simd_flag = _simd(flags)
    return {
        "vendor_id": first.get("vendor_id"),
        "family": _int(first.get("cpu family")),
        "model": _int(first.get("model")),
        "model_name": first.get("model name"),
        "flags": flags,
        "cores": cores,
        "cores_how": cores_how,
        "logical_cpus": logical,
        "hz": hz,
        "hz_source": hz_source,
        "hz_is_max": hz_is_max,
        "simd_width_bits": bits,
        "simd_flag": simd_flag,
    }


def _float(value):
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) and out > 0 else None


def _model_ranges(specs) -> list:
    out = []
    for spec in specs:
        lo, _, hi = spec.partition("-")
        out.append((int(lo, 16), int(hi or lo, 16)))
    return out


def cpu_family(info: dict) -> dict | None:
    """The cpus.json family of a cpu_info() dict, or None."""
    for fam in cpu_table()["families"]:
        if fam["vendor_id"] != info.get("vendor_id") or fam["cpu_family"] != info.get("family"):
            continue
        model = info.get("model")
        if model is not None and any(lo <= model <= hi for lo, hi in _model_ranges(fam["models"])):
            return fam
    return None


_CPU_INFO_KEYS = ("vendor_id", "family", "model", "flags", "cores", "cores_how", "hz", "hz_source", "hz_is_max")


def cpu_peak(info: dict | None = None) -> dict:
    """{"fp32": {"flops_per_s": float, "how": "2 cores x 2.596 GHz x 32 FLOP/cycle (...)"},
    "fp64": ..., "bf16": ...} for the cores this process may use; a precision with no sourced
    figure is {"flops_per_s": None, "unknown": reason}."""
    if info is None:
        info = cpu_info()
    if not isinstance(info, dict) or any(k not in info for k in _CPU_INFO_KEYS):
        missing = [k for k in _CPU_INFO_KEYS if not isinstance(info, dict) or k not in info]
        raise ValueError("cpu_peak takes a cpu_info() dict; missing " + ", ".join(missing))
    fam = cpu_family(info)
    if fam is None:
        if info.get("vendor_id") is None:
            why = f"no vendor_id in /proc/cpuinfo (not an x86 Linux machine?), so no family in {CPU_TABLE_NAME}"
        else:
            why = (f"{info['vendor_id']} family {info.get('family')} model {info.get('model')} "
                   f"is not in {CPU_TABLE_NAME}")
        return {p: {"flops_per_s": None, "unknown": why} for p in CPU_PRECISIONS}
    doc = cpu_table()
    flags = set(info.get("flags") or ())
    out = {}
    for prec in CPU_PRECISIONS:
        fig = fam["flop_per_cycle"][prec]
        if "unknown" in fig:
            out[prec] = {"flops_per_s": None, "unknown": f"{fam['name']}: {fig['unknown']}"}
            continue
        missing = [f for f in fig["requires_flags"] if f not in flags]
        if missing:
            out[prec] = {"flops_per_s": None, "unknown": (
                f"{fam['name']}: the {fig['value']:g} FLOP/cycle figure needs {', '.join(missing)}, which "
                "/proc/cpuinfo does not list (masked by a hypervisor?)")}
            continue
        if not info.get("cores"):
            out[prec] = {"flops_per_s": None, "unknown": f"no usable core count ({info.get('cores_how')})"}
            continue
        if not info.get("hz"):
            out[prec] = {"flops_per_s": None, "unknown": "no clock frequency known (no cpufreq, no 'cpu MHz')"}
            continue
        value = info["cores"] * info["hz"] * fig["value"]
        how = (f"{info['cores']} cores x {info['hz'] / 1e9:.3f} GHz x {fig['value']:g} FLOP/cycle "
               f"({fam['name']}: {fig['how']}; source {source_text(doc, fig['source'])}; "
               f"cores: {info['cores_how']}; clock: {info['hz_source']})")
        if not info.get("hz_is_max"):
            # A clock read now is no ceiling: a boost clock runs faster (this VM's GEMM measured
            # 109-123 % of the figure at its reported 2.596 GHz), so the figure is no peak.
            out[prec] = {"flops_per_s": None, "at_reported_clock": value,
                         "unknown": f"the CPU reports no maximum clock, so no peak: {value / 1e9:.1f} GFLOP/s at the "
                                    f"clock it reports now, {how}"}
            continue
        out[prec] = {"flops_per_s": value, "how": how}
    return out


# ---------------------------------------------------------------------------------------------
# The peak a run's matmuls can reach


def peak_flops(device: str, device_name: str | None, precision: str, env: dict | None = None) -> tuple:
    """(peak FLOP/s the run precision's matmuls can reach, or None; the source, or why unknown).

    fp32 -> the fp32 CUDA-core / CPU FMA peak; tf32 -> the TF32 tensor peak; amp-fp16 -> the
    dense FP16 tensor peak; amp-bf16 -> the dense BF16 tensor peak or the CPU's bf16 peak.
    On a CPU the peak is this machine's, unless env (a run's record) carries "cpu_peak" (a
    cpu_peak() dict) or "cpu_info" (a cpu_info() dict); a run recorded on another CPU (its
    device name, env "cpu" or "cpu_count" differ from this machine's) is unknown."""
    _check_device(device)
    precisions.check_name(precision)
    if env is not None and not isinstance(env, dict):
        raise ValueError(f"env is a run's environment record (a dict), not {type(env).__name__}")
    env = env or {}
    if device == "gpu":
        return _gpu_peak(device_name or env.get("gpu"), precision)
    return _cpu_peak_for(device_name, precision, env)


def _gpu_peak(name, precision):
    if not name:
        return None, "no GPU name to look the peak up by"
    row = gpu_reference(name)
    if row is None:
        return None, f"{name!r} is not in {GPU_TABLE_NAME}"
    key = GPU_PEAK_KEY[precision]
    p = row["peaks"].get(key)
    if p is None:
        why = f"no datasheet {key[5:].upper()} peak for the {row['model']} in {GPU_TABLE_NAME}"
        if row.get("note"):
            why += f" ({row['note']})"
        return None, why
    return float(p["value"]), f"{row['model']}: {p['datasheet']} - {source_text(gpu_table(), p['source'])}"


def _cpu_peak_for(device_name, precision, env):
    if precision in CPU_NO_PEAK:
        return None, CPU_NO_PEAK[precision]
    prec = CPU_PEAK_PRECISION[precision]
    peak = None
    if isinstance(env.get("cpu_peak"), dict):
        peak = env["cpu_peak"]
    elif isinstance(env.get("cpu_info"), dict):
        peak = cpu_peak(env["cpu_info"])
    else:
        here = _this_cpu_name()
        for label, there in (("device name", device_name), ("env cpu", env.get("cpu"))):
            if there and here and there != here:
                return None, (f"the run's CPU ({label} {there!r}) is not this machine's ({here!r}) and its "
                              "record carries no cpu_info or cpu_peak")
        count = env.get("cpu_count")
        if isinstance(count, int) and not isinstance(count, bool) and count != os.cpu_count():
            return None, (f"the run's machine had {count} CPUs, this one {os.cpu_count()}; its record "
                          "carries no cpu_info or cpu_peak")
        peak = cpu_peak()
    value = peak.get(prec) if isinstance(peak, dict) else None
    if not isinstance(value, dict):
        return None, f"no {prec} entry in the CPU peak"
    if value.get("flops_per_s") is None:
        return None, str(value.get("unknown") or f"no {prec} peak")
    return float(value["flops_per_s"]), str(value.get("how"))


def _this_cpu_name():
    try:
        from . import envinfo

        return envinfo.cpu_model()
    except Exception:  # a name to compare is a nicety; without it the comparison is skipped
        return None
