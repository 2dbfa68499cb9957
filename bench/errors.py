"""Errors a framework file raises to the harness (framework files import only this)."""


class DeviceUnavailable(RuntimeError):
    """The device asked for is absent (e.g. --device gpu on a machine with no GPU)."""


class UnsupportedPrecision(ValueError):
    """The framework file has no path for the precision asked for."""
