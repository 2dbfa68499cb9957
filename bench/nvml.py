"""NVML (nvidia-ml-py's pynvml) behind one small interface: the GPU's counters the telemetry and
the probes read. Nothing here raises for a reading the GPU does not support: it is None.

open_device() raises NvmlUnavailable with the reason where there is no NVML to ask (pynvml not
installed, no driver, no GPU, CUDA_VISIBLE_DEVICES hiding every GPU). tests/fake_nvml.py stands
in for pynvml (pass it as `lib`), so every path below runs in the tests without a GPU.

Which GPU a run uses: the first entry of CUDA_VISIBLE_DEVICES (an index, or a GPU-... UUID),
else index 0. An index is taken as NVML's (PCI bus) order, which is CUDA's where the GPUs are
alike or CUDA_DEVICE_ORDER=PCI_BUS_ID.
"""
from __future__ import annotations

import os

# Clock event ("throttle") reason bits (nvml.h nvmlClocksEventReason*) and their names. Idle is
# no throttle; the two clock settings are an operator's choice, not the GPU protecting itself.
IDLE = 0x1
REASONS = {
    0x2: "applications clocks setting",
    0x4: "power cap",
    0x8: "hw slowdown",
    0x10: "sync boost",
    0x20: "sw thermal",
    0x40: "thermal (hardware slowdown)",
    0x80: "hw power brake",
    0x100: "display clock setting",
}
SETTINGS = frozenset({"applications clocks setting", "display clock setting"})


class NvmlUnavailable(RuntimeError):
    """There is no NVML to ask, or no GPU for it to report on; the text says which."""


def reason_names(mask: int) -> list:
    """The names of the reasons set in a clock event mask, idle left out; unknown bits by value."""
    names = []
    bit = 1
    while bit <= mask:
        if mask & bit and bit != IDLE:
            names.append(REASONS.get(bit, f"reason {bit:#x}"))
        bit <<= 1
    return names


def load(lib=None):
    """The pynvml module (or the stand-in handed in)."""
    if lib is not None:
        return lib
    try:
        import pynvml
    except ImportError as exc:
        raise NvmlUnavailable(f"pynvml is not importable ({exc}): pip install nvidia-ml-py") from None
    return pynvml


def visible_device(environ=None) -> tuple:
    """(index, uuid) of the GPU CUDA numbers 0 here, one of them None."""
    environ = os.environ if environ is None else environ
    text = environ.get("CUDA_VISIBLE_DEVICES")
    if text is None:
        return 0, None
    first = text.split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return None, first
    try:
        index = int(first)
    except ValueError:
        raise NvmlUnavailable(f"CUDA_VISIBLE_DEVICES={text!r}: its first entry is neither an index "
                              "nor a GPU UUID") from None
    if index < 0:
        raise NvmlUnavailable(f"CUDA_VISIBLE_DEVICES={text!r} hides every GPU")
    return index, None


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


class Device:
    """One GPU through NVML. close() ends this handle's NVML session."""

    def __init__(self, lib, handle, index: int | None):
        self.lib, self.handle, self.index = lib, handle, index
        self.name = self._read(lambda: _text(lib.nvmlDeviceGetName(handle)))
        self._closed = False

    def _read(self, read):
        """A reading, or None where the GPU or the driver does not give it."""
        try:
            return read()
        except self.lib.NVMLError:
            return None

    def energy_mj(self) -> int | None:
        """The energy counter (mJ since the driver loaded; Volta and newer), None if unsupported."""
        return self._read(lambda: int(self.lib.nvmlDeviceGetTotalEnergyConsumption(self.handle)))

    def power_w(self) -> float | None:
        value = self._read(lambda: self.lib.nvmlDeviceGetPowerUsage(self.handle))
        return None if value is None else value / 1000.0

    def power_limit_w(self) -> float | None:
        """The power limit the driver enforces now (a lowered cap slows every kernel)."""
        value = self._read(lambda: self.lib.nvmlDeviceGetEnforcedPowerLimit(self.handle))
        return None if value is None else value / 1000.0

    def sm_clock_mhz(self) -> int | None:
        return self._read(lambda: int(self.lib.nvmlDeviceGetClockInfo(self.handle, self.lib.NVML_CLOCK_SM)))

    def temperature_c(self) -> int | None:
        return self._read(lambda: int(self.lib.nvmlDeviceGetTemperature(
            self.handle, self.lib.NVML_TEMPERATURE_GPU)))

    def clock_event_reasons(self) -> int | None:
        """The clock event (throttle) reason mask; older pynvml names it ...ThrottleReasons."""
        read = getattr(self.lib, "nvmlDeviceGetCurrentClocksEventReasons", None) or \
            getattr(self.lib, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        return None if read is None else self._read(lambda: int(read(self.handle)))

    def ecc_errors(self) -> dict | None:
        """Volatile (since the driver loaded) ECC error counts, None where ECC is off or absent."""
        lib = self.lib

        def count(kind):
            return int(lib.nvmlDeviceGetTotalEccErrors(self.handle, kind, lib.NVML_VOLATILE_ECC))

        corrected = self._read(lambda: count(lib.NVML_MEMORY_ERROR_TYPE_CORRECTED))
        uncorrected = self._read(lambda: count(lib.NVML_MEMORY_ERROR_TYPE_UNCORRECTED))
        if corrected is None or uncorrected is None:
            return None
        return {"corrected": corrected, "uncorrected": uncorrected}

    def pcie_current(self) -> tuple:
        """(generation, width) of the link now; either None if unknown."""
        lib, h = self.lib, self.handle
        return (self._read(lambda: int(lib.nvmlDeviceGetCurrPcieLinkGeneration(h))),
                self._read(lambda: int(lib.nvmlDeviceGetCurrPcieLinkWidth(h))))

    def pcie_max(self) -> tuple:
        """(generation, width) the GPU and this system's slot allow."""
        lib, h = self.lib, self.handle
        return (self._read(lambda: int(lib.nvmlDeviceGetMaxPcieLinkGeneration(h))),
                self._read(lambda: int(lib.nvmlDeviceGetMaxPcieLinkWidth(h))))

    def pcie(self) -> dict | None:
        """{"gen", "gen_max", "width", "width_max"} now, None if NVML gives none of them."""
        (gen, width), (gen_max, width_max) = self.pcie_current(), self.pcie_max()
        link = {"gen": gen, "gen_max": gen_max, "width": width, "width_max": width_max}
        return None if all(v is None for v in link.values()) else link

    def processes(self) -> dict | None:
        """{pid: used GPU memory in bytes or None} of the compute and graphics processes on the
        GPU (the driver's PIDs: the host's, in a container without its own PID translation)."""
        found, answered = {}, False
        for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
            listed = self._read(lambda: getattr(self.lib, name)(self.handle))
            if listed is None:
                continue
            answered = True
            for proc in listed:  # a process in both lists: the larger figure
                pid, used = int(proc.pid), getattr(proc, "usedGpuMemory", None)
                used = None if used is None else int(used)
                if pid not in found or (used is not None and (found[pid] is None or used > found[pid])):
                    found[pid] = used
        return found if answered else None

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self.lib.nvmlShutdown()
            except self.lib.NVMLError:
                pass


def open_device(index: int | None = None, uuid: str | None = None, lib=None, environ=None) -> Device:
    """The GPU by NVML index or UUID; neither given: the one CUDA_VISIBLE_DEVICES makes CUDA's 0."""
    lib = load(lib)
    if index is None and uuid is None:
        index, uuid = visible_device(environ)
    try:
        lib.nvmlInit()
    except lib.NVMLError as exc:
        raise NvmlUnavailable(f"NVML did not start: {exc} (no NVIDIA driver here?)") from None
    try:
        if uuid is not None:
            handle = lib.nvmlDeviceGetHandleByUUID(uuid)
        else:
            count = lib.nvmlDeviceGetCount()
            if not 0 <= index < count:
                raise NvmlUnavailable(f"NVML lists {count} GPU(s); there is no GPU {index}")
            handle = lib.nvmlDeviceGetHandleByIndex(index)
    except (lib.NVMLError, NvmlUnavailable) as exc:
        lib.nvmlShutdown()
        if isinstance(exc, NvmlUnavailable):
            raise
        which = f"UUID {uuid}" if uuid is not None else f"index {index}"
        raise NvmlUnavailable(f"NVML has no GPU of {which}: {exc}") from None
    if uuid is not None:
        try:
            index = int(lib.nvmlDeviceGetIndex(handle))
        except (lib.NVMLError, AttributeError):
            index = None
    return Device(lib, handle, index)


def pcie_link(index: int, lib=None) -> dict | None:
    """The PCIe link of GPU `index` ({"gen", "gen_max", "width", "width_max"}), None where NVML
    cannot say (no NVML, no such GPU, not reported)."""
    try:
        device = open_device(index=index, lib=lib)
    except NvmlUnavailable:
        return None
    try:
        return device.pcie()
    finally:
        device.close()
