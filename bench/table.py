"""`python -m bench table DIR`: frameworks side by side from a folder of results.

One row per framework (and device, precision, mode and run size): seconds per epoch of the two
training tasks and ResNet-50 seconds per 1,000 images, as a Markdown table. With
--precision-ab: each precision against fp32, task by task (report.precision_ab).
"""
from __future__ import annotations

import statistics
import sys
from pathlib import Path

from . import modes, results


def load_folder(folders, warn=lambda m: print(m, file=sys.stderr)) -> list[dict]:
    """Every valid result under the folders, each measurement once (results.load_results)."""
    return results.load_results(folders, warn)


def _cell(rows: list[dict], task: str) -> str:
    ok = [r for r in rows if r["task"] == task and r["status"] == "ok"]
    if not ok:
        bad = [r["status"] for r in rows if r["task"] == task]
        return bad[0] if bad else "-"
    if task == "resnet50":
        return f"{statistics.median(r['seconds_per_1000'] for r in ok):.1f}"
    per_epoch = [t for r in ok for t in r["epoch_times_s"]]
    return f"{statistics.median(per_epoch):.2f}"


def comparison_table(records: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((r["framework"], r["device"], r.get("device_name") or "", r["precision"], modes.of(r),
                           r["quick"]), []).append(r)
    lines = [
        "| framework | version | device | precision | mode | size | CNN s/epoch | RNN s/epoch | ResNet-50 s/1000 img |",
        "|---|---|---|---|---|---|---:|---:|---:|",
    ]
    for (framework, device, device_name, precision, mode, quick), rows in sorted(groups.items()):
        version = next((r["framework_version"] for r in rows if r["framework_version"]), "-")
        where = f"{device} ({device_name})" if device_name else device
        lines.append(f"| {framework} | {version} | {where} | {precision} | {mode} | {'quick' if quick else 'full'} | "
                     f"{_cell(rows, 'cnn')} | {_cell(rows, 'rnn')} | {_cell(rows, 'resnet50')} |")
    return "\n".join(lines)


def _verdict(row: dict) -> str:
    """'faster, 1.41-1.52x' or 'not enough repeats (n=1, 1)' (bench compare's verdict)."""
    if row.get("speedup_low") is None:
        return f"{row['verdict']} (n={row['n_a']}, {row['n_b']})"
    return f"{row['verdict']}, {row['speedup_low']:.2f}-{row['speedup_high']:.2f}x"


def precision_table(records: list[dict]) -> str:
    """Each precision against fp32, per framework and task; a skipped precision shows its reason."""
    from .report import precision_ab  # report imports this module

    lines = ["| framework | device | task | precision | mode | fp32 | time | speed-up | verdict | what was set |",
             "|---|---|---|---|---|---:|---:|---:|---|---|"]
    for r in precision_ab(records):
        unit = "s/1000 img" if r["task"] == "resnet50" else "s"
        lines.append(f"| {r['framework']} | {r['device']} | {r['task']}{' (quick)' if r['quick'] else ''} | "
                     f"{r['precision']} | {r['mode']} | {r['fp32']:.2f} {unit} | {r['metric']:.2f} {unit} | "
                     f"{r['speedup']:.2f}x | {_verdict(r)} | {r['state']} |")
    skipped = sorted({(r["framework"], r.get("device_name") or r["device"], r["precision"],
                       (r.get("error") or "").replace("UnsupportedPrecision: ", ""))
                      for r in records if r["status"] == "skipped"})
    for framework, device, precision, reason in skipped:
        lines.append(f"| {framework} | {device} | all | {precision} | | | | skipped | | {reason.replace('|', '/')} |")
    return "\n".join(lines)


def cmd_table(args) -> int:
    try:
        records = load_folder(args.dirs)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not records:
        print(f"error: no valid results in {', '.join(map(str, args.dirs))}", file=sys.stderr)
        return 2
    print(precision_table(records) if args.precision_ab else comparison_table(records))
    return 0


def register(sub) -> None:
    p = sub.add_parser("table", help="frameworks side by side (Markdown) from folders of results")
    p.add_argument("dirs", nargs="+", type=Path, metavar="DIR")
    p.add_argument("--precision-ab", action="store_true",
                   help="each precision against fp32 (speed-up and what was set), and the skipped ones")
    p.set_defaults(handler=cmd_table)
