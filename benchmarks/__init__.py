"""Benchmarks: segengine against what a data engineer would write by hand instead.

``python -m benchmarks --scale small|1m|10m`` generates (or reuses) a synthetic data
set, imports it into a workspace, counts a fixed suite of segments with every
segengine engine (Spark too, when PySpark and Java are installed) and with
hand-written DuckDB SQL, Polars and pandas over the raw Parquet files (and, with the
`bench` extra, ClickHouse through chdb and DataFusion SQL), checks that every path
returns the same counts, and writes benchmarks/RESULTS.md (a section per
scale measured, with the issue-6 targets) and benchmarks/ratios.png.

Benchmarks live apart from the tests (STYLE.md point 12): tests assert results,
benchmarks measure time and memory and write their figures down. The one test,
tests/test_benchmarks_smoke.py, checks that all paths agree on a tiny data set (and
every baseline with segengine on untidy copies of its contacts) and that the report
keeps every scale and judges the targets from the run's figures.
"""
