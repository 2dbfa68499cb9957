"""Verdicts that say why: the majority over processes, the machine's health from the probes, and
the attribution line of a FAIL (bench/verdicts.py, validate.conclude and validate.exit_code)."""
from __future__ import annotations

import pytest

from bench import validate, verdicts


@pytest.mark.parametrize("slow, expected", [
    ([False], "PASS"), ([True, True, True], "FAIL"), ([True, True, False], "INCONCLUSIVE"),
    ([True, False, False], "PASS"), ([True, False], "PASS"), ([True], "FAIL"),
])
def test_the_verdict_is_the_majority_of_the_processes(slow, expected):
    assert verdicts.outcome(slow) == expected


def _probe(value, floor=None, key="gemm_fp32", size=None, device_name="AMD EPYC", **extra):
    entry = {"name": "gemm", "key": key, "precision": "fp32", "unit": "flops_per_s", "value": value,
             "size": size or {"n": 2048}, "floor": floor, "floor_source": "DCGM" if floor else None,
             "status": "below floor" if floor and value < floor else "ok"}
    return dict({"device_name": device_name, "host": "vm", "started_at": "2026-12-01T12:00:00Z",
                 "probes": [entry], "pcie": None, "findings": []}, **extra)


def test_a_probe_below_the_reference_floor_is_unhealthy_and_names_the_fraction():
    health = verdicts.machine_health(_probe(61.0, floor=100.0))
    assert health["healthy"] is False
    assert health["findings"] == ["GEMM fp32 at 61 % of the floor for this model"]
    assert "BELOW ITS FLOOR" in health["line"]


def test_without_a_reference_floor_the_baseline_machines_probe_sets_one_at_75_percent():
    baseline = [_probe(100.0)]
    assert verdicts.machine_health(_probe(80.0), baseline)["healthy"] is True
    low = verdicts.machine_health(_probe(70.0), baseline)
    assert low["healthy"] is False and low["findings"] == ["GEMM fp32 at 93 % of the floor for this model"]
    assert "75 % of the baseline machine's probe (vm" in low["checks"][0]["source"]


def test_a_repeat_of_more_calls_is_the_same_size():
    theirs = _probe(100.0, size={"n": 2048, "calls_per_repeat": 3})
    assert verdicts.machine_health(_probe(80.0, size={"n": 2048, "calls_per_repeat": 4}), [theirs])["healthy"] is True


def test_a_baseline_probe_of_another_size_or_machine_is_no_floor():
    assert verdicts.machine_health(_probe(1.0), [_probe(100.0, size={"n": 4096})])["healthy"] is None
    other = verdicts.machine_health(_probe(1.0), [_probe(100.0, device_name="Intel Xeon")])
    assert other["healthy"] is None and "not judged" in other["line"]


def test_no_probe_is_not_judged_and_says_why():
    health = verdicts.machine_health(None, why_not="--skip-probe")
    assert health["healthy"] is None and "--skip-probe" in health["line"]


def test_a_narrow_pcie_link_is_a_finding():
    probe = _probe(100.0, floor=50.0, pcie={"gen": 4, "gen_max": 4, "width": 8, "width_max": 16})
    health = verdicts.machine_health(probe)
    assert health["healthy"] is False and health["findings"] == ["PCIe link x8 of x16"]


def _record(*flags):
    return {"telemetry": {"flags": [{"kind": k, "text": t} for k, t in flags]}}


HEALTHY = {"healthy": True, "findings": [], "line": "probe: healthy"}


def test_attribution_hardware_below_floor_comes_first():
    health = verdicts.machine_health(_probe(61.0, floor=100.0))
    kind, line = verdicts.attribute([_record(("throttle", "throttled (power cap) for 40 % of the run"))],
                                    health, "gpu")
    assert kind == verdicts.HARDWARE and line == "GPU below its floor: GEMM fp32 at 61 % of the floor for this model"


def test_attribution_names_the_most_telling_telemetry_flag():
    records = [_record(("host_busy", "another process used the CPUs")),
               _record(("throttle", "throttled (power cap) for 40 % of the run")),
               _record(("foreign_process", "another process used the GPU: pid 7 (python)"))]
    kind, line = verdicts.attribute(records, HEALTHY, "gpu")
    assert kind == verdicts.HARDWARE
    assert line == "another process used the GPU: pid 7 (python) (and 2 more)"


def test_a_healthy_machine_puts_the_blame_on_the_software():
    kind, line = verdicts.attribute([_record(), None], HEALTHY, "cpu")
    assert kind == verdicts.SOFTWARE and line.startswith("hardware at its ceiling")
    kind, line = verdicts.attribute([_record()], {"healthy": None, "line": "probe: not judged (x)"}, "cpu")
    assert kind == verdicts.UNJUDGED and "hardware not judged" in line


def _measured(*ratios, flags=()):
    return [{"verdict": "FAIL" if r > 1.35 else "PASS", "task": "cnn", "ratio": r, "slow": r > 1.35,
             "body": f"pytorch             cnn       {r:>10.3f}", "record": _record(*flags)} for r in ratios]


def test_conclude_fails_only_when_every_process_is_slow_and_attributes_it():
    v = validate.conclude(_measured(2.0, 1.9, 2.1), HEALTHY, "cpu")
    assert v["verdict"] == "FAIL" and v["kind"] == verdicts.SOFTWARE
    assert "slow in 3 of 3 processes, reproduced" in v["line"] and v["why"].startswith("hardware at its ceiling")


def test_conclude_is_inconclusive_when_most_but_not_all_processes_are_slow_and_says_how_noisy():
    v = validate.conclude(_measured(1.5, 1.45, 1.0), HEALTHY, "cpu")
    assert v["verdict"] == "INCONCLUSIVE"
    assert "slow in 2 of 3 processes: too noisy to tell, 1.50x, 1.45x, 1.00x: a 50 % spread" in v["line"]


def test_conclude_passes_a_slow_first_process_not_reproduced():
    v = validate.conclude(_measured(1.5, 1.0, 0.9), HEALTHY, "cpu")
    assert v["verdict"] == "PASS" and "not reproduced" in v["line"] and v["ratio"] == 0.9


def test_a_confirmation_that_left_no_result_counts_as_slow():
    measured = _measured(2.0, 1.9) + [{"verdict": "FAIL", "task": "cnn", "body": "no result"}]
    assert validate.conclude(measured, HEALTHY, "cpu")["verdict"] == "FAIL"


def test_exit_codes_put_the_most_serious_outcome_first():
    def v(verdict, kind=None):
        return {"verdict": verdict, "kind": kind}
    assert validate.exit_code([v("PASS")]) == validate.EXIT_PASS == 0
    assert validate.exit_code([v("PASS"), v("NO BAND")]) == validate.EXIT_NO_BAND == 4
    assert validate.exit_code([v("NO BAND"), v("INCONCLUSIVE")]) == validate.EXIT_INCONCLUSIVE == 5
    assert validate.exit_code([v("INCONCLUSIVE"), v("FAIL", verdicts.SOFTWARE)]) == validate.EXIT_FAIL == 1
    assert validate.exit_code([v("FAIL", verdicts.UNJUDGED)]) == validate.EXIT_FAIL
    assert validate.exit_code([v("FAIL", verdicts.SOFTWARE), v("FAIL", verdicts.HARDWARE)]) == validate.EXIT_HARDWARE == 6
    assert len({0, 1, 2, 4, 5, 6}) == len({validate.EXIT_PASS, validate.EXIT_FAIL, validate.EXIT_USAGE,
                                           validate.EXIT_NO_BAND, validate.EXIT_INCONCLUSIVE, validate.EXIT_HARDWARE})
