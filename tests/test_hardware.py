"""The hardware reference tables and bench/hardware.py's lookups and CPU peak."""
from __future__ import annotations

import json
import os
import re

import pytest

from bench import hardware, results
from conftest import REPO

SCHEMA = REPO / "bench" / "schema" / "reference-v1.schema.json"
TABLES = {"gpus": hardware.GPU_TABLE, "cpus": hardware.CPU_TABLE}

# The GPU rows the contract asks for (Part A of the issue 11 contract).
REQUIRED_GPUS = {"v100-sxm2-16gb", "v100-sxm2-32gb", "v100-pcie-16gb", "v100-pcie-32gb", "t4", "a10", "a30",
                 "a40", "a100-sxm4-40gb", "a100-sxm4-80gb", "a100-pcie-40gb", "a100-pcie-80gb", "l4", "l40",
                 "l40s", "h100-sxm", "h100-pcie", "h100-nvl", "h200-sxm", "rtx-4090", "rtx-a6000"}


def cpuinfo_text(vendor="AuthenticAMD", family=25, model=17, mhz="2596.138", cores=(0, 1),
                 flags="fpu sse2 avx fma avx2 avx512f avx512_bf16", name="AMD EPYC"):
    """A /proc/cpuinfo with one block per logical CPU; cores lists each CPU's core id."""
    blocks = []
    for i, core in enumerate(cores):
        blocks.append("\n".join([
            f"processor\t: {i}", f"vendor_id\t: {vendor}", f"cpu family\t: {family}", f"model\t\t: {model}",
            f"model name\t: {name}", f"cpu MHz\t\t: {mhz}", "physical id\t: 0", f"core id\t\t: {core}",
            f"flags\t\t: {flags}"]))
    return "\n\n".join(blocks) + "\n"


def table(kind):
    return json.loads(TABLES[kind].read_text())


def source_ids(node):
    """Every source id a table row names (source, ids_source)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("source", "ids_source"):
                yield from ([value] if isinstance(value, str) else value)
            else:
                yield from source_ids(value)
    elif isinstance(node, list):
        for item in node:
            yield from source_ids(item)


# --- the tables -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_tables_match_the_schema_and_hold_only_finite_numbers(kind):
    doc = table(kind)
    validator = results.schema_validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(doc)]
    assert errors == []
    assert results.non_finite_paths(doc) == []


def test_the_schema_refuses_a_row_without_sources():
    doc = table("gpus")
    del doc["gpus"][0]["peaks"]["gemm_fp32"]["source"]
    validator = results.schema_validator(json.loads(SCHEMA.read_text()))
    assert list(validator.iter_errors(doc))


@pytest.mark.parametrize("kind", sorted(TABLES))
def test_every_row_cites_sources_that_the_table_defines(kind):
    doc = table(kind)
    rows = doc["gpus"] if kind == "gpus" else doc["families"]
    for row in rows:
        ids = list(source_ids(row))
        assert ids, row["key"]
        for sid in ids:
            assert sid.partition(":")[0] in doc["sources"], (row["key"], sid)
    for src in doc["sources"].values():
        assert src["url"].startswith(("http://", "https://"))


def test_the_required_gpu_models_are_in_the_table():
    keys = {row["key"] for row in table("gpus")["gpus"]}
    assert REQUIRED_GPUS <= keys


def test_gpu_names_and_pci_ids_are_unique():
    names, ids = [], []
    for row in table("gpus")["gpus"]:
        names += [hardware._name_key(n) for n in row["nvml_names"]]
        ids += row["pci_device_ids"]
    assert len(names) == len(set(names))
    assert len(ids) == len(set(ids))


def test_dense_peaks_halve_the_with_sparsity_figure_the_document_prints():
    for row in table("gpus")["gpus"]:
        for key, peak in row["peaks"].items():
            starred = re.findall(r"([0-9][0-9,.]*)\*", peak["datasheet"])
            if peak.get("dense_from_sparse"):
                assert len(starred) == 1, (row["key"], key)
                assert peak["value"] == pytest.approx(float(starred[0].replace(",", "")) / 2 * 1e12), (row["key"], key)
            elif starred and peak["unit"] == "flops_per_s":
                # printed dense next to a sparse figure: never above half of it
                assert peak["value"] <= float(starred[0].replace(",", "")) / 2 * 1e12 * 1.001, (row["key"], key)


def test_floors_sit_below_the_peaks_and_rule_floors_are_half_of_them():
    for row in table("gpus")["gpus"]:
        for key, floor in row["floors"].items():
            peak = row["peaks"].get(key)
            if key in ("host_to_device", "device_to_host"):
                gen, width = row["peaks"]["pcie_gen"]["value"], row["peaks"]["pcie_width"]["value"]
                peak = {"value": hardware.pcie_link_rate(gen, width)}
            if peak is not None:
                assert floor["floor"] <= peak["value"], (row["key"], key)
            if floor["kind"] == "rule":
                assert "not a measured figure" in floor["rule"], (row["key"], key)
                assert floor["floor"] == pytest.approx(0.5 * peak["value"]), (row["key"], key)


def test_dcgm_floors_cite_the_rows_dcgm_sku_and_follow_its_pass_line():
    seen = 0
    for row in table("gpus")["gpus"]:
        for key, floor in row["floors"].items():
            if floor["kind"] != "dcgm":
                continue
            seen += 1
            assert f"dcgm-skus:{row['dcgm_sku']['id']}" in floor["source"], (row["key"], key)
            if key.startswith("gemm_"):
                target = float(re.search(r"target_stress ([0-9.]+) GFLOPS", floor["rule"]).group(1))
                assert floor["floor"] == pytest.approx(target * 1e9 * 0.95), (row["key"], key)
            if key == "memory_bandwidth":
                mb = float(re.search(r"minimum_bandwidth ([0-9.]+) MB/s", floor["rule"]).group(1))
                assert floor["floor"] == pytest.approx(mb * 1e6), row["key"]
    assert seen > 40


# --- GPU lookups ----------------------------------------------------------------------------


@pytest.mark.parametrize("name,key", [
    ("NVIDIA A100-SXM4-80GB", "a100-sxm4-80gb"),
    ("Tesla V100-SXM2-16GB", "v100-sxm2-16gb"),
    ("NVIDIA H100 80GB HBM3", "h100-sxm"),
    ("NVIDIA H100 PCIe", "h100-pcie"),
    ("NVIDIA L40S", "l40s"),
    ("Tesla T4", "t4"),
    ("  nvidia   a100-sxm4-80gb ", "a100-sxm4-80gb"),  # case and spacing
    ("NVIDIA Tesla V100-PCIE-32GB", "v100-pcie-32gb"),  # a leading NVIDIA some drivers add
])
def test_gpu_reference_finds_nvml_names(name, key):
    row = hardware.gpu_reference(name)
    assert row["key"] == key and row["matched_by"] == "name"


@pytest.mark.parametrize("pci", ["0x20B2", "20b2", "10de:20b2", "0x20B210DE", 0x20B210DE])
def test_gpu_reference_finds_pci_device_ids_in_every_form(pci):
    row = hardware.gpu_reference(None, pci)
    assert row["key"] == "a100-sxm4-80gb" and row["matched_by"] == "pci_device_id"


def test_the_pci_id_wins_over_the_name_and_unknowns_are_none():
    assert hardware.gpu_reference("NVIDIA A100-SXM4-80GB", "0x2330")["key"] == "h100-sxm"
    assert hardware.gpu_reference("NVIDIA A100-SXM4-80GB", "0xFFFF")["key"] == "a100-sxm4-80gb"
    assert hardware.gpu_reference("NVIDIA A100-SXM4-96GB") is None
    assert hardware.floors("gpu", "Some Future GPU") == {}
    assert hardware.peaks("gpu", "Some Future GPU") == {}


def test_the_returned_row_is_a_copy():
    row = hardware.gpu_reference("Tesla T4")
    row["peaks"]["gemm_fp32"]["value"] = 1.0
    assert hardware.gpu_reference("Tesla T4")["peaks"]["gemm_fp32"]["value"] == 8.1e12


def test_floors_and_peaks_of_a_gpu():
    fl = hardware.floors("gpu", "NVIDIA H100 80GB HBM3")
    assert fl["gemm_fp32"]["kind"] == "dcgm" and fl["gemm_fp32"]["floor"] == pytest.approx(29250e9 * 0.95)
    assert "diag-skus.yaml.in, SKU 2330 'H100 80GB HBM3'" in fl["gemm_fp32"]["source"]
    assert fl["gemm_bf16"]["kind"] == "rule" and "50 %" in fl["gemm_bf16"]["rule"]
    assert fl["pcie_width"] == dict(fl["pcie_width"], floor=16, unit="lanes")
    assert set(fl) <= set(hardware.PROBE_KEYS) | {"gemm_fp64"}
    pk = hardware.peaks("gpu", None, "0x233010DE")
    assert pk["gemm_bf16"]["value"] == pytest.approx(989.5e12)
    assert pk["host_to_device"]["value"] == pytest.approx(32e9 * 16 * 128 / 130 / 8)
    assert pk["pcie_gen"] == dict(pk["pcie_gen"], value=5, unit="gen")
    assert hardware.floors("cpu", "AMD EPYC") == {}


# --- peak_flops -----------------------------------------------------------------------------


@pytest.mark.parametrize("precision,value", [
    ("fp32", 19.5e12), ("tf32", 156e12), ("amp-fp16", 312e12), ("amp-bf16", 312e12)])
def test_peak_flops_maps_run_precisions_to_the_dense_gpu_peaks(precision, value):
    peak, text = hardware.peak_flops("gpu", "NVIDIA A100-SXM4-80GB", precision)
    assert peak == pytest.approx(value)
    assert "A100" in text and "nvidia-a100-datasheet" in text


def test_peak_flops_on_gpus_without_the_precision_or_name():
    assert hardware.peak_flops("gpu", "NVIDIA GeForce RTX 4090", "amp-fp16")[0] == pytest.approx(165.2e12)
    peak, why = hardware.peak_flops("gpu", "Tesla V100-SXM2-16GB", "tf32")
    assert peak is None and "TF32" in why
    peak, why = hardware.peak_flops("gpu", "NVIDIA B999", "fp32")
    assert peak is None and "'NVIDIA B999' is not in bench/reference/gpus.json" in why
    assert hardware.peak_flops("gpu", None, "amp-bf16", {"gpu": "NVIDIA H100 80GB HBM3"})[0] == pytest.approx(989.5e12)
    assert hardware.peak_flops("gpu", None, "fp32")[0] is None


def test_peak_flops_on_a_cpu():
    info = hardware.cpu_info(cpuinfo_text(), max_mhz=2596.138)
    peak, how = hardware.peak_flops("cpu", None, "fp32", {"cpu_info": info})
    assert peak == pytest.approx(2 * 2596.138e6 * 32)
    assert how.startswith("2 cores x 2.596 GHz x 32 FLOP/cycle (AMD Zen 4")
    for precision in ("tf32", "amp-fp16"):
        peak, why = hardware.peak_flops("cpu", None, precision, {"cpu_info": info})
        assert peak is None and "GPU" in why
    peak, why = hardware.peak_flops("cpu", None, "amp-bf16", {"cpu_info": info})
    assert peak is None and "Zen 4" in why
    given = {"bf16": {"flops_per_s": 5.0e12, "how": "recorded"}}
    assert hardware.peak_flops("cpu", None, "amp-bf16", {"cpu_peak": given}) == (5.0e12, "recorded")
    peak, why = hardware.peak_flops("cpu", "Not This Machine's CPU 9000", "fp32")
    assert peak is None and "not this machine's" in why
    peak, why = hardware.peak_flops("cpu", None, "fp32", {"cpu_count": (os.cpu_count() or 1) + 1})
    assert peak is None and "CPUs" in why


# --- CPUs -----------------------------------------------------------------------------------


def test_cpu_peak_of_a_zen4_text_is_cores_times_clock_times_flop_per_cycle():
    info = hardware.cpu_info(cpuinfo_text())
    assert (info["vendor_id"], info["family"], info["model"]) == ("AuthenticAMD", 25, 17)
    assert info["cores"] == 2 and info["hz"] == pytest.approx(2596.138e6)
    assert "/proc/cpuinfo 'cpu MHz'" in info["hz_source"] and "not a maximum" in info["hz_source"]
    assert info["simd_width_bits"] == 512
    peak = hardware.cpu_peak(info)
    # the clock read now is no maximum (a boost clock runs faster): no peak, the figure at that clock said
    assert peak["fp32"]["flops_per_s"] is None and peak["fp32"]["at_reported_clock"] == pytest.approx(2 * 2596.138e6 * 32)
    assert "reports no maximum clock" in peak["fp32"]["unknown"]
    assert "2 cores x 2.596 GHz x 32 FLOP/cycle (AMD Zen 4: 2 FMA pipes" in peak["fp32"]["unknown"]
    known = hardware.cpu_peak(hardware.cpu_info(cpuinfo_text(), max_mhz=2596.138))
    assert known["fp32"]["flops_per_s"] == pytest.approx(2 * 2596.138e6 * 32)
    assert known["fp32"]["how"].startswith("2 cores x 2.596 GHz x 32 FLOP/cycle (AMD Zen 4: 2 FMA pipes")
    assert known["fp64"]["flops_per_s"] == pytest.approx(2 * 2596.138e6 * 16)
    assert known["bf16"]["flops_per_s"] is None and known["bf16"]["unknown"]


def test_smt_siblings_count_once_and_given_values_win():
    info = hardware.cpu_info(cpuinfo_text(cores=(0, 0, 1, 1)))
    assert info["logical_cpus"] == 4 and info["cores"] == 2
    info = hardware.cpu_info(cpuinfo_text(), cpu_count=8, max_mhz=3000)
    assert info["cores"] == 8 and info["hz"] == 3e9 and "given" in info["hz_source"]
    assert hardware.cpu_peak(info)["fp32"]["flops_per_s"] == pytest.approx(8 * 3e9 * 32)


def test_an_unknown_cpu_family_is_unknown_with_the_reason():
    peak = hardware.cpu_peak(hardware.cpu_info(cpuinfo_text(family=99, model=1)))
    for value in peak.values():
        assert value["flops_per_s"] is None
        assert value["unknown"] == "AuthenticAMD family 99 model 1 is not in bench/reference/cpus.json"
    peak = hardware.cpu_peak(hardware.cpu_info("processor : 0\nFeatures : fp asimd\n"))
    assert all(v["flops_per_s"] is None and "vendor_id" in v["unknown"] for v in peak.values())


def test_a_figure_needing_a_masked_flag_is_unknown():
    spr = dict(vendor="GenuineIntel", family=6, model=0x8F, name="Intel(R) Xeon(R) Platinum 8480+")
    peak = hardware.cpu_peak(hardware.cpu_info(cpuinfo_text(flags="fma avx2", **spr)))
    assert peak["fp32"]["flops_per_s"] is None and "avx512f" in peak["fp32"]["unknown"]
    peak = hardware.cpu_peak(hardware.cpu_info(cpuinfo_text(flags="fma avx2 avx512f amx_bf16", **spr), max_mhz=2596.138))
    assert peak["fp32"]["flops_per_s"] == pytest.approx(2 * 2596.138e6 * 64)
    assert peak["bf16"]["flops_per_s"] == pytest.approx(2 * 2596.138e6 * 1024)


def test_cpu_peak_on_this_machine():
    info = hardware.cpu_info()
    fam = hardware.cpu_family(info)
    peak = hardware.cpu_peak(info)
    assert set(peak) == {"fp32", "fp64", "bf16"}
    for prec, value in peak.items():
        if value["flops_per_s"] is None:
            assert value["unknown"]
            continue
        fpc = fam["flop_per_cycle"][prec]["value"]
        assert value["flops_per_s"] == pytest.approx(info["cores"] * info["hz"] * fpc)
        assert value["how"].startswith(f"{info['cores']} cores x {info['hz'] / 1e9:.3f} GHz x {fpc:g} FLOP/cycle")
    if (info["vendor_id"], info["family"], info["model"]) == ("AuthenticAMD", 25, 17):  # the development VM
        if info["hz_is_max"]:
            assert peak["fp32"]["flops_per_s"] is not None
        else:  # no cpufreq in the VM: the clock is the one read now, so the peak is unknown, with the figure at it
            assert peak["fp32"]["at_reported_clock"] > 0 and "no maximum clock" in peak["fp32"]["unknown"]


# --- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize("call,message", [
    (lambda: hardware.gpu_reference(None, "xyz"), "not a PCI device id"),
    (lambda: hardware.gpu_reference(None, "0x20B21002"), "ends in 10DE"),
    (lambda: hardware.gpu_reference(None, "8086:20b2"), "not an NVIDIA PCI id"),
    (lambda: hardware.gpu_reference(None), "needs a GPU name or a PCI device id"),
    (lambda: hardware.gpu_reference(123), "a GPU name is text"),
    (lambda: hardware.floors("tpu", "x"), "unknown device 'tpu'"),
    (lambda: hardware.peaks("GPU", "x"), "unknown device 'GPU'"),
    (lambda: hardware.peak_flops("gpu", "Tesla T4", "fp16"), "'fp16' is now 'amp-fp16'"),
    (lambda: hardware.peak_flops("cpu", None, "fp32", env=["not", "a", "dict"]), "env is"),
    (lambda: hardware.cpu_info(cpu_count=0), "cpu_count"),
    (lambda: hardware.cpu_info(max_mhz=float("nan")), "max_mhz"),
    (lambda: hardware.cpu_info(cpuinfo_text=b"processor : 0"), "cpuinfo_text"),
    (lambda: hardware.cpu_peak({"vendor_id": "AuthenticAMD"}), "takes a cpu_info() dict; missing family"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError) as err:
        call()
    assert message in str(err.value)
