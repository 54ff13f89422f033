"""Coverage per product package, checked against the floors in pyproject.toml.

`make test` runs pytest with coverage (the sidecar and operator subprocesses are measured too:
`[tool.coverage.run] patch = ["subprocess"]`), then `python -m oshu_testkit.coverage_floor`:
it combines the data, prints one line per package and fails if a package is under its floor
(`[tool.oshu.coverage-floor]`). A package with a floor and no measured file fails as well, so
a floor cannot be met by not running the tests at all.
"""

from __future__ import annotations

import argparse
import io
import sys
import tomllib
from collections.abc import Mapping
from pathlib import Path

import coverage
import coverage.exceptions

ROOT = Path(__file__).resolve().parents[2]


def floors(pyproject: Path = ROOT / "pyproject.toml") -> dict[str, float]:
    table = tomllib.loads(pyproject.read_text())["tool"]["oshu"]["coverage-floor"]
    return {str(k): float(v) for k, v in table.items()}


def per_package(cov: coverage.Coverage, packages: list[str]) -> dict[str, float]:
    """Percent covered (statements and branches, as `coverage report` counts) per measured package."""
    out: dict[str, float] = {}
    for pkg in packages:
        try:
            out[pkg] = cov.report(include=[f"*/{pkg}/*"], file=io.StringIO(), ignore_errors=True)
        except coverage.exceptions.NoDataError:
            continue  # no file of the package was measured
    return out


def check(percent: Mapping[str, float | None], wanted: Mapping[str, float]) -> list[str]:
    """Failures, one per package under its floor or not measured at all."""
    failures = []
    for pkg, floor in wanted.items():
        got = percent.get(pkg)
        if got is None:
            failures.append(f"{pkg}: not measured (floor {floor:g}%)")
        elif got + 1e-9 < floor:
            failures.append(f"{pkg}: {got:.1f}% is under its floor of {floor:g}%")
    return failures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", default=".coverage", help="coverage data file (default .coverage)")
    args = parser.parse_args(argv)
    wanted = floors()
    cov = coverage.Coverage(data_file=args.data_file, config_file=str(ROOT / "pyproject.toml"))
    cov.combine(keep=False)  # subprocess data files, if pytest-cov left any
    cov.load()
    percent = per_package(cov, sorted(wanted))
    for pkg in sorted(wanted):
        got = percent.get(pkg)
        shown = f"{got:5.1f}%" if got is not None else "not measured"
        print(f"coverage {pkg:<15} {shown:>12}  floor {wanted[pkg]:g}%")
    failures = check(percent, wanted)
    for failure in failures:
        print(f"coverage floor: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
