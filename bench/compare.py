"""Whether a difference is real: the ratio B/A of every figure present on both sides, with a
confidence interval and a verdict (faster, slower, no clear difference, not enough repeats).

The figure is each repeat's compared value (training: total time; ResNet-50: seconds per 1,000
images; lower is better), pooled over every result of a side: repeats inside one result
(`bench run --repeats`) and repeated cells r0, r1, ... of a sweep all count.

Method: the Hodges-Lehmann estimate of the log-ratio (the median of all pairwise differences
log b_j - log a_i) with its distribution-free confidence interval from the Mann-Whitney rank-sum
statistic (Hollander and Wolfe, Nonparametric Statistical Methods, ch. 4). Its coverage is exact
whatever the shape of the noise, provided each side's repeats are independent and the sides
differ by a factor (a shift of log-times): timing noise on a shared host is skewed and comes in
modes, where a normal-theory interval would be wrong and a bootstrap of medians from a handful
of repeats covers too little (seeded trials here: 10 % false differences at n = 3, 8 % at n = 5
with 3 % noise). A 95 % interval needs at least 4 repeats a side (3 and 3 cannot reach it: the
smallest two-sided p-value of the rank-sum test is then 0.1), so fewer is "not enough repeats".
A figure is called faster or slower only when its whole interval lies the minimum effect
(MIN_EFFECT, 2 %, `--min-effect`) or more away from 1: a difference that may be smaller than
that is never called a win, however sure.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

CONFIDENCE = 0.95
MIN_EFFECT = 0.02  # 2 %: below it no verdict of faster or slower (a 0.5 % "win" is noise or nothing)
# The exact rank-sum distribution for up to this many pairs; beyond, its normal approximation.
EXACT_PAIRS = 2500
Z_975 = 1.959963984540054  # the standard normal's 97.5 % quantile
FASTER, SLOWER, SAME, TOO_FEW = "faster", "slower", "no clear difference", "not enough repeats"


def pooled(records: list) -> list:
    """Every repeat's compared figure (validate.samples: what validate judges) of every ok
    record, finite and positive only."""
    from .validate import samples

    return [v for r in records if r.get("status") == "ok" for v in samples(r)
            if isinstance(v, (int, float)) and math.isfinite(v) and v > 0]


@lru_cache(maxsize=256)
def _rank_sum_counts(n: int, m: int) -> tuple:
    """counts[u]: the arrangements of n + m values whose Mann-Whitney U equals u."""
    table = {(0, j): (1,) for j in range(m + 1)}
    table.update({(i, 0): (1,) for i in range(n + 1)})
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            shifted, other = (0,) * j + table[(i - 1, j)], table[(i, j - 1)]
            size = max(len(shifted), len(other))
            table[(i, j)] = tuple((shifted[k] if k < len(shifted) else 0) + (other[k] if k < len(other) else 0)
                                  for k in range(size))
    return table[(n, m)]


def interval_rank(n: int, m: int, confidence: float = CONFIDENCE) -> int:
    """k: the interval runs from the k-th smallest to the k-th largest pairwise difference
    (0: no interval at this confidence with so few values)."""
    alpha = 1 - confidence
    if n * m <= EXACT_PAIRS:
        counts = _rank_sum_counts(n, m)
        total, below, k = sum(counts), 0, 0
        for u, count in enumerate(counts):
            below += count
            if below / total > alpha / 2:
                break
            k = u + 1
        return k
    if confidence != CONFIDENCE:
        raise ValueError(f"only a {100 * CONFIDENCE:.0f} % interval is available beyond {EXACT_PAIRS} pairs")
    k = int(math.floor(n * m / 2 - Z_975 * math.sqrt(n * m * (n + m + 1) / 12)))
    return max(0, k)


def compare_values(a: list, b: list, min_effect: float = MIN_EFFECT, confidence: float = CONFIDENCE) -> dict:
    """B against A (figures where lower is better): the ratio B/A (Hodges-Lehmann), its interval,
    both medians, and the verdict for B (verdict_of)."""
    a = [float(v) for v in a]
    b = [float(v) for v in b]
    out = {"n_a": len(a), "n_b": len(b), "median_a": float(np.median(a)) if a else None,
           "median_b": float(np.median(b)) if b else None, "ratio": None, "low": None, "high": None,
           "confidence": confidence, "min_effect": min_effect}
    if a and b:
        diffs = np.sort((np.log(np.asarray(b))[None, :] - np.log(np.asarray(a))[:, None]).ravel())
        out["ratio"] = float(math.exp(np.median(diffs)))
        k = interval_rank(len(a), len(b), confidence)
        if k >= 1:
            out["low"], out["high"] = float(math.exp(diffs[k - 1])), float(math.exp(diffs[len(diffs) - k]))
    out["verdict"], out["text"] = verdict_of(out)
    return out


def verdict_of(c: dict) -> tuple:
    """(verdict, text). Slower: the whole interval lies at least min_effect above 1 (sure that B
    is slower, and by that much at least); faster: the whole interval at least min_effect below 1;
    else no clear difference. No interval: not enough repeats."""
    if c["low"] is None:
        return TOO_FEW, (f"not enough repeats (n={c['n_a']} and {c['n_b']}: a {100 * c['confidence']:.0f} % "
                         "interval needs 4 a side, or 3 and 5)")
    shown = f"{c['ratio']:.3f}x [{c['low']:.3f}, {c['high']:.3f}]"
    if c["low"] >= 1 + c["min_effect"]:
        return SLOWER, f"slower: {shown}"
    if c["high"] <= 1 - c["min_effect"]:
        return FASTER, f"faster: {shown}"
    small = (c["low"] > 1 or c["high"] < 1)
    why = f" (a difference, but not surely {100 * c['min_effect']:.0f} % or more)" if small else ""
    return SAME, f"no clear difference{why}: {shown}"


def as_speedup(c: dict) -> dict:
    """The same comparison as a speed-up A/B (above 1: B is faster), interval inverted."""
    return {"speedup": 1 / c["ratio"] if c.get("ratio") else None,
            "speedup_low": 1 / c["high"] if c.get("high") else None,
            "speedup_high": 1 / c["low"] if c.get("low") else None,
            "verdict": c["verdict"], "text": c["text"], "n_a": c["n_a"], "n_b": c["n_b"]}


def median_interval(values: list, confidence: float = CONFIDENCE) -> tuple | None:
    """The distribution-free interval of one median: order statistics x_(k)..x_(n+1-k) with k from
    the binomial(n, 1/2) tail; None where n is too small (fewer than 6 values for 95 %)."""
    xs = sorted(values)
    n = len(xs)
    if n == 0:
        return None
    alpha, total, below, k = 1 - confidence, 2 ** n, 0, 0
    for j in range(n + 1):
        below += _comb(n, j)
        if below / total > alpha / 2:
            break
        k = j + 1
    return (xs[k - 1], xs[n - k]) if k >= 1 else None


def _comb(n: int, k: int) -> int:  # math.comb is Python 3.8+; the harness runs on 3.7 too
    out = 1
    for i in range(1, k + 1):
        out = out * (n - k + i) // i
    return out


# ---------------------------------------------------------------- two sides of results

# What a figure is: the same on both sides. What a side is set up as: device model and variant
# (one of each per figure and side; a side mixing two is split with --by).
# The mode is part of the figure: a tuned run is compared with a tuned run (or, --by mode, with
# the reference run of the same figure), never pooled with a reference one.
FIGURE_FIELDS = ("framework", "task", "precision", "mode", "quick", "data")
SPLITS = ("variant", "precision", "mode", "gpu", "framework")
# The side A of a split when --a is not given: the reference value of the axis, else the first.
REFERENCE_SIDE = {"precision": "fp32", "mode": "reference"}


def _field(record: dict, name: str):
    from . import modes

    if name == "quick":
        return bool(record.get("quick"))
    if name == "mode":
        return modes.of(record)  # a result without one ran the reference code
    return record.get(name)


def split_value(record: dict, by: str) -> str:
    from .results import variant_of

    if by == "variant":
        return variant_of(record)
    if by == "gpu":
        return record.get("device_name") or record["device"]
    return str(_field(record, by))


def figure_key(record: dict, by: str | None = None) -> tuple:
    return tuple(_field(record, f) for f in FIGURE_FIELDS if f != by)


def setting(record: dict, by: str | None = None) -> str:
    from .results import variant_of

    parts = []
    if by != "gpu":
        parts.append(record.get("device_name") or record["device"])
    if by != "variant":
        parts.append(variant_of(record))
    return " / ".join(parts)


def compare_sides(a_records: list, b_records: list, by: str | None = None,
                  min_effect: float = MIN_EFFECT) -> tuple:
    """(rows, skipped): a row per figure both sides have, B against A; skipped names the figures
    a side holds under two settings (device / variant) and why."""
    def grouped(records):
        out: dict = {}
        for r in records:
            if r.get("status") == "ok":
                out.setdefault(figure_key(r, by), {}).setdefault(setting(r, by), []).append(r)
        return out

    a, b = grouped(a_records), grouped(b_records)
    rows, skipped = [], []
    order = {"cnn": 0, "rnn": 1, "resnet50": 2}
    fields = [f for f in FIGURE_FIELDS if f != by]
    for key in sorted(set(a) & set(b), key=lambda k: tuple((order.get(v, 9), v) if f == "task" else str(v)
                                                             for f, v in zip(fields, k))):
        named = dict(zip(fields, key))
        label = " ".join(str(named[f]) for f in ("task", "framework", "precision") if f in named)
        if named.get("mode") not in (None, "reference"):
            label += f" {named['mode']}"  # the reference mode adds nothing, as in cell ids
        mixed = [(side, sorted(groups)) for side, groups in (("A", a[key]), ("B", b[key])) if len(groups) > 1]
        if mixed:
            skipped.append(f"{label}: " + "; ".join(f"{side} holds it under {len(s)} settings ({', '.join(s)})"
                                                     for side, s in mixed) + "; split the folder with --by")
            continue
        (a_setting, a_group), = a[key].items()
        (b_setting, b_group), = b[key].items()
        c = compare_values(pooled(a_group), pooled(b_group), min_effect)
        rows.append(dict(named, label=label, quick=bool(named.get("quick")), a_setting=a_setting,
                         b_setting=b_setting, **c))
    return rows, skipped


def _env_values(records: list) -> dict:
    """What each side ran on, field by field: {field: sorted distinct values}."""
    from .results import variant_of

    values: dict = {}

    def add(field, value):
        if value not in (None, ""):
            values.setdefault(field, set()).add(str(value))

    for r in records:
        env = r.get("env") or {}
        for field, value in (("host", env.get("hostname")), ("GPU", env.get("gpu")), ("CPU", env.get("cpu")),
                             ("driver", env.get("driver")), ("CUDA", env.get("cuda")), ("cuDNN", env.get("cudnn")),
                             ("image variant", variant_of(r)), ("Python", env.get("python"))):
            add(field, value)
        add("CPUs usable", env.get("cpus_usable"))
        for name, value in sorted((env.get("thread_settings") or {}).items()):
            add(name, value)
        add(f"{r['framework']} version", r.get("framework_version"))
        switches = ((r.get("conventions") or {}).get("mode") or {}).get("switches")
        if switches is not None:  # what the tuned mode turned on (bench/modes.py state)
            add(f"{r['framework']} switches", "; ".join(switches) or "none")
        gpu = (r.get("telemetry") or {}).get("gpu") or {}
        if isinstance(gpu.get("sm_clock_mhz_mean"), (int, float)):
            add("SM clock (mean, MHz)", f"{gpu['sm_clock_mhz_mean']:.0f}")
        if isinstance(gpu.get("power_w_mean"), (int, float)):
            add("power (mean, W)", f"{gpu['power_w_mean']:.0f}")
        if isinstance(gpu.get("power_limit_w"), (int, float)):
            add("power limit (W)", f"{gpu['power_limit_w']:.0f}")
        for flag in (r.get("telemetry") or {}).get("flags") or []:
            add("telemetry flags", flag.get("kind"))
    return {k: sorted(v) for k, v in values.items()}


def differences(a_records: list, b_records: list) -> list:
    """What differs between the two sides' environments: [{"what", "a", "b"}], causes first."""
    a, b = _env_values(a_records), _env_values(b_records)
    # A framework on one side only is no difference of environment (the rows show what is compared).
    both = {r["framework"] for r in a_records} & {r["framework"] for r in b_records}

    def per_framework(field):
        return next((field[:-len(end)] for end in (" version", " switches") if field.endswith(end)), None)

    fields = [f for f in dict.fromkeys(list(a) + list(b)) if per_framework(f) in (None, *both)]
    return [{"what": field, "a": ", ".join(a.get(field, ["-"])), "b": ", ".join(b.get(field, ["-"]))}
            for field in fields if a.get(field) != b.get(field)]


# ---------------------------------------------------------------- the command

def comparisons(args, warn) -> list:
    """[(label A, label B, records A, records B)] from two folders, or one folder split --by."""
    from .results import load_results, printable

    if args.by is None:
        return [(printable(args.a_dir), printable(args.b_dir),
                 load_results([args.a_dir], warn), load_results([args.b_dir], warn))]
    records = [r for r in load_results([args.a_dir], warn) if r.get("status") == "ok"]
    sides: dict = {}
    for r in records:
        sides.setdefault(split_value(r, args.by), []).append(r)
    values = sorted(sides)
    for wanted in (args.a, args.b):
        if wanted is not None and wanted not in sides:
            raise ValueError(f"--by {args.by}: no ok result has {args.by} {wanted!r}; "
                             f"the folder has {', '.join(values) or 'none'}")
    # The reference side: fp32 against the other precisions, the reference mode against the
    # tuned one, else the first value.
    wanted = REFERENCE_SIDE.get(args.by)
    default = wanted if wanted in sides else (values[0] if values else None)
    first = args.a or default
    others = [args.b] if args.b else [v for v in values if v != first]
    if first is None or not others:
        raise ValueError(f"--by {args.by}: {printable(args.a_dir)} holds {len(values)} value(s) of {args.by} "
                         f"({', '.join(values) or 'no ok result'}); a comparison needs two")
    return [(first, other, sides[first], sides[other]) for other in others]


def forest_plot(rows: list, min_effect: float, title: str) -> str:
    """Ratios B/A with their intervals, one line per figure (matplotlib, inline SVG)."""
    from .report import _pyplot, _svg

    shown = [r for r in rows if r["ratio"]]
    if not shown:
        return ""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.32 * len(shown)))
    ys = list(range(len(shown)))[::-1]
    colours = {SLOWER: "#c0392b", FASTER: "#1e8449", SAME: "#555555", TOO_FEW: "#999999"}
    for y, r in zip(ys, shown):
        if r["low"] is not None:
            ax.plot([r["low"], r["high"]], [y, y], color=colours[r["verdict"]], linewidth=2)
        ax.plot([r["ratio"]], [y], "o" if r["low"] is not None else "x", color=colours[r["verdict"]])
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvspan(1 - min_effect, 1 + min_effect, color="#dddddd", alpha=0.6, linewidth=0)
    ax.set_yticks(ys)
    ax.set_yticklabels([r["label"] for r in shown])
    ax.set_xscale("log")
    ax.set_xlabel("time B / A (95 % interval; grey: within the minimum effect; right of 1: B slower)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    out = _svg(fig)
    plt.close(fig)
    return out


def context(args, warn) -> dict:
    from .results import now_iso

    pages = []
    for label_a, label_b, a, b in comparisons(args, warn):
        rows, skipped = compare_sides(a, b, args.by, args.min_effect)
        pages.append({"a": label_a, "b": label_b, "rows": rows, "skipped": skipped,
                      "differences": differences(a, b), "n_a": len(a), "n_b": len(b),
                      "plot": forest_plot(rows, args.min_effect, f"{label_b} against {label_a}")
                      if args.out else ""})
    return {"comparisons": pages, "by": args.by, "min_effect": args.min_effect, "confidence": CONFIDENCE,
            "generated": now_iso(), "method": __doc__.split("Method: ", 1)[1].split("\n\n")[0].replace("\n", " ")}


def text_of(ctx: dict) -> str:
    lines = []
    for page in ctx["comparisons"]:
        lines.append(f"B = {page['b']} against A = {page['a']} ({page['n_b']} and {page['n_a']} results)")
        if page["differences"]:
            lines.append("what differs:")
            lines.extend(f"  {d['what']}: {d['a']} -> {d['b']}" for d in page["differences"])
        else:
            lines.append("what differs: nothing recorded")
        lines.append(f"{'figure':<34} {'n A':>4} {'n B':>4} {'median A':>10} {'median B':>10}  verdict")
        for r in page["rows"]:
            lines.append(f"{r['label']:<34} {r['n_a']:>4} {r['n_b']:>4} {r['median_a']:>10.3f} {r['median_b']:>10.3f}  {r['text']}")
        lines.extend(f"skipped: {s}" for s in page["skipped"])
        if not page["rows"]:
            lines.append("no figure is on both sides")
        lines.append("")
    return "\n".join(lines)


def _render(name: str, ctx: dict, autoescape: bool) -> str:
    from .report import _environment

    return _environment(autoescape).get_template(name).render(**ctx)


def cmd_compare(args) -> int:
    import sys

    from . import results

    if (args.b_dir is None) == (args.by is None):
        print(f"error: give two folders (compare A B) or one folder and --by {'|'.join(SPLITS)}",
              file=sys.stderr)
        return 2
    if args.by is None and (args.a or args.b):
        print("error: --a and --b pick the two values of --by; with two folders they are the folders",
              file=sys.stderr)
        return 2
    for path in filter(None, (args.out, args.markdown)):
        problem = results.output_problem(path)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2

    def warn(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        ctx = context(args, warn)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(text_of(ctx), end="")
    try:
        if args.out:
            results.write_atomic(args.out, _render("compare.html.j2", ctx, autoescape=True))
            print(f"wrote {results.printable(args.out)}")
        if args.markdown:
            results.write_atomic(args.markdown, _render("compare.md.j2", ctx, autoescape=False))
            print(f"wrote {results.printable(args.markdown)}")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0 if any(page["rows"] for page in ctx["comparisons"]) else 1


def _min_effect(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value) or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be from 0 up to (not including) 1, such as {MIN_EFFECT}; got {text!r}")
    return value


def register(sub) -> None:
    from pathlib import Path

    p = sub.add_parser("compare", help="B against A, figure by figure, with a confidence interval and a verdict")
    p.add_argument("a_dir", type=Path, metavar="A", help="results folder (the reference side)")
    p.add_argument("b_dir", type=Path, metavar="B", nargs="?", help="results folder (compared with A)")
    p.add_argument("--by", choices=SPLITS, default=None, help="split the one folder A along this key")
    p.add_argument("--a", default=None, help="with --by: the value that is side A (default: the first)")
    p.add_argument("--b", default=None, help="with --by: the value that is side B (default: every other)")
    p.add_argument("--out", type=Path, default=None, help="the comparison as one self-contained HTML page")
    p.add_argument("--markdown", type=Path, default=None, help="the comparison as Markdown")
    p.add_argument("--min-effect", type=_min_effect, default=MIN_EFFECT,
                   help=f"smallest relative difference called faster or slower (default {MIN_EFFECT})")
    p.set_defaults(handler=cmd_compare)
