"""`bench/run`: one run of every target against the same upstream; prints the table.

Invoked by bench/run, which installs nginx, the peers' venv and builds the Go
client first and passes their paths here.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from . import profile, report, rounds, scenario, upstream
from .certs import make_pki
from .loadgen import Loadgen, Route
from .targets import ALL, BENCH_DIR, DEFAULT, REPO, Context, clean_env

HOST = "api.bench.test"


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__)
    p.add_argument("--quick", action="store_true", help="short smoke run (seconds, not minutes)")
    p.add_argument("--targets", default=",".join(DEFAULT), help=f"comma-separated subset of: {', '.join(ALL)}")
    p.add_argument(
        "--baseline",
        metavar="REV",
        help="also run the sidecar of git revision REV as target oshu-baseline (before/after in one run)",
    )
    p.add_argument("--load-seconds", type=float, help="override the length of each load phase")
    p.add_argument("--rounds", type=int, help="round-robin repetitions, medians reported (default 3, --quick 1)")
    p.add_argument(
        "--profile", action="store_true", help="after the table, py-spy the sidecar under the 32-connection load"
    )
    p.add_argument("--profile-target", default=report.OURS, choices=[n for n in ALL if n != "direct"])
    p.add_argument("--loadgen", type=Path, required=True)
    p.add_argument("--peers-python", type=Path, default=Path(sys.executable))
    p.add_argument("--project-python", type=Path, default=REPO / ".venv" / "bin" / "python")
    p.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx")
    p.add_argument("--out", type=Path, default=BENCH_DIR / ".work" / "results")
    p.add_argument("--keep-workdir", action="store_true")
    return p.parse_args(argv)


def _checkout(rev: str, into: Path) -> list[Path]:
    """The sidecar (and contract, where the revision has one) packages of `rev`, for PYTHONPATH."""
    into.mkdir(parents=True)
    paths = [
        p
        for p in ("sidecar", "contract")
        if subprocess.run(["git", "cat-file", "-e", f"{rev}:{p}"], cwd=REPO, capture_output=True).returncode == 0
    ]
    archive = subprocess.run(["git", "archive", rev, *paths], cwd=REPO, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return [into / p for p in paths]


def _sidecar_available(python: Path) -> str | None:
    """None if `python -m oshu_sidecar --help` works, else why not."""
    if not python.exists():
        return f"{python} missing (create the project venv)"
    try:
        r = subprocess.run(
            [str(python), "-m", "oshu_sidecar", "--help"],
            capture_output=True,
            text=True,
            timeout=30,
            env=clean_env(),
            cwd=REPO,
        )
    except subprocess.TimeoutExpired:
        return "--help timed out"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1]
    return None


def _machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"{os.cpu_count()} cores ({cpu}), Linux {platform.release()}, loadavg {load} at start"


def main(argv: list[str] | None = None) -> int:
    args = _args(sys.argv[1:] if argv is None else argv)
    plan = scenario.Plan.quick() if args.quick else scenario.Plan.full()
    if args.load_seconds:
        plan = scenario.Plan(**{**plan.__dict__, "load_s": args.load_seconds})
    wanted = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = set(wanted) - set(ALL)
    if unknown:
        print(f"unknown targets: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    if args.baseline and "oshu-baseline" not in wanted:
        wanted.append("oshu-baseline")
    if "oshu-baseline" in wanted and not args.baseline:
        print("target oshu-baseline needs --baseline REV", file=sys.stderr)
        return 2
    skipped: dict[str, str] = {}
    if report.OURS in wanted or (args.profile and args.profile_target == report.OURS):
        why = _sidecar_available(args.project_python)
        if why:
            skipped[report.OURS] = why
            wanted = [w for w in wanted if w != report.OURS]
            print(f"skipping {report.OURS}: {why}", file=sys.stderr)

    started = dt.datetime.now()
    workdir = Path(tempfile.mkdtemp(prefix="oshu-bench-"))
    sealed = "SEALED_" + secrets.token_hex(16)
    secret = "sk-bench-real-" + secrets.token_hex(16)
    pki = make_pki(workdir, HOST)
    ups = upstream.start(workdir, pki, HOST, secret, args.nginx, args.loadgen)
    ctx = Context(workdir, pki, ups, sealed, secret, args.peers_python, args.project_python)
    if args.baseline:
        ctx.baseline_src = _checkout(args.baseline, workdir / "baseline")
    lg = Loadgen(args.loadgen, sealed)
    n_rounds = max(1, min(args.rounds or (1 if args.quick else 3), 10))
    per_target: dict[str, list[dict]] = {name: [] for name in wanted}
    failures: dict[str, str] = {}
    machine = _machine()
    try:
        for rnd in range(n_rounds):
            for name in wanted:
                if name in failures:
                    continue
                print(f"round {rnd + 1}/{n_rounds}: {name}", file=sys.stderr)
                try:
                    per_target[name].append(
                        scenario.measure(ALL[name], ctx, lg, plan, log=lambda m: print(m, file=sys.stderr))
                    )
                except Exception as e:  # one target failing must not hide the others
                    failures[name] = str(e)
                    print(f"  {name} FAILED: {e}", file=sys.stderr)
        results = [rounds.merge(per_target[n]) for n in wanted if per_target[n]]
        prof = None
        if args.profile and args.profile_target not in skipped:
            prof = _profile(args, ctx, lg, workdir)
    finally:
        ups.stop()

    header = (
        f"oshu-vault proxy benchmark, {started:%Y-%m-%d %H:%M}, {'quick' if args.quick else 'full'} run "
        f"({plan.load_s:g}s per load phase, median of {n_rounds} round{'s' if n_rounds > 1 else ''})\n{machine}"
    )
    text = [header, "", report.table(results)]
    if report.spread(results):
        text += [report.spread(results)]
    text += ["", report.ratios(results)]
    errors = report.error_notes(results)
    if errors:
        text += ["", errors]
    check = report.targets_check(results)
    if check:
        text += ["", check]
    for name, why in {**skipped, **failures}.items():
        text.append(f"\n{name}: not measured: {why}")
    if prof:
        text += [
            "",
            f"profile of {args.profile_target} under 32 connections "
            f"({prof['stacks.txt']['rps']:,.0f} req/s while sampled, "
            f"{prof['stacks.txt']['cpu_share_of_one_core']:.0%} of one core, "
            f"{prof['stacks.txt']['sys_share']:.0%} of it in the kernel):",
            profile.render(prof["summary"]),
            profile.render_native(prof["native"]),
            f"  stacks: {prof['stacks.txt']['file']}\n  native: {prof['native.txt']['file']}\n"
            f"  flamegraph: {prof['flamegraph.svg']['file']}",
        ]
    output = "\n".join(text)
    print(output)

    args.out.mkdir(parents=True, exist_ok=True)
    stamp = started.strftime("%Y%m%d-%H%M%S")
    (args.out / f"{stamp}.txt").write_text(output + "\n")
    (args.out / f"{stamp}.json").write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "machine": machine,
                "plan": plan.__dict__,
                "results": results,
                "rounds": per_target,
                "skipped": skipped,
                "failures": failures,
                "profile": prof,
            },
            indent=2,
        )
    )
    print(f"\nresults: {args.out / stamp}.{{txt,json}}", file=sys.stderr)
    if args.keep_workdir:
        print(f"workdir kept: {workdir}", file=sys.stderr)
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failures else 0


def _profile(args: argparse.Namespace, ctx: Context, lg: Loadgen, workdir: Path) -> dict | None:
    py_spy = args.peers_python.parent / "py-spy"
    target = ALL[args.profile_target]
    print(f"profiling {target.name} with py-spy", file=sys.stderr)
    running = scenario.Running(target, ctx)
    try:
        route = Route(
            ctx.up.http_target, ctx.pki.proxy_ca, proxy_port=running.launch.port, identities=running.launch.identities
        )
        lg.run("load", route, "-conns", "32", "-duration", "1s")
        outdir = args.out / f"profile-{target.name}-{dt.datetime.now():%Y%m%d-%H%M%S}"
        outdir.mkdir(parents=True, exist_ok=True)
        seconds = 3 if args.quick else 6
        return profile.record(py_spy, running.pid, lg, route, outdir, seconds=seconds)
    finally:
        running.stop()


if __name__ == "__main__":
    sys.exit(main())
