"""The array libraries the probes run on, behind one small interface (Backend).

CPU: NumPy (a bf16 GEMM through PyTorch where this Python has it and the CPU has bf16
instructions). GPU: PyTorch or CuPy, whichever imports and sees a GPU. A probe asks the backend
for an operation (a callable doing one unit of work on operands the backend allocated) and for
the time of N calls as the device measures it; the tests substitute a fake backend.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20
# One pinned buffer or device array never takes more than this share of the free memory.
MEMORY_SHARE = 8


class Unsupported(Exception):
    """This backend cannot run the operation on this device; the message says why (-> skipped)."""


class NoDevice(RuntimeError):
    """The device asked for is absent (exit 3; never a fallback to the CPU)."""


class NoLibrary(RuntimeError):
    """A GPU is there but this Python has no array library for it (exit 2)."""


class ProbeFailed(RuntimeError):
    """A measurement that ran but gave no usable figure."""


class Backend:
    """What the probes need of an array library. `op` callables take no arguments."""

    device = "cpu"
    element_bytes = 8          # of the triad's arrays

    def library(self) -> dict:
        """{"name", "version", "blas"} of the library the GEMM and triad run on."""
        raise NotImplementedError

    def identity(self) -> dict:
        """{"device_name": str, "pci_device_id": str|None, "nvml_index": int|None}."""
        raise NotImplementedError

    def gemm(self, n: int, precision: str):
        """(op, text): op computes one n x n by n x n product in precision; raises Unsupported."""
        raise NotImplementedError

    def triad(self, elements: int):
        """(op, text): op computes a = b + s * c once over arrays of `elements` items (and
        may return a)."""
        raise NotImplementedError

    def host_copy(self, nbytes: int, direction: str):
        """(op, text): op copies nbytes between pinned host memory and the device;
        direction is "host_to_device" or "device_to_host"."""
        raise Unsupported("host-device copies need a GPU")

    def time(self, op, calls: int) -> float:
        """Seconds for `calls` calls of op, as the device measures them."""
        raise NotImplementedError

    def free_bytes(self) -> int | None:
        return None

    def last_level_cache_bytes(self) -> int | None:
        return None

    def pcie_link(self) -> dict | None:
        """{"gen", "gen_max", "width", "width_max"} of the GPU's link, or None (no NVML)."""
        return None

    def release(self) -> None:
        """Free what the last operation allocated and restore the settings it changed."""


def best_of(backend: Backend, op, work: float, repeats: int, min_repeat_s: float,
            max_calls: int = 100_000) -> tuple:
    """(rates, calls per repeat): one untimed warm-up call (library set-up, page faults, clocks
    ramping up), one timed call to size a repeat to at least min_repeat_s, then `repeats`
    timed repeats, each giving work x calls / seconds."""
    op()
    one = backend.time(op, 1)
    if not (isinstance(one, (int, float)) and math.isfinite(one) and one >= 0):
        raise ProbeFailed(f"the timer gave {one!r} s for one call")
    calls = 1 if one >= min_repeat_s else min(max_calls, math.ceil(min_repeat_s / max(one, 1e-9)))
    rates = []
    for _ in range(repeats):
        seconds = backend.time(op, calls)
        if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
            raise ProbeFailed(f"the timer gave {seconds!r} s for {calls} calls: no rate can come of it")
        rates.append(work * calls / seconds)
    return rates, calls


# ---------------------------------------------------------------- host facts

def usable_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cpu_flags() -> set:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def last_level_cache_bytes(root: Path = Path("/sys/devices/system/cpu")) -> int | None:
    """The sum of every distinct last-level cache the usable cores share (STREAM sizes its
    arrays against the total of the caches, not one core's share)."""
    seen, total = set(), 0
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = range(os.cpu_count() or 1)
    for cpu in cpus:
        caches = sorted((root / f"cpu{cpu}" / "cache").glob("index*"))
        if not caches:
            continue
        last = caches[-1]
        try:
            shared = (last / "shared_cpu_list").read_text().strip()
            size = (last / "size").read_text().strip()
        except OSError:
            continue
        if shared in seen:
            continue
        seen.add(shared)
        units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
        try:
            total += int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
        except ValueError:
            continue
    return total or None


def host_available_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _bus_id_key(text: str):
    """'00000000:3B:00.0' and '0000:3b:00.0' -> (0, 0x3b, 0): domain, bus, device."""
    try:
        domain, bus, rest = str(text).strip().split(":")
        return int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
    except ValueError:
        return None


def nvidia_smi_identity(bus_id: str | None) -> dict:
    """The NVML index and PCI device id of the GPU at bus_id, from nvidia-smi (its index is
    NVML's, which CUDA's order and CUDA_VISIBLE_DEVICES need not follow); {} if unknown."""
    key = _bus_id_key(bus_id) if bus_id else None
    if key is None:
        return {}
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index,pci.bus_id,pci.device_id",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    for line in out.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and _bus_id_key(parts[1]) == key:
            try:
                index, combined = int(parts[0]), int(parts[2], 16)
            except ValueError:
                return {}
            # nvidia-smi gives device << 16 | vendor (0x233010DE); the reference table the device.
            device = combined >> 16 if combined > 0xFFFF else combined
            return {"nvml_index": index, "pci_device_id": f"0x{device:04X}"}
    return {}


def _nvml_pcie(index: int | None) -> dict | None:
    """The link of NVML's GPU index; without one, of the GPU CUDA_VISIBLE_DEVICES makes CUDA's 0."""
    try:
        from bench import nvml
    except ImportError:  # no bench/nvml.py: no NVML
        return None
    if index is not None:
        return nvml.pcie_link(index)
    try:
        device = nvml.open_device()
    except nvml.NvmlUnavailable:
        return None
    try:
        return device.pcie()
    finally:
        device.close()


# ---------------------------------------------------------------- CPU: NumPy

TRIAD_SCALAR = 3.0
# The triad runs in chunks this long so that a's chunk is still in cache when the second
# ufunc reads it back: main memory then sees STREAM's traffic (read b and c, write a).
TRIAD_CHUNK = 32768


class NumpyBackend(Backend):
    device = "cpu"
    element_bytes = 8

    def __init__(self):
        import numpy

        self.np = numpy
        self._pool = None

    def library(self) -> dict:
        return {"name": "numpy", "version": self.np.__version__, "blas": _numpy_blas(self.np)}

    def identity(self) -> dict:
        from bench import envinfo

        return {"device_name": envinfo.cpu_model(), "pci_device_id": None, "nvml_index": None}

    def gemm(self, n: int, precision: str):
        np = self.np
        if precision == "fp32":
            rng = np.random.default_rng(0)
            a = rng.standard_normal((n, n), dtype=np.float32)
            b = rng.standard_normal((n, n), dtype=np.float32)
            c = np.empty((n, n), dtype=np.float32)
            lib = self.library()
            return (lambda: np.matmul(a, b, out=c)), f"numpy {lib['version']} matmul ({lib['blas'] or 'BLAS unknown'})"
        if precision == "bf16":
            return _torch_cpu_bf16_gemm(n)
        if precision == "tf32":
            raise Unsupported("tf32 is a tensor-core format of NVIDIA GPUs; no CPU has it")
        if precision == "fp16":
            raise Unsupported("numpy's float16 matmul is a plain loop, not a BLAS kernel: "
                              "its speed is no hardware ceiling")
        raise Unsupported(f"no {precision} GEMM on a CPU")

    def triad(self, elements: int):
        np = self.np
        a = np.zeros(elements)
        b = np.full(elements, 1.0)
        c = np.full(elements, 2.0)
        cores = usable_cores()
        # One contiguous slice per core; ufuncs release the GIL, so the threads stream in parallel.
        step = -(-elements // cores)
        parts = [(lo, min(lo + step, elements)) for lo in range(0, elements, step)]

        def part(lo, hi):
            for i in range(lo, hi, TRIAD_CHUNK):
                j = min(i + TRIAD_CHUNK, hi)
                np.multiply(c[i:j], TRIAD_SCALAR, out=a[i:j])
                np.add(a[i:j], b[i:j], out=a[i:j])

        if len(parts) == 1:
            def op():
                part(0, elements)
                return a
        else:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(max_workers=len(parts))
            pool = self._pool

            def op():
                for future in [pool.submit(part, lo, hi) for lo, hi in parts]:
                    future.result()
                return a
        return op, (f"numpy {np.__version__} float64 a = b + {TRIAD_SCALAR:g} * c in "
                    f"{TRIAD_CHUNK}-element chunks, {len(parts)} thread(s)")

    def time(self, op, calls: int) -> float:
        start = time.perf_counter()
        for _ in range(calls):
            op()
        return time.perf_counter() - start

    def free_bytes(self) -> int | None:
        return host_available_bytes()

    def last_level_cache_bytes(self) -> int | None:
        return last_level_cache_bytes()

    def release(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _numpy_blas(np) -> str | None:
    try:
        config = np.show_config(mode="dicts")  # numpy >= 1.25
        blas = config["Build Dependencies"]["blas"]
        return f"{blas['name']} {blas.get('version', '')}".strip()
    except Exception:  # older numpy prints instead; the BLAS name is then unknown
        return None


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX-512/AMX, Arm "bf16" feature


def _torch_cpu_bf16_gemm(n: int):
    """A bf16 GEMM on the CPU through PyTorch's oneDNN, only on a CPU with bf16 instructions
    (elsewhere it would convert to fp32: an emulation, no ceiling)."""
    try:
        import torch
    except ImportError:
        raise Unsupported(f"numpy has no bfloat16 and torch is not importable in {sys.executable}") from None
    flags = cpu_flags()
    if not any(f in flags for f in BF16_FLAGS):
        raise Unsupported("this CPU has no bf16 instructions (" + ", ".join(BF16_FLAGS) + "): a bf16 "
                          "GEMM would be emulated in fp32, not a ceiling")
    check = getattr(getattr(torch.ops, "mkldnn", None), "_is_mkldnn_bf16_supported", None)
    if not torch.backends.mkldnn.is_available() or check is None or not check():
        raise Unsupported(f"torch {torch.__version__} has no oneDNN bf16 path on this CPU")
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(torch.bfloat16)
    b = torch.randn(n, n, generator=gen).to(torch.bfloat16)
    c = torch.empty(n, n, dtype=torch.bfloat16)
    return ((lambda: torch.matmul(a, b, out=c)),
            f"torch {torch.__version__} matmul, bfloat16 (oneDNN), {torch.get_num_threads()} thread(s)")


# ---------------------------------------------------------------- GPU: PyTorch

TF32_OVERRIDE = "NVIDIA_TF32_OVERRIDE"


def _tf32_forbidden() -> str | None:
    if os.environ.get(TF32_OVERRIDE) == "0":
        return f"{TF32_OVERRIDE}=0 in the environment forbids TF32 in cuBLAS"
    return None


class TorchBackend(Backend):
    """The first GPU PyTorch sees (cuda:0, after CUDA_VISIBLE_DEVICES)."""

    device = "gpu"
    element_bytes = 4

    def __init__(self, torch):
        self.torch = torch
        self.dev = torch.device("cuda", 0)
        self.props = torch.cuda.get_device_properties(0)
        self._saved_tf32 = torch.backends.cuda.matmul.allow_tf32
        self._ident = None

    def library(self) -> dict:
        t = self.torch
        return {"name": "torch", "version": t.__version__,
                "blas": f"cuBLAS (CUDA {t.version.cuda})" if t.version.cuda else f"HIP {t.version.hip}"}

    def identity(self) -> dict:
        if self._ident is None:
            p = self.props
            bus = None
            if hasattr(p, "pci_bus_id"):
                bus = f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0"
            found = nvidia_smi_identity(bus)
            self._ident = {"device_name": p.name, "pci_device_id": found.get("pci_device_id"),
                           "nvml_index": found.get("nvml_index")}
        return self._ident

    def _capability(self) -> tuple:
        return (self.props.major, self.props.minor)

    def gemm(self, n: int, precision: str):
        t = self.torch
        cc = self._capability()
        dtype = {"fp32": t.float32, "tf32": t.float32, "fp16": t.float16, "bf16": t.bfloat16}[precision]
        if precision in ("tf32", "bf16") and cc < (8, 0):
            raise Unsupported(f"{precision} needs compute capability 8.0 (Ampere) or newer; "
                              f"this GPU is {cc[0]}.{cc[1]}")
        if precision == "tf32" and _tf32_forbidden():
            raise Unsupported(_tf32_forbidden())
        t.backends.cuda.matmul.allow_tf32 = precision == "tf32"
        gen = t.Generator(device=self.dev).manual_seed(0)
        a = t.randn(n, n, device=self.dev, generator=gen).to(dtype)
        b = t.randn(n, n, device=self.dev, generator=gen).to(dtype)
        c = t.empty(n, n, device=self.dev, dtype=dtype)
        what = "float32, TF32 allowed" if precision == "tf32" else str(dtype).replace("torch.", "")
        return (lambda: t.matmul(a, b, out=c)), f"torch {t.__version__} matmul ({what}), cuBLAS"

    def triad(self, elements: int):
        t = self.torch
        a = t.zeros(elements, device=self.dev)
        b = t.full((elements,), 1.0, device=self.dev)
        c = t.full((elements,), 2.0, device=self.dev)
        return ((lambda: t.add(b, c, alpha=TRIAD_SCALAR, out=a)),
                f"torch {t.__version__} float32 a = b + {TRIAD_SCALAR:g} * c (one kernel)")

    def host_copy(self, nbytes: int, direction: str):
        t = self.torch
        host = t.empty(nbytes, dtype=t.uint8, pin_memory=True)
        dev = t.empty(nbytes, dtype=t.uint8, device=self.dev)
        if not host.is_pinned():
            raise ProbeFailed("the host buffer is not pinned")
        if direction == "host_to_device":
            op = lambda: dev.copy_(host, non_blocking=True)  # noqa: E731
        else:
            op = lambda: host.copy_(dev, non_blocking=True)  # noqa: E731
        return op, f"torch {t.__version__} copy_ from pinned host memory (non_blocking)"

    def time(self, op, calls: int) -> float:
        t = self.torch
        start, end = t.cuda.Event(enable_timing=True), t.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(calls):
            op()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def free_bytes(self) -> int | None:
        return int(self.torch.cuda.mem_get_info(self.dev)[0])

    def pcie_link(self) -> dict | None:
        return _nvml_pcie(self.identity().get("nvml_index"))

    def release(self) -> None:
        t = self.torch
        t.cuda.synchronize()
        t.backends.cuda.matmul.allow_tf32 = self._saved_tf32
        t.cuda.empty_cache()


# ---------------------------------------------------------------- GPU: CuPy

class CupyBackend(Backend):
    """The current CuPy device (0, after CUDA_VISIBLE_DEVICES)."""

    device = "gpu"
    element_bytes = 4

    def __init__(self, cupy):
        self.cp = cupy
        self.dev = cupy.cuda.Device(0)
        self.dev.use()
        self._linalg = None
        try:
            from cupy._core import _routines_linalg

            self._linalg = _routines_linalg
            self._saved = {d: _routines_linalg.get_compute_type(d) for d in ("f",)}
        except (ImportError, AttributeError):
            self._saved = {}
        self._ident = None
        self._triad_kernel = None

    def library(self) -> dict:
        cp = self.cp
        return {"name": "cupy", "version": cp.__version__,
                "blas": f"cuBLAS (CUDA runtime {cp.cuda.runtime.runtimeGetVersion()})"}

    def identity(self) -> dict:
        if self._ident is None:
            props = self.cp.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            found = nvidia_smi_identity(self.dev.pci_bus_id)
            self._ident = {"device_name": name, "pci_device_id": found.get("pci_device_id"),
                           "nvml_index": found.get("nvml_index")}
        return self._ident

    def gemm(self, n: int, precision: str):
        cp = self.cp
        if precision == "bf16":
            raise Unsupported(f"CuPy {cp.__version__} has no bfloat16 array type")
        cc = int(self.dev.compute_capability)
        if precision == "tf32":
            if cc < 80:
                raise Unsupported(f"tf32 needs compute capability 8.0 (Ampere) or newer; this GPU is "
                                  f"{cc // 10}.{cc % 10}")
            if _tf32_forbidden():
                raise Unsupported(_tf32_forbidden())
            if self._linalg is None or not hasattr(self._linalg, "COMPUTE_TYPE_TF32"):
                raise Unsupported(f"CuPy {cp.__version__} offers no way to ask for TF32 here")
        if self._linalg is not None and precision in ("fp32", "tf32"):
            kind = "COMPUTE_TYPE_TF32" if precision == "tf32" else "COMPUTE_TYPE_DEFAULT"
            self._linalg.set_compute_type("f", getattr(self._linalg, kind))
        dtype = cp.float16 if precision == "fp16" else cp.float32
        rs = cp.random.RandomState(0)
        a = rs.standard_normal((n, n), dtype=cp.float32).astype(dtype)
        b = rs.standard_normal((n, n), dtype=cp.float32).astype(dtype)
        c = cp.empty((n, n), dtype=dtype)
        what = "float32, TF32 compute" if precision == "tf32" else cp.dtype(dtype).name
        return (lambda: cp.matmul(a, b, out=c)), f"cupy {cp.__version__} matmul ({what}), cuBLAS"

    def triad(self, elements: int):
        cp = self.cp
        if self._triad_kernel is None:
            self._triad_kernel = cp.ElementwiseKernel("T b, T c, T s", "T a", "a = b + s * c", "bench_triad")
        kernel = self._triad_kernel
        a = cp.zeros(elements, dtype=cp.float32)
        b = cp.full(elements, 1.0, dtype=cp.float32)
        c = cp.full(elements, 2.0, dtype=cp.float32)
        s = cp.float32(TRIAD_SCALAR)
        return ((lambda: kernel(b, c, s, a)),
                f"cupy {cp.__version__} float32 a = b + {TRIAD_SCALAR:g} * c (one elementwise kernel)")

    def host_copy(self, nbytes: int, direction: str):
        cp = self.cp
        import numpy

        pinned = cp.cuda.alloc_pinned_memory(nbytes)
        host = numpy.frombuffer(pinned, numpy.uint8, nbytes)
        dev = cp.empty(nbytes, dtype=cp.uint8)
        rt = cp.cuda.runtime
        stream = cp.cuda.get_current_stream()
        if direction == "host_to_device":
            args = (dev.data.ptr, host.ctypes.data, nbytes, rt.memcpyHostToDevice)
        else:
            args = (host.ctypes.data, dev.data.ptr, nbytes, rt.memcpyDeviceToHost)

        def op():
            rt.memcpyAsync(*args, stream.ptr)
            return pinned, dev  # keeps both alive as long as op

        return op, f"cupy {cp.__version__} cudaMemcpyAsync from pinned host memory"

    def time(self, op, calls: int) -> float:
        cp = self.cp
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(calls):
            op()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1000.0

    def free_bytes(self) -> int | None:
        return int(self.cp.cuda.runtime.memGetInfo()[0])

    def pcie_link(self) -> dict | None:
        return _nvml_pcie(self.identity().get("nvml_index"))

    def release(self) -> None:
        cp = self.cp
        cp.cuda.Device().synchronize()
        for dtype, kind in self._saved.items():
            self._linalg.set_compute_type(dtype, kind)
        cp.get_default_memory_pool().free_all_blocks()
        cp.get_default_pinned_memory_pool().free_all_blocks()


# ---------------------------------------------------------------- choosing one

def gpu_library_importable() -> bool:
    """Whether torch or cupy imports in this Python (bench probe runs itself in .venvs/pytorch
    when neither does)."""
    import importlib.util

    return any(importlib.util.find_spec(name) is not None for name in ("torch", "cupy"))


def open_backend(device: str) -> Backend:
    """The backend for device; NoDevice when the GPU is absent (never the CPU instead),
    NoLibrary when a GPU is there but neither torch nor cupy imports."""
    if device == "cpu":
        return NumpyBackend()
    if device != "gpu":
        raise ValueError(f"unknown device {device!r}: use cpu or gpu")
    seen = []
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() > 0:
            return TorchBackend(torch)
        seen.append(f"torch {torch.__version__} sees no CUDA device (torch.cuda.is_available() is False)")
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except Exception as exc:  # CUDARuntimeError when there is no driver or device
            count, why = 0, f"{type(exc).__name__}: {exc}"
        else:
            why = "0 devices"
        if count > 0:
            return CupyBackend(cupy)
        seen.append(f"cupy {cupy.__version__} sees no CUDA device ({why})")
    if seen:
        raise NoDevice(f"no GPU: {'; '.join(seen)} in {sys.executable}; --device gpu never falls back "
                       "to the CPU")
    from bench import envinfo

    gpus = envinfo.nvidia_gpus()
    if not gpus:
        raise NoDevice(f"no GPU: nvidia-smi lists none, and neither torch nor cupy imports in "
                       f"{sys.executable}; --device gpu never falls back to the CPU")
    raise NoLibrary(f"{gpus[0]['name']} is here, but neither torch nor cupy imports in {sys.executable}: "
                    "run `python -m bench setup pytorch` (bench probe then runs in .venvs/pytorch) or "
                    "install one (`pip install torch`, or `pip install cupy-cuda12x`)")
