"""Launch overhead of a multirun sweep against a plain shell loop of ``xlt-run`` calls.

The same N tiny jobs (``model=tiny_xlmr``, head_only, ``trainer.max_steps=1``, a small
synthetic benchmark in the SIB-200 layout, seeds 0..N-1) run, side by side in one
invocation, as

* **multirun**: ``xlt-run -m seed=0,...,N-1 ...`` (the default ``hydra/sweeper=xlt``, whose
  sweep points come from the cached composition, and Hydra's basic launcher: one process),
* **multirun_stock**: the same with Hydra's own ``hydra/sweeper=basic`` (composition from
  scratch, twice per job: batch validation, then launch),
* **submitit_local**: the same with ``hydra/launcher=submitit_local`` (a process per job),
  two jobs at a time (``hydra.sweeper.max_batch_size=2``, this machine's cores),
* **loop**: ``for s in 0..N-1; do xlt-run seed=$s ...; done`` (a process per job),

each into its own fresh output directory. Reported per side: wall time, time from the
command's start to the first job's training start (the runner's ``[xlt-run] <run_id>:
... trainable ...`` line, printed right before ``trainer.fit``, seen on the command's
output or, for submitit, in the jobs' log files; the first optimiser step follows within
milliseconds for this model) and the per-job time (wall / N). Launcher overhead per job =
(wall - the jobs' own work) / N, where the jobs' own work is the sum of the records'
``timings.total_s`` (for submitit_local two jobs overlap, which this measure credits to
the launcher). Also measured in this process: sweep-config composition per job, Hydra's
``ConfigLoaderImpl`` against xlt_runner's ``CachingConfigLoader``, for these N jobs and for
the 120 points of ``experiment=xpe_table1``, and ``xlt-run``'s preflight of the N-job command.

Run: ``.venv/bin/python bench/launch_overhead.py [--jobs 50] [--launchers multirun,loop]``
(50 jobs and all four sides take about 15 minutes on 2 cores, most of it the loop's
per-process start-up). Figures go to stdout and ``bench/results/launch_overhead.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import REPO_ROOT, RESULTS_DIR

sys.path.insert(0, str(REPO_ROOT / "tests"))
from conftest import make_synthetic_benchmark  # noqa: E402  (the tests' synthetic SIB-200-layout generator)


def job_args(data: Path, out: Path, cache: Path) -> list[str]:
    return ["model=tiny_xlmr", "method=head_only", "benchmark=sib200", f"benchmark.data_dir={data}", "logger=none",
            "languages=enarzho", "languages.groups=[all]", "trainer.max_steps=1", "trainer.val_check_interval=1",
            "trainer.enable_progress_bar=false", "benchmark.batch_size=8", "benchmark.eval_batch_size=32",
            "sweep_name=bench", f"paths.output_root={out}", f"paths.cache_dir={cache}"]


def first_training_line(text: str) -> bool:
    return any(line.startswith("[xlt-run]") and "trainable" in line for line in text.splitlines())


def timed_command(cmd: list[str], env: dict, logs: Path | None = None) -> tuple[float, float | None, int, str]:
    """(wall seconds, seconds to the first training start or None, return code, output tail).

    The first training start is looked for in the command's output and, if ``logs`` is
    given, in the ``*_log.out`` files below it (submitit's job logs), polled every 50 ms.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    first: list[float] = []

    def watch_logs() -> None:
        while not first and proc.poll() is None:
            for path in logs.rglob("*_log.out"):
                if first_training_line(path.read_text(errors="replace")):
                    first.append(time.perf_counter() - start)
                    return
            time.sleep(0.05)

    if logs is not None:
        threading.Thread(target=watch_logs, daemon=True).start()
    lines = []
    for line in proc.stdout:
        if not first and first_training_line(line):
            first.append(time.perf_counter() - start)
        lines.append(line)
    code = proc.wait()
    return time.perf_counter() - start, (first[0] if first else None), code, "".join(lines[-20:])


def job_seconds(out: Path) -> float:
    return sum(json.loads(p.read_text())["timings"]["total_s"] for p in out.rglob("results.json"))


def per_job_ms(loader, points: list[list[str]]) -> float:
    """Milliseconds per sweep point to compose it with ``loader`` (with Hydra's section, as a
    launcher does) and resolve its run id (which names the job's directory)."""
    from hydra.types import RunMode

    from xlt_runner.identity import run_id

    start = time.perf_counter()
    ids = {run_id(loader.load_configuration("config", point, RunMode.RUN)) for point in points}
    assert len(ids) == len(points)
    return (time.perf_counter() - start) / len(points) * 1000


def composition_ms(n: int, data: Path, out: Path, cache: Path) -> dict:
    """Hydra's ``ConfigLoaderImpl`` against ``CachingConfigLoader``, each new (empty cache)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.types import RunMode

    from xlt_runner.cli import preflight
    from xlt_runner.composition import CachingConfigLoader, compose, project_loader

    base = job_args(data, out, cache)
    seeds = [base + [f"seed={s}"] for s in range(n)]
    params = compose(["experiment=xpe_table1"], with_hydra=True).hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()])
    table1 = [["experiment=xpe_table1", *point] for point in BasicSweeper.split_arguments(parsed, None)[0]]
    search_path = project_loader().get_search_path()
    ConfigLoaderImpl(config_search_path=search_path).load_configuration("config", base, RunMode.RUN)  # warm file caches
    result = {}
    for name, points in (("seeds", seeds), ("xpe_table1", table1)):
        hydra_ms = per_job_ms(ConfigLoaderImpl(config_search_path=search_path), points)
        cached_ms = per_job_ms(CachingConfigLoader(search_path), points)
        result[f"compose_ms_per_job_{name}"] = {"hydra": hydra_ms, "cached": cached_ms, "points": len(points)}
    start = time.perf_counter()
    preflight(["-m", f"seed={','.join(map(str, range(n)))}", *base])
    result["preflight_s_whole_sweep"] = time.perf_counter() - start
    return result


SIDE_OVERRIDES = {"multirun": [], "multirun_stock": ["hydra/sweeper=basic"],
                  "submitit_local": ["hydra/launcher=submitit_local", "hydra.sweeper.max_batch_size=2"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--launchers", default="multirun,multirun_stock,submitit_local,loop",
                        help="comma list of multirun, multirun_stock, submitit_local, loop")
    args = parser.parse_args()
    sides = args.launchers.split(",")
    unknown = set(sides) - set(SIDE_OVERRIDES) - {"loop"}
    if unknown:
        parser.error(f"unknown launchers {sorted(unknown)}")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    cli = [sys.executable, "-m", "xlt_runner"]
    work = Path(tempfile.mkdtemp(prefix="launch_overhead_"))
    try:
        data = make_synthetic_benchmark(work / "data")
        cache = work / "cache"
        seeds = ",".join(map(str, range(args.jobs)))
        # warm the tokenisation cache so no side pays for it
        subprocess.run([*cli, *job_args(data, work / "warm", cache)], cwd=REPO_ROOT, env=env, check=True,
                       capture_output=True)
        results: dict = {"jobs": args.jobs, "cpu_count": os.cpu_count(),
                         "load_average_at_start": os.getloadavg()[0],
                         **composition_ms(args.jobs, data, work / "compose", cache), "sides": {}}
        for name in ("seeds", "xpe_table1"):
            c = results[f"compose_ms_per_job_{name}"]
            print(f"sweep-config composition, {c['points']} points ({name}): Hydra {c['hydra']:.1f} ms/job, "
                  f"cached {c['cached']:.1f} ms/job ({c['hydra'] / c['cached']:.1f}x; goal < 50 ms)", flush=True)
        print(f"preflight of the whole {args.jobs}-job command: {results['preflight_s_whole_sweep']:.2f} s", flush=True)
        for side in sides:
            out = work / side
            if side == "loop":
                start = time.perf_counter()
                first = None
                for s in range(args.jobs):
                    _, first_start, code, tail = timed_command([*cli, *job_args(data, out, cache), f"seed={s}"], env)
                    if code != 0:
                        sys.exit(f"loop job seed={s} failed:\n{tail}")
                    if first is None:
                        first = first_start
                wall = time.perf_counter() - start
            else:
                wall, first, code, tail = timed_command([*cli, "-m", f"seed={seeds}", *SIDE_OVERRIDES[side],
                                                         *job_args(data, out, cache)], env, logs=out)
                if code != 0:
                    sys.exit(f"{side} failed:\n{tail}")
            own = job_seconds(out)
            done = len(list(out.rglob("results.json")))
            if done != args.jobs:
                sys.exit(f"{side}: {done} of {args.jobs} records")
            results["sides"][side] = {"wall_s": wall, "to_first_training_start_s": first,
                                      "per_job_s": wall / args.jobs, "jobs_own_work_s": own,
                                      "launcher_overhead_per_job_s": (wall - own) / args.jobs}
            print(f"{side:15s} wall {wall:7.1f} s | first training start {first:5.1f} s | per job {wall / args.jobs:5.2f} s"
                  f" | overhead per job {(wall - own) / args.jobs:5.2f} s", flush=True)
        if "loop" in results["sides"]:
            loop = results["sides"]["loop"]
            for side, r in results["sides"].items():
                if side != "loop":
                    print(f"{side} vs loop: wall {loop['wall_s'] / r['wall_s']:.1f}x faster, first training start "
                          f"{r['to_first_training_start_s'] - loop['to_first_training_start_s']:+.1f} s")
        RESULTS_DIR.mkdir(parents=True, exist_ok=True)
        (RESULTS_DIR / "launch_overhead.json").write_text(json.dumps(results, indent=2) + "\n")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
