"""The report: every result JSON merged into one self-contained HTML page and Markdown.

`python render_report.py DIR [DIR ...] -o report.html [--markdown report.md]`
"""
from __future__ import annotations

import argparse
import datetime as dt
import io
import json
import statistics
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from . import compare, modes, precisions, results
from .results import variant_of
from .table import load_folder

REPO_ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = Path(__file__).parent / "templates"
PUBLISHED = REPO_ROOT / "reference" / "published_results.json"
MATRIX = REPO_ROOT / "matrix.yaml"
TASK_TITLES = OrderedDict([
    ("cnn", "CNN (VGG-style) on CIFAR-10: training"),
    ("rnn", "GRU on IMDB: training"),
    ("resnet50", "ResNet-50 feature extraction: inference"),
])


def column_of(record: dict) -> str:
    """One column per device, image variant, precision and mode: precisions are never mixed in
    one, nor modes (a result without a mode ran the reference code: modes.of)."""
    device = record.get("device_name") or record["device"]
    return f"{device} / {variant_of(record)} / {record['precision']} / {modes.of(record)}"


@dataclass
class Cell:
    """All ok results of one framework x column x task x run size: repeats pooled."""

    records: list = field(default_factory=list)

    @property
    def totals(self) -> list:
        out = []
        for r in self.records:
            out.extend(rep["time_total_s"] for rep in (r.get("repeats") or []))
            if not r.get("repeats"):
                out.append(r["time_total_s"])
        return out

    @property
    def figures(self) -> list:
        """Every repeat's figure the task is ranked by (lower is better), all records pooled."""
        return compare.pooled(self.records)

    @property
    def metric(self) -> float:
        """Median of the figure the task is ranked by (lower is better)."""
        return statistics.median(self.figures)

    @property
    def interval(self) -> tuple | None:
        """The 95 % interval of that median (order statistics; None below 6 repeats)."""
        return compare.median_interval(self.figures)

    @property
    def per_epoch(self) -> float | None:
        epochs = [t for r in self.records for t in (r.get("epoch_times_s") or [])]
        return statistics.median(epochs) if epochs else None

    @property
    def images_per_s(self) -> float | None:
        values = [r["throughput"] for r in self.records if r["task"] == "resnet50"]
        return statistics.median(values) if values else None

    @property
    def spread(self) -> tuple | None:
        totals = self.totals
        return (min(totals), max(totals), len(totals)) if len(totals) > 1 else None

    @property
    def synthetic(self) -> bool:
        return any(r["data"] == "synthetic" for r in self.records)

    @property
    def accuracy(self) -> float | None:
        values = [r["accuracy"] for r in self.records if r.get("accuracy") is not None and r["data"] == "real"]
        return statistics.median(values) if values else None


@dataclass
class TaskTable:
    task: str
    title: str
    quick: bool
    columns: list
    rows: "OrderedDict[str, dict]"
    fastest: dict
    plot: str = ""
    resources: list = field(default_factory=list)

    def cell(self, framework: str, column: str) -> Cell | None:
        return self.rows[framework].get(column)


def build_tables(records: list[dict]) -> list[TaskTable]:
    ok = [r for r in records if r["status"] == "ok"]
    tables = []
    for task, title in TASK_TITLES.items():
        for quick in (False, True):  # full-size and --quick runs are never mixed in one column
            chosen = [r for r in ok if r["task"] == task and bool(r.get("quick")) == quick]
            if not chosen:
                continue
            columns = sorted({column_of(r) for r in chosen})
            rows: OrderedDict = OrderedDict()
            for r in sorted(chosen, key=lambda r: r["framework"]):
                rows.setdefault(r["framework"], {}).setdefault(column_of(r), Cell()).records.append(r)
            fastest = {}
            for col in columns:
                cells = [(fw, c[col].metric) for fw, c in rows.items() if col in c]
                fastest[col] = min(cells, key=lambda x: x[1])[0]
            tables.append(TaskTable(task, title, quick, columns, rows, fastest,
                                    resources=resources(rows, columns)))
    return tables


def _median(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return statistics.median(values) if values else None


def energy_per_1000(record: dict) -> float | None:
    """Joules per 1,000 samples over the timed sections: telemetry's energy covers every
    repeat's timed sections, so it is divided by the samples of every repeat."""
    gpu = (record.get("telemetry") or {}).get("gpu") or {}
    samples = (record.get("samples") or {}).get("images" if record["task"] == "resnet50" else "train")
    energy = gpu.get("energy_j")
    if not isinstance(energy, (int, float)) or not samples:
        return None
    return 1000.0 * energy / (samples * max(1, len(record.get("repeats") or [])))


def resources(rows: "OrderedDict[str, dict]", columns: list) -> list:
    """Per framework and column: peak host and device memory, achieved FLOP/s and MFU, energy
    per 1,000 samples and the telemetry flags (where the results carry them)."""
    out = []
    for fw, cells in rows.items():
        for col in columns:
            cell = cells.get(col)
            if not cell:
                continue
            tele = [r.get("telemetry") or {} for r in cell.records]
            flops = [r.get("flops") or {} for r in cell.records]
            host = [t.get("host_memory_peak_bytes") for t in tele]
            device = [(t.get("device_memory") or {}).get("peak_bytes") for t in tele]
            flags = sorted({f["text"] for t in tele for f in t.get("flags") or [] if f.get("text")})
            peak_text = next((f.get("peak_source") for f in flops if f.get("peak_source")), None)
            out.append({
                "framework": fw, "column": col,
                "host_memory_gib": _max_gib(host), "device_memory_gib": _max_gib(device),
                "tflops": _scaled(_median(f.get("achieved_flops_per_s") for f in flops), 1e-12),
                "mfu": _median(f.get("mfu") for f in flops), "peak_source": peak_text,
                "energy_per_1000": _median(energy_per_1000(r) for r in cell.records),
                "flags": flags,
            })
    return [r for r in out if any(r[k] is not None for k in ("host_memory_gib", "device_memory_gib", "tflops",
                                                                "energy_per_1000")) or r["flags"]]


def _max_gib(values):
    values = [v for v in values if isinstance(v, (int, float))]
    return max(values) / 2 ** 30 if values else None


def _scaled(value, factor):
    return None if value is None else value * factor


def machine_health(records: list[dict], probes: list[dict]) -> list[dict]:
    """One entry per machine (host and device model): its probe runs against the reference (or
    the baseline's) floors, and the telemetry flags its results carry."""
    machines: OrderedDict = OrderedDict()
    for doc in sorted(probes, key=lambda d: d.get("started_at") or ""):
        key = (doc.get("host") or "-", doc.get("device_name") or "-")
        machines.setdefault(key, {"host": key[0], "device_name": key[1], "probes": [], "flags": {}})
        machines[key]["probes"].append(doc)
    for r in records:
        host = (r.get("env") or {}).get("hostname") or "-"
        key = (host, r.get("device_name") or r["device"])
        for flag in (r.get("telemetry") or {}).get("flags") or []:
            entry = machines.setdefault(key, {"host": key[0], "device_name": key[1], "probes": [], "flags": {}})
            entry["flags"].setdefault(flag.get("text"), []).append(f"{r['framework']} {r['task']}")
    return list(machines.values())


def cuda_ab(records: list[dict], baselines: dict) -> list[dict]:
    """Speed-up of each CUDA variant against the baseline variant, same framework and GPU."""
    groups: dict = {}
    for r in records:
        if r["status"] != "ok" or variant_of(r) == results.NO_IMAGE_VARIANT:
            continue
        key = (r["framework"], r.get("device_name") or r["device"], r["task"], bool(r.get("quick")),
               r["precision"], modes.of(r))
        groups.setdefault(key, {}).setdefault(variant_of(r), Cell()).records.append(r)
    rows = []
    for (framework, device, task, quick, precision, mode), variants in sorted(groups.items()):
        if len(variants) < 2:
            continue
        wanted = baselines.get(framework)
        base = wanted if wanted in variants else sorted(variants)[0]
        for name, cell in sorted(variants.items()):
            rows.append(dict({
                "framework": framework, "device": device, "task": task, "quick": quick,
                "precision": precision, "mode": mode, "variant": name, "baseline": base,
                "baseline_from": "matrix.yaml" if wanted == base else "first variant",
                "metric": cell.metric,
            }, **compare.as_speedup(compare.compare_values(variants[base].figures, cell.figures))))
    return rows


def precision_state_text(records: list) -> str:
    """What the framework reported it set (conventions.precision), in a few words."""
    states = [(r.get("conventions") or {}).get("precision") for r in records]
    states = [s for s in states if s]
    if not states:
        return "not recorded"
    s = states[0]
    scaling = s["loss_scaling"] if s["loss_scaling"] == "none" else f"{s['loss_scaling']} ({s.get('loss_scaler') or '?'})"
    return (f"compute {s['compute_dtype']}, weights {s['param_dtype']}, TF32 {'on' if s['tf32'] else 'off'}, "
            f"loss scaling {scaling}")


def precision_ab(records: list[dict]) -> list[dict]:
    """Speed-up of each precision against fp32 on the same device, framework, variant, task and
    mode."""
    groups: dict = {}
    for r in records:
        if r["status"] != "ok":
            continue
        key = (r["framework"], r.get("device_name") or r["device"], variant_of(r), r["task"], bool(r.get("quick")),
               modes.of(r))
        groups.setdefault(key, {}).setdefault(r["precision"], Cell()).records.append(r)
    rows = []
    order = {task: i for i, task in enumerate(TASK_TITLES)}
    for (framework, device, variant, task, quick, mode), by_precision in sorted(
            groups.items(), key=lambda item: (item[0][:3], order.get(item[0][3], 99), item[0][4],
                                              modes.MODES.index(item[0][5]))):
        if precisions.DEFAULT not in by_precision or len(by_precision) < 2:
            continue
        base = by_precision[precisions.DEFAULT]
        for name in sorted(by_precision, key=precisions.PRECISIONS.index):
            if name == precisions.DEFAULT:
                continue
            cell = by_precision[name]
            rows.append(dict({
                "framework": framework, "device": device, "variant": variant, "task": task, "quick": quick,
                "precision": name, "mode": mode, "fp32": base.metric, "metric": cell.metric,
                "state": precision_state_text(cell.records),
            }, **compare.as_speedup(compare.compare_values(base.figures, cell.figures))))
    return rows


def mode_state_text(records: list) -> str:
    """What the tuned mode switched on (conventions.mode, modes.state) and what it left off, why."""
    states = [(r.get("conventions") or {}).get("mode") for r in records]
    states = [s for s in states if isinstance(s, dict)]
    if not states:
        return "not recorded"
    s = states[0]
    text = "; ".join(s.get("switches") or []) or "no switch"
    left = s.get("not_applied") or {}
    if left:
        text += ". Left off: " + "; ".join(f"{name} ({why})" for name, why in left.items())
    return text


def cold_start(records: list, task: str) -> dict:
    """The first epoch (ResNet-50: the first warm-up batch) apart from the steady ones, median
    over the records that carry one (results' cold_start: of each run's median repeat)."""
    first_key, steady_key = ("first_batch_s", "steady_batch_s") if task == "resnet50" else \
        ("first_epoch_s", "steady_epoch_s")
    found = [r["cold_start"] for r in records if isinstance(r.get("cold_start"), dict)]
    first = [c[first_key] for c in found if isinstance(c.get(first_key), (int, float))]
    steady = [c[steady_key] for c in found if isinstance(c.get(steady_key), (int, float))]
    epochs = [c["steady_epochs"] for c in found if isinstance(c.get("steady_epochs"), int)]
    return {"unit": "batch" if task == "resnet50" else "epoch", "n": len(found),
            "first": statistics.median(first) if first else None,
            "steady": statistics.median(steady) if steady else None,
            "steady_epochs": min(epochs) if epochs else None,
            "first_values": first, "steady_values": steady}


def mode_ab(records: list[dict]) -> list[dict]:
    """Speed-up of the tuned mode against the reference on the same device, framework, variant,
    task and precision (bench compare's interval and verdict), with what tuned switched on and
    the cold start of both sides: the first epoch (batch) apart from the steady ones, so a win
    or a loss that comes from compilation is seen as such."""
    groups: dict = {}
    for r in records:
        if r["status"] != "ok":
            continue
        key = (r["framework"], r.get("device_name") or r["device"], variant_of(r), r["task"], bool(r.get("quick")),
               r["precision"])
        groups.setdefault(key, {}).setdefault(modes.of(r), Cell()).records.append(r)
    rows = []
    order = {task: i for i, task in enumerate(TASK_TITLES)}
    for (framework, device, variant, task, quick, precision), by_mode in sorted(
            groups.items(), key=lambda item: (item[0][:3], order.get(item[0][3], 99), item[0][4],
                                              precisions.PRECISIONS.index(item[0][5])
                                              if item[0][5] in precisions.PRECISIONS else 99)):
        if modes.DEFAULT not in by_mode or len(by_mode) < 2:
            continue
        base = by_mode[modes.DEFAULT]
        base_cold = cold_start(base.records, task)
        for name in modes.MODES:
            if name == modes.DEFAULT or name not in by_mode:
                continue
            cell = by_mode[name]
            cold = cold_start(cell.records, task)
            steady = None
            if base_cold["steady_values"] and cold["steady_values"]:
                steady = compare.as_speedup(compare.compare_values(base_cold["steady_values"],
                                                                   cold["steady_values"]))
            first = (base_cold["first"] / cold["first"]
                     if base_cold["first"] and cold["first"] else None)
            rows.append(dict({
                "framework": framework, "device": device, "variant": variant, "task": task, "quick": quick,
                "precision": precision, "mode": name, "reference": base.metric, "metric": cell.metric,
                "state": mode_state_text(cell.records), "cold_reference": base_cold, "cold": cold,
                "first_speedup": first, "steady": steady,
            }, **compare.as_speedup(compare.compare_values(base.figures, cell.figures))))
    return rows


def matrix_baselines(path: Path = MATRIX) -> dict:
    try:
        import yaml

        doc = yaml.safe_load(path.read_text()) or {}
    except (OSError, ImportError, ValueError):
        return {}
    frameworks = doc.get("frameworks") or {}
    return {name: (entry or {}).get("baseline_variant") for name, entry in frameworks.items()
            if isinstance(entry, dict)}


def published(path: Path = PUBLISHED) -> dict:
    """The 2018 figures by task: {task: {"columns": [...], "rows": {framework: {col: text}}}}."""
    doc = json.loads(path.read_text())
    wanted = {"train_time_total": "s", "seconds_per_1000_images": "s/1000 img", "test_accuracy": "acc"}
    out: dict = {}
    for row in doc["rows"]:
        if row["metric"] not in wanted:
            continue
        cuda = f"CUDA {row['cuda']}, cuDNN {row['cudnn']}" if row.get("cuda") else "CUDA/cuDNN not stated"
        column = f"{row['gpu']} ({cuda})"
        table = out.setdefault(row["task"], {"columns": [], "rows": OrderedDict()})
        if column not in table["columns"]:
            table["columns"].append(column)
        cell = table["rows"].setdefault(row["framework"], {}).setdefault(column, [])
        unit = wanted[row["metric"]]
        cell.append(f"{row['value']:.2f} {unit}" if unit == "acc" else f"{row['value']:g} {unit}")
    for table in out.values():
        table["columns"].sort()
    return {"about": doc.get("about", ""), "source": doc["rows"][0].get("source", ""), "tasks": out}


# ---------------------------------------------------------------- plots

def _pyplot():
    """pyplot, with mathtext off: a `$...$` in a result's text is text, not a formula to parse."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["text.parse_math"] = False
    import matplotlib.pyplot as plt

    return plt


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # drop the XML prologue: the SVG sits inline in HTML


def plot_table(table: TaskTable) -> str:
    plt = _pyplot()

    frameworks = list(table.rows)
    height = 0.8 / max(1, len(table.columns))
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * len(frameworks) * max(1, len(table.columns)) ** 0.5))
    for i, col in enumerate(table.columns):
        ys = [j + i * height for j, fw in enumerate(frameworks) if col in table.rows[fw]]
        xs = [table.rows[fw][col].metric for fw in frameworks if col in table.rows[fw]]
        ax.barh(ys, xs, height=height, label=col)
    ax.set_yticks([j + 0.4 - height / 2 for j in range(len(frameworks))])
    ax.set_yticklabels(frameworks)
    ax.invert_yaxis()
    ax.set_xlabel("seconds per 1,000 images" if table.task == "resnet50" else "training time, s")
    ax.legend(fontsize="small", loc="lower right")
    ax.set_title(f"{table.title}{' (quick)' if table.quick else ''}: lower is faster", fontsize="medium")
    svg = _svg(fig)
    plt.close(fig)
    return svg


def plot_variants(rows: list[dict]) -> str | None:
    if not rows:
        return None
    plt = _pyplot()

    labels = [f"{r['framework']} {r['task']}{' quick' if r['quick'] else ''} {r['variant']}"
              f"{'' if r.get('mode', modes.DEFAULT) == modes.DEFAULT else ' ' + r['mode']}" for r in rows]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.35 * len(rows)))
    ax.barh(range(len(rows)), [r["speedup"] for r in rows])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels(labels, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlabel("speed-up against the baseline variant (higher is faster)")
    svg = _svg(fig)
    plt.close(fig)
    return svg


# ---------------------------------------------------------------- rendering

def summary(records: list[dict]) -> dict:
    def distinct(values):
        return sorted({v for v in values if v})

    envs = [r.get("env") or {} for r in records]
    versions = sorted({(r["framework"], r["framework_version"]) for r in records if r.get("framework_version")})
    return {
        "results": len(records),
        "failed": sum(r["status"] in results.NOT_OK for r in records),
        "skipped": sum(r["status"] == "skipped" for r in records),
        "synthetic": sum(r["data"] == "synthetic" for r in records),
        "hosts": distinct(e.get("hostname") for e in envs),
        "cpus": distinct(e.get("cpu") for e in envs),
        "gpus": distinct(e.get("gpu") for e in envs),
        "drivers": distinct(e.get("driver") for e in envs),
        "cuda": distinct(f"CUDA {e.get('cuda')} / cuDNN {e.get('cudnn') or '-'}" for e in envs if e.get("cuda")),
        "versions": versions,
        "first": min((r["started_at"] for r in records), default=None),
        "last": max((r["finished_at"] for r in records), default=None),
    }


def context(records: list[dict], warnings: list[str], with_plots: bool = True, probes: list | None = None) -> dict:
    tables = build_tables(records)
    if with_plots:
        for t in tables:
            t.plot = plot_table(t)
    ab = cuda_ab(records, matrix_baselines())
    precision_rows = precision_ab(records)
    return {
        "precision_ab": precision_rows,
        "mode_ab": mode_ab(records),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "summary": summary(records),
        "tables": tables,
        "ab": ab,
        "ab_plot": plot_variants(ab) if with_plots else None,
        "published": published() if PUBLISHED.exists() else None,
        "failures": [dict(r, mode=modes.of(r)) for r in records if r["status"] != "ok"],
        "health": machine_health(records, probes or []),
        "warnings": warnings,
        "schema_version": results.SCHEMA_VERSION,
    }


def rate_text(value, unit: str) -> str:
    """1.2e11 flops_per_s -> '120.0 GFLOP/s'; 2.1e10 bytes_per_s -> '21.0 GB/s'."""
    if not isinstance(value, (int, float)):
        return "-"
    if unit == "flops_per_s":
        return f"{value / 1e12:,.2f} TFLOP/s" if value >= 1e12 else f"{value / 1e9:,.1f} GFLOP/s"
    if unit == "bytes_per_s":
        return f"{value / 1e9:,.1f} GB/s"
    return f"{value:,.3g} {unit}"


def _environment(autoescape: bool):
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=autoescape,  # a result's text never becomes markup
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = lambda v, d=2: "-" if v is None else f"{v:,.{d}f}"
    env.filters["rate"] = rate_text
    env.filters["pct"] = lambda v: "-" if v is None else f"{100 * v:.0f} %"
    env.filters["md"] = lambda v: str(v).replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")
    env.globals["svg"] = lambda text: __import__("markupsafe").Markup(text) if text else ""
    return env


def render_html(ctx: dict) -> str:
    return _environment(autoescape=True).get_template("report.html.j2").render(**ctx)


def render_markdown(ctx: dict) -> str:
    return _environment(autoescape=False).get_template("report.md.j2").render(**ctx)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="render_report.py",
                                     description="Merge result JSON files into one report.")
    parser.add_argument("dirs", nargs="+", type=Path, metavar="DIR", help="folders of result JSON")
    parser.add_argument("-o", "--output", type=Path, default=Path("report.html"), help="HTML file")
    parser.add_argument("--markdown", type=Path, help="also write the report as Markdown")
    args = parser.parse_args(argv)
    for path in filter(None, (args.output, args.markdown)):
        problem = results.output_problem(path)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        print(message, file=sys.stderr)

    try:
        records = load_folder(args.dirs, warn=warn)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    probes = results.load_probes(args.dirs, warn)
    if not records:
        print(f"warning: no valid results in {', '.join(map(str, args.dirs))}; the report is empty",
              file=sys.stderr)
    ctx = context(records, warnings, probes=probes)
    try:
        results.write_atomic(args.output, render_html(ctx))
        print(f"wrote {args.output} ({len(records)} results, {len(warnings)} warnings)")
        if args.markdown:
            results.write_atomic(args.markdown, render_markdown(context(records, warnings, with_plots=False, probes=probes)))
            print(f"wrote {args.markdown}")
    except results.OutputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
