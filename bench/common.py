"""Helpers shared by the benchmark scripts: paths, config composition, token counting, output."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "bench" / "results"
DEFAULT_DATA_DIR = "../shared/data/sib200/annotated"  # relative to the repository root
DEFAULT_CACHE_DIR = ".cache/xlt_runner"  # the runner's paths.cache_dir, relative to the repository root

if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))


def resolve_data_dir(data_dir: str) -> Path:
    """The SIB-200 directory (relative paths are taken from the repository root); exits if missing."""
    path = Path(data_dir)
    if not path.is_absolute():
        path = (REPO_ROOT / path).resolve()
    if not (path / "eng_Latn" / "test.tsv").is_file():
        sys.exit(f"error: no SIB-200 data at {path} (expected <dir>/<lang>/{{train,dev,test}}.tsv, e.g. "
                 f"{path}/eng_Latn/test.tsv). Pass --data-dir /path/to/sib-200/data/annotated.")
    return path


def compose_config(overrides: list[str]):
    """A run config composed exactly as ``xlt-run`` composes it."""
    from xlt_runner.cli import compose
    return compose(overrides)


def set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


class TokenCounter:
    """Counts tokens entering a backbone: ``real`` (attention mask ones) and ``padded`` (ids incl. padding)."""

    def __init__(self) -> None:
        self.real = 0
        self.padded = 0
        self.batches = 0

    def attach(self, module) -> None:
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask")
        self.padded += int(input_ids.numel())
        self.real += int(mask.sum()) if mask is not None else int(input_ids.numel())
        self.batches += 1

    def snapshot(self) -> dict[str, int]:
        return {"real_tokens": self.real, "padded_tokens": self.padded, "batches": self.batches}

    def reset(self) -> None:
        self.real = self.padded = self.batches = 0


def environment() -> dict:
    import torch
    return {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "machine": platform.machine()}


def write_results(name: str, data: dict) -> Path:
    """Write ``bench/results/<name>.json`` (git-ignored) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path


class PeakRss:
    """Samples this process's resident set size every ``interval`` seconds in a thread, from
    construction to :meth:`stop` (idempotent), which returns MB: ``rss_before_train_mb``,
    ``peak_rss_train_mb`` and ``peak_rss_train_delta_mb`` (the peak over the starting RSS)."""

    def __init__(self, interval: float = 0.01) -> None:
        import psutil
        self.process = psutil.Process()
        self.interval = interval
        self.baseline = self.process.memory_info().rss
        self.peak = self.baseline
        self.result: dict[str, float] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> dict[str, float]:
        if self.result is None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.result = {"rss_before_train_mb": self.baseline / 2**20, "peak_rss_train_mb": self.peak / 2**20,
                           "peak_rss_train_delta_mb": (self.peak - self.baseline) / 2**20}
        return self.result


#: Prefix of the line a contender subprocess prints its result on (JSON after it).
RESULT_MARKER = "BENCH_RESULT "


def run_contender(script: str | Path, name: str, args, keys: tuple[str, ...], extra: tuple[str, ...] = ()) -> dict:
    """Run ``script --worker NAME`` with ``--<key> value`` for each of ``keys`` (attributes of
    ``args``) and ``extra``, offline, with ``args.threads`` OpenMP threads, from the repository
    root; return the JSON of its last :data:`RESULT_MARKER` line (``process_wall_s`` added), or exit
    with its output when it fails."""
    import time
    cmd = [sys.executable, str(Path(script).resolve()), "--worker", name]
    for key in keys:
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(args.threads), "WANDB_MODE": "disabled"}
    start = time.perf_counter()
    proc = subprocess.run([*cmd, *extra], cwd=REPO_ROOT, capture_output=True, text=True, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARKER)]
    if proc.returncode != 0 or not lines:
        sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-6000:])
        raise SystemExit(f"error: contender {name} failed (exit {proc.returncode})")
    return {**json.loads(lines[-1][len(RESULT_MARKER):]), "process_wall_s": time.perf_counter() - start}


def write_report(path: str | Path, args, runs: dict, ratios: dict) -> Path:
    """``{"settings", "environment", "runs", "ratios"}`` of a side-by-side bench as JSON at ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": {k: v for k, v in vars(args).items() if k != "worker"},
                                "environment": environment(), "runs": runs, "ratios": ratios}, indent=2))
    return path
