"""``python -m benchmarks --scale small|1m|10m [--runs 5] [--baseline-runs N] [--engines ...] [--skip-baselines ...]``.

Generates or reuses the data set and the workspace under benchmarks/.cache/<scale>,
runs the suite through every engine and baseline, and writes benchmarks/RESULTS.md
(one section per scale with saved results) and benchmarks/ratios.png. Exits 1 when
paths disagree on a count.

Engines: duckdb, polars, index, auto, and spark when PySpark and Java are installed
(Spark runs the whole suite in one session after the other paths; its start-up is
reported apart). Name them with --engines to measure fewer, e.g. for 10m:
  python -m benchmarks --scale 10m --engines duckdb,index,auto \\
      --skip-baselines pandas,polars-lazy --runs 3 --baseline-runs 1 --no-cold
(a baseline's count takes seconds at 10M: --baseline-runs 1 times one after its warm-up).
"""

from __future__ import annotations

import argparse
import sys

from .baselines import BASELINES, installed
from .measure import BenchmarkError
from .report import CHART, RESULTS, saved_runs, write, write_runs
from .runner import ALL_ENGINES, Options, default_engines, execute
from .suite import SCALES


def _names(text: str, allowed: tuple[str, ...], option: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}"
        )
    return names


def parse_args(argv: list[str]) -> tuple[Options, bool]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=list(SCALES), default="small")
    parser.add_argument("--runs", type=int, default=5, help="timed warm runs per path (>= 1)")
    parser.add_argument("--baseline-runs", type=int, default=None,
                        help="timed warm runs of each baseline, if not --runs (at 10M a "
                             "baseline's count takes seconds, segengine's milliseconds)")
    parser.add_argument("--engines", default=",".join(default_engines()),
                        type=lambda t: _names(t, ALL_ENGINES, "--engines"),
                        help="segengine engines to measure, from "
                             f"{','.join(ALL_ENGINES)} (default: {','.join(default_engines())})")
    parser.add_argument("--skip-baselines", default="",
                        type=lambda t: _names(t, (*BASELINES, "pandas"), "--skip-baselines"),
                        help="baselines to leave out, e.g. pandas")
    parser.add_argument("--reimport", action="store_true",
                        help="re-import the workspace (and measure the import) even if cached")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold CLI processes")
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite RESULTS.md and the chart from the saved runs of "
                             "every scale (no measuring)")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    if args.baseline_runs is not None and args.baseline_runs < 1:
        parser.error("--baseline-runs must be >= 1")
    if not {b for b in BASELINES if installed(b)} - set(args.skip_baselines):
        parser.error("--skip-baselines: keep at least one baseline (ratios are to the fastest)")
    options = Options(scale=SCALES[args.scale], runs=args.runs,
                      baseline_runs=args.baseline_runs, engines=args.engines,
                      skip_baselines=args.skip_baselines, reimport=args.reimport,
                      cold_cli=not args.no_cold)
    return options, args.report_only


def main(argv: list[str] | None = None) -> int:
    options, report_only = parse_args(sys.argv[1:] if argv is None else argv)
    if report_only:
        runs = saved_runs(options)
        if not runs:
            print(f"no saved results under {options.cache}: run the benchmark first",
                  file=sys.stderr)
            return 1
        scales = write_runs(runs)
    else:
        try:
            scales = write(execute(options))
        except BenchmarkError as exc:
            print(f"benchmark failed: {exc}", file=sys.stderr)
            return 1
    print(f"wrote {RESULTS} ({', '.join(scales)}) and {CHART}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
