"""Run dsqlkit's benchmarks: the goal table of issue 12 plus the detail behind each row.

Usage: `nox -s bench` or `python benchmarks/run.py [--only NAME] [--quick] [--out DIR] [--docs]`.

``--only`` takes a benchmark group (endpoint, failover, pool, repository, retry, startup, ...)
or one goal row (e.g. ``read-1``, ``copy``, ``failover-drop``; see ``--help``), and can be
repeated.
``--quick`` takes fewer samples, to re-run a row in seconds (its numbers are rough).
``--docs`` also writes the goal table, the detail tables and the chart into
docs/benchmarks.md and docs/images/benchmarks.png (for a full, quiet run).

Goal rows are ratios measured in several interleaved runs (both sides back to back, the order
alternating); each row gives the median of the per-run ratios and their range.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import _timing
import bench_endpoint
import bench_failover
import bench_pool
import bench_repository
import bench_retry
import bench_sqlalchemy
import bench_startup
import bench_telemetry

BENCHMARKS = {
    "endpoint": bench_endpoint.run,
    "failover": bench_failover.run,
    "pool": bench_pool.run,
    "repository": bench_repository.run,
    "retry": bench_retry.run,
    "sqlalchemy": bench_sqlalchemy.run,
    "startup": bench_startup.run,
    "telemetry": bench_telemetry.run,
}
#: Goal rows (and other selectable measures) and the group that measures them, in table order.
ROWS = {
    "mint-env": "pool",
    "mint-boto3": "pool",
    "mint-profile": "pool",
    "new-connection": "pool",
    "read-1": "repository",
    "read-8": "repository",
    "read-32": "repository",
    "read-64": "repository",
    "insert-many": "repository",
    "copy": "repository",
    "occ-defaults": "retry",
    "occ-same-backoff": "retry",
    "retry-cpu": "retry",
    "startup-env": "startup",
    "startup-profile": "startup",
    "async-stall": "pool",
    "otel-read": "telemetry",
    "otel-read-cpu": "telemetry",
    "otel-read-sdk": "telemetry",
    "otel-occ": "telemetry",
    "otel-occ-cpu": "telemetry",
    "otel-occ-sdk": "telemetry",
    "otel-retry-cpu": "telemetry",
    "otel-retry-cpu-sdk": "telemetry",
    "failover-refuse": "failover",
    "failover-hang": "failover",
    "failover-drop": "failover",
    "failover-errors": "failover",
    "single-endpoint-read": "failover",
    "single-endpoint-read-cpu": "failover",
}
DOCS_START = "<!-- bench:start (written by benchmarks/run.py --docs) -->"
DOCS_END = "<!-- bench:end -->"


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "min": ordered[0],
    }


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, dict):
        return "; ".join(f"{k}: {_number(v)}" for k, v in value.items())
    return str(value)


def _ratio(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def goal_table(goals: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| Row | What | Goal | Measured (median of per-run ratios) | Range over runs | Met |",
        "|---|---|---|---|---|---|",
    ]
    order = {row: n for n, row in enumerate(ROWS)}
    for g in sorted(goals, key=lambda g: order.get(g["goal"], 99)):
        runs = g["runs"]
        spread = f"{_ratio(min(runs))}-{_ratio(max(runs))} ({len(runs)} runs)" if runs else "-"
        met = "yes" if g["met"] else "**no**"
        lines.append(
            f"| `{g['goal']}` | {g['what']} | {g['target']} | {_ratio(g['ratio'])}{g['unit']} "
            f"| {spread} | {met} |"
        )
    notes = [g for g in goals if g.get("note") or g.get("detail")]
    if notes:
        lines.append("\nThe numbers behind each row:\n")
        for g in sorted(notes, key=lambda g: order.get(g["goal"], 99)):
            parts = [g["note"]] if g.get("note") else []
            parts += [f"{k.replace('_', ' ')}: {_number(v)}" for k, v in g["detail"].items()]
            lines.append(f"- `{g['goal']}`: " + "; ".join(parts))
    return lines


def _metric_table(group: dict[str, Any]) -> list[str]:
    rows: dict[str, dict[str, float]] = group["rows"]
    metrics = list(next(iter(rows.values())))
    lines = [f"\n| {group['measure']} | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for variant, values in rows.items():
        lines.append(f"| {variant} | " + " | ".join(_number(values[m]) for m in metrics) + " |")
    return lines


def _chart(results: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Medians of every compared measure as bar charts (needs matplotlib: the bench extra)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install 'dsqlkit[bench]')")
        return None
    groups: dict[str, dict[str, float]] = {}
    for entries in results.values():
        for entry in entries:
            if "variant" in entry:
                groups.setdefault(str(entry["measure"]), {})[str(entry["variant"])] = float(
                    entry["median"]
                )
    compared = {m: v for m, v in groups.items() if len(v) > 1}
    if not compared:
        return None
    fig, axes = plt.subplots(len(compared), 1, figsize=(9, 2.2 * len(compared)))
    axes_list = list(getattr(axes, "flat", [axes]))
    for axis, (measure, variants) in zip(axes_list, compared.items(), strict=True):
        names = list(variants)
        axis.barh(names, [variants[n] for n in names], color="#4c72b0")
        axis.set_title(measure, fontsize=9, loc="left")
        axis.tick_params(labelsize=7)
        axis.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _write_docs(lines: list[str], chart: Path | None) -> None:
    root = Path(__file__).parent.parent
    page = root / "docs" / "benchmarks.md"
    text = page.read_text()
    if DOCS_START not in text or DOCS_END not in text:
        raise SystemExit(f"{page} has no {DOCS_START} ... {DOCS_END} block to replace")
    body = "\n".join(lines).replace("![benchmarks](results.png)", "")
    if chart is not None:
        shutil.copyfile(chart, root / "docs" / "images" / "benchmarks.png")
        body += "\n\n![Medians of every compared measure](images/benchmarks.png)\n"
    head, rest = text.split(DOCS_START, 1)
    tail = rest.split(DOCS_END, 1)[1]
    page.write_text(f"{head}{DOCS_START}\n{body.strip()}\n{DOCS_END}{tail}")
    print(f"updated {page}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=[*sorted(BENCHMARKS), *ROWS], action="append")
    parser.add_argument("--quick", action="store_true", help="fewer samples: rough, fast")
    parser.add_argument("--out", default="bench-results")
    parser.add_argument("--docs", action="store_true", help="update docs/benchmarks.md too")
    args = parser.parse_args()
    _timing.QUICK = args.quick
    selected = set(args.only or [])
    groups_to_run = [g for g in BENCHMARKS if not selected or g in selected
                     or any(ROWS.get(s) == g for s in selected)]  # fmt: skip
    _timing.SELECTED = selected or None  # a group name selects all of its rows
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "quick": args.quick,
        "only": sorted(selected) or "all",
    }
    results: dict[str, list[dict[str, Any]]] = {}
    goals: list[dict[str, Any]] = []
    details = ["## Details"]
    for name in groups_to_run:
        print(f"running {name} ...", flush=True)
        started = time.perf_counter()
        groups = BENCHMARKS[name]()
        print(f"  {name}: {time.perf_counter() - started:.0f} s", flush=True)
        results[name] = []
        details.append(f"\n### {name}")
        for group in groups:
            if "goal" in group:
                goals.append(group)
                results[name].append(group)
                continue
            if "rows" in group:  # one row per variant, one column per metric
                details += _metric_table(group)
                results[name].append({"measure": group["measure"], "rows": group["rows"]})
                continue
            details.append(f"\n| {group['measure']} | n | median | p90 | ratio to first |")
            details.append("|---|---|---|---|---|")
            baseline = None
            for variant, samples in group["variants"].items():
                if not samples:
                    continue
                stats = summarize(samples)
                baseline = baseline or stats["median"] or 1.0
                results[name].append(
                    {"measure": group["measure"], "variant": variant, **stats, "raw": samples}
                )
                details.append(
                    f"| {variant} | {stats['n']} | {stats['median']:.3f} "
                    f"| {stats['p90']:.3f} | {stats['median'] / baseline:.3g}x |"
                )
    lines = [f"# dsqlkit benchmarks\n\n{machine}\n", "## Goals (issue 12)\n"]
    lines += goal_table(goals) if goals else ["(no goal row selected)"]
    lines += ["", *details]
    (out / "results.json").write_text(
        json.dumps({"machine": machine, "goals": goals, "results": results}, indent=1)
    )
    chart = _chart(results, out / "results.png")
    if chart:
        lines.append("\n![benchmarks](results.png)")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")
    if args.docs:
        run = (f"One run of `python benchmarks/run.py` on {machine['when']}: Python "
               f"{machine['python']}, {machine['platform']}, {machine['cpus']} CPUs"
               + (" (quick mode: rough numbers)." if args.quick else "."))  # fmt: skip
        _write_docs([run, "", *lines[1:]], chart)


if __name__ == "__main__":
    main()
