"""A stand-in for pynvml (nvidia-ml-py), the part bench/nvml.py calls, driven by the tests.

FakeNVML(gpus) is the module: pass it as `lib` to bench.nvml (open_device, pcie_link) and
bench.telemetry.for_run (nvml_lib). Each FakeGPU holds what NVML would report now; a test sets
its fields between samples. A field set to None raises NVMLError_NotSupported, as NVML does
for a reading the GPU does not have (energy before Volta, ECC on a consumer GPU).
"""
from __future__ import annotations

from types import SimpleNamespace

NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_CLOCK_SM = 1
NVML_TEMPERATURE_GPU = 0
NVML_VOLATILE_ECC = 0
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1


class NVMLError(Exception):
    def __init__(self, value):
        super().__init__(value)
        self.value = value

    def __str__(self):
        return {NVML_ERROR_NOT_SUPPORTED: "Not Supported",
                NVML_ERROR_LIBRARY_NOT_FOUND: "NVML Shared Library Not Found",
                NVML_ERROR_INVALID_ARGUMENT: "Invalid Argument"}.get(self.value, f"NVML error {self.value}")


class FakeGPU:
    def __init__(self, name="NVIDIA H100 80GB HBM3", uuid="GPU-0000", energy_mj=1_000_000, power_w=300.0,
                 sm_mhz=1980, temp_c=60, reasons=0, ecc=(0, 0), pcie=(5, 16), pcie_max=(5, 16),
                 processes=None, graphics=None, power_limit_w=700.0):
        self.name, self.uuid, self.power_limit_w = name, uuid, power_limit_w
        self.energy_mj, self.power_w, self.sm_mhz, self.temp_c = energy_mj, power_w, sm_mhz, temp_c
        self.reasons, self.ecc, self.pcie, self.pcie_max = reasons, ecc, pcie, pcie_max
        self.processes = {} if processes is None else processes  # pid: used bytes (None: not given)
        self.graphics = {} if graphics is None else graphics


def _given(value):
    if value is None:
        raise NVMLError(NVML_ERROR_NOT_SUPPORTED)
    return value


class FakeNVML:
    """The pynvml functions bench/nvml.py uses. init_error: what nvmlInit raises (no driver)."""

    NVMLError = NVMLError
    NVML_ERROR_NOT_SUPPORTED = NVML_ERROR_NOT_SUPPORTED
    NVML_CLOCK_SM = NVML_CLOCK_SM
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU
    NVML_VOLATILE_ECC = NVML_VOLATILE_ECC
    NVML_MEMORY_ERROR_TYPE_CORRECTED = NVML_MEMORY_ERROR_TYPE_CORRECTED
    NVML_MEMORY_ERROR_TYPE_UNCORRECTED = NVML_MEMORY_ERROR_TYPE_UNCORRECTED

    def __init__(self, gpus=None, init_error=None, old_names=False):
        self.gpus = [FakeGPU()] if gpus is None else gpus
        self.init_error = init_error
        self.sessions = 0  # nvmlInit calls not yet shut down
        if old_names:  # pynvml before the clock "event" rename has only ...ThrottleReasons
            self.nvmlDeviceGetCurrentClocksThrottleReasons = self._reasons
        else:
            self.nvmlDeviceGetCurrentClocksEventReasons = self._reasons

    def nvmlInit(self):
        if self.init_error is not None:
            raise NVMLError(self.init_error)
        self.sessions += 1

    def nvmlShutdown(self):
        self.sessions -= 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index):
        if not 0 <= index < len(self.gpus):
            raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)
        return self.gpus[index]

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu in self.gpus:
            if gpu.uuid == uuid:
                return gpu
        raise NVMLError(NVML_ERROR_INVALID_ARGUMENT)

    def nvmlDeviceGetIndex(self, handle):
        return self.gpus.index(handle)

    def nvmlDeviceGetName(self, handle):
        return handle.name.encode()  # bytes, as older pynvml returns it

    def nvmlDeviceGetTotalEnergyConsumption(self, handle):
        return _given(handle.energy_mj)

    def nvmlDeviceGetPowerUsage(self, handle):
        return int(_given(handle.power_w) * 1000)

    def nvmlDeviceGetEnforcedPowerLimit(self, handle):
        return int(_given(handle.power_limit_w) * 1000)  # mW, as NVML gives it

    def nvmlDeviceGetClockInfo(self, handle, kind):
        assert kind == NVML_CLOCK_SM
        return _given(handle.sm_mhz)

    def nvmlDeviceGetTemperature(self, handle, sensor):
        assert sensor == NVML_TEMPERATURE_GPU
        return _given(handle.temp_c)

    def _reasons(self, handle):
        return _given(handle.reasons)

    def nvmlDeviceGetTotalEccErrors(self, handle, kind, counter):
        assert counter == NVML_VOLATILE_ECC
        return _given(handle.ecc)[kind]

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle):
        return _given(handle.pcie)[0]

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle):
        return _given(handle.pcie)[1]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle):
        return _given(handle.pcie_max)[0]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle):
        return _given(handle.pcie_max)[1]

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle.processes.items()]

    def nvmlDeviceGetGraphicsRunningProcesses(self, handle):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in handle.graphics.items()]
