"""schedserver benchmarks: python bench/run.py [--quick] [--only NAME ...] [--reps N]

Runs every benchmark (or the ones named), prints a table and writes bench/RESULTS.md with the machine,
and for each figure its median and spread (min-max) over the repetitions, its target, and whether it was met.
--quick runs small sizes and one repetition: it keeps the harness working (a smoke test runs it); its
figures are not the published ones, and it writes bench/RESULTS-quick.md instead.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parent.parent))

import common  # noqa: E402
from common import Figure, median  # noqa: E402


KEEP_MARKER = "<!-- hand-written below: kept by run.py -->"


def registry() -> dict:
    import bench_api
    import bench_sched
    return {**bench_sched.BENCHMARKS, **bench_api.BENCHMARKS}


def fmt(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}" if abs(value) >= 0.1 else f"{value:.3f}"


def verdict(figure: Figure) -> str:
    if figure.ok is None or not figure.values:
        return ""
    return "yes" if figure.ok(median(figure.values)) else "**no**"


def table(figures: list[tuple[str, Figure]]) -> list[str]:
    rows = ["| benchmark | figure | median | spread (min-max) | n | target | met |",
            "|---|---|---:|---:|---:|---|---|"]
    for bench, f in figures:
        spread = f"{fmt(min(f.values))}-{fmt(max(f.values))}" if f.values else ""
        rows.append(f"| {bench} | {f.name} | {fmt(median(f.values))} {f.unit} | {spread} | {len(f.values)} | "
                    f"{f.target} | {verdict(f)} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one repetition (a smoke run)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these benchmarks")
    parser.add_argument("--reps", type=int, default=None, help="repetitions (default 3, 1 with --quick)")
    parser.add_argument("--out", default=None, help="where to write the results (default bench/RESULTS.md)")
    args = parser.parse_args(argv)
    reps = args.reps or (1 if args.quick else 3)
    benchmarks = registry()
    names = args.only or list(benchmarks)
    unknown = [n for n in names if n not in benchmarks]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; known: {', '.join(benchmarks)}")
    info = common.machine()
    print(f"machine: {info['cores']} cores, {info['cpu']}, Python {info['python']}, {info['system']}")
    figures: list[tuple[str, Figure]] = []
    failed: list[str] = []
    started = time.time()
    for name in names:
        t0 = time.time()
        print(f"-- {name} ...", flush=True)
        try:
            for figure in benchmarks[name](args.quick, reps):
                figures.append((name, figure))
                print(f"   {figure.name}: {fmt(median(figure.values))} {figure.unit} "
                      f"{'[' + ', '.join(fmt(v) for v in figure.values) + ']'} {figure.target} {verdict(figure)}",
                      flush=True)
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"   ({time.time() - t0:.0f} s)", flush=True)
    common.cleanup()
    lines = table(figures)
    print("\n".join(lines))
    notes = [f"- **{bench} / {f.name}**: {f.note}" for bench, f in figures if f.note]
    out = Path(args.out) if args.out else common.BENCH / ("RESULTS-quick.md" if args.quick else "RESULTS.md")
    # A hand-written part (what the figures mean, what changed) follows the marker line and is kept.
    kept = ""
    if out.exists() and KEEP_MARKER in out.read_text():
        kept = out.read_text()[out.read_text().index(KEEP_MARKER):]
    out.write_text("\n".join([
        "# schedserver benchmark results", "",
        f"Written by `python bench/run.py{' --quick' if args.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))}, {time.time() - started:.0f} s in all.", "",
        f"Machine: {info['cores']} cores ({info['cpu']}), Python {info['python']}, {info['system']}. "
        f"Each figure is the median over {reps} repetition(s), with the spread (min-max) beside it.", "",
        *lines, "", *(["## Notes", "", *notes, ""] if notes else []),
        *([f"Failed to run: {', '.join(failed)}", ""] if failed else []),
    ]) + ("\n" + kept if kept else ""))
    print(f"wrote {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
