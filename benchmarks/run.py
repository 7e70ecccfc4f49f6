"""Run dsqlkit's benchmarks and write raw numbers (JSON) and a side-by-side table (markdown).

Usage: `nox -s bench` or `python benchmarks/run.py [--only NAME] [--out DIR]`.
Variants compared with each other run interleaved in one process, against one endpoint, so
machine noise hits both sides alike. Numbers are milliseconds unless a row says otherwise.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bench_endpoint
import bench_pool
import bench_repository
import bench_retry
import bench_sqlalchemy
import bench_startup

BENCHMARKS = {
    "endpoint": bench_endpoint.run,
    "pool": bench_pool.run,
    "repository": bench_repository.run,
    "retry": bench_retry.run,
    "sqlalchemy": bench_sqlalchemy.run,
    "startup": bench_startup.run,
}


def summarize(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "p90": ordered[int(0.9 * (len(ordered) - 1))],
        "min": ordered[0],
    }


def _metric_table(group: dict[str, Any]) -> list[str]:
    rows: dict[str, dict[str, float]] = group["rows"]
    metrics = list(next(iter(rows.values())))
    lines = [f"\n| {group['measure']} | " + " | ".join(metrics) + " |"]
    lines.append("|---" * (len(metrics) + 1) + "|")
    for variant, values in rows.items():
        lines.append(f"| {variant} | " + " | ".join(f"{values[m]:.1f}" for m in metrics) + " |")
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
                    entry["median"]  # type: ignore[arg-type]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--out", default="bench-results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    machine = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": __import__("os").cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    results: dict[str, list[dict[str, object]]] = {}
    lines = [f"# dsqlkit benchmarks\n\n{machine}\n"]
    for name in args.only or sorted(BENCHMARKS):
        print(f"running {name} ...", flush=True)
        groups = BENCHMARKS[name]()
        results[name] = []
        lines.append(f"\n## {name}")
        for group in groups:
            if "rows" in group:  # one row per variant, one column per metric
                lines += _metric_table(group)
                results[name].append({"measure": group["measure"], "rows": group["rows"]})
                continue
            lines.append(f"\n| {group['measure']} | n | median | p90 | ratio to first |")
            lines.append("|---|---|---|---|---|")
            baseline = None
            for variant, samples in group["variants"].items():
                stats = summarize(samples)
                baseline = baseline or stats["median"]
                ratio = stats["median"] / baseline
                results[name].append(
                    {"measure": group["measure"], "variant": variant, **stats, "raw": samples}
                )
                lines.append(
                    f"| {variant} | {stats['n']} | {stats['median']:.3f} "
                    f"| {stats['p90']:.3f} | {ratio:.2f}x |"
                )
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results}))
    chart = _chart(results, out / "results.png")
    if chart:
        lines.append(f"\n![benchmarks]({chart.name})")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"\nwritten: {out / 'results.json'}, {out / 'results.md'}")


if __name__ == "__main__":
    main()
