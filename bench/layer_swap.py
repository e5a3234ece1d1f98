"""Layer-Swapping merge (``xlt_runner.merging.layer_swap``) against the plain way: time and peak memory.

Two experts of one model (default: the packaged SmolLM2-135M-Instruct, fp32, 30 layers; the
"language" expert is the model with every parameter scaled by 1.001, so the two differ in every
tensor), merged as partition [C] (first 6 and last 2 layers from the language expert; embeddings,
final norm and head from the math expert). Each contender runs in its own subprocess:

- **streamed**: ``layer_swap``: one tensor at a time from the experts' safetensors into output
  shards of at most ``--shard-mb``;
- **loaded**: both experts and the base loaded fully with ``from_pretrained``, the merged state dict
  assembled from them, loaded into the math expert and written with ``save_pretrained``.

Printed: wall seconds, peak resident memory and its increase over the process's import floor
(torch, transformers and the merge code imported, nothing loaded), the increase also as a multiple
of one model's weight bytes, and whether the two outputs hold identical tensors (they must). Goal (issue 12): the
streamed merge peaks at <= 1.2x one model.

    .venv/bin/python bench/layer_swap.py [--shard-mb 50] [--model-dir DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_CACHE_DIR, REPO_ROOT, environment, write_results  # noqa: E402

RESULT_MARKER = "BENCH_RESULT "
CONTENDERS = ("streamed", "loaded")
FIRST, LAST = 6, 2


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    import psutil
    return psutil.Process().memory_info().rss / 2**20


def make_experts(model_dir: Path, root: Path) -> dict[str, Path]:
    """math = the model as it is; language = every parameter x 1.001; base = the model."""
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.save_pretrained(root / "math")
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.mul_(1.001)
    model.save_pretrained(root / "language")
    for folder in ("math", "language"):
        for item in model_dir.iterdir():  # tokenizer files, as a real expert folder has them
            if item.is_file() and not item.name.endswith((".safetensors", ".safetensors.index.json")) and not (root / folder / item.name).exists():
                (root / folder / item.name).write_bytes(item.read_bytes())
    return {"math": root / "math", "language": root / "language", "base": root / "math"}


def run_contender(name: str, folders: dict[str, str], out: str, shard_mb: int) -> dict:
    import torch
    from transformers import AutoModelForCausalLM

    from xlt_runner.merging import layer_swap
    from xlt_runner.models.layers import LayerSelection
    floor = _current_rss_mb()  # the import floor: every module either contender uses is imported, nothing loaded
    start = time.perf_counter()
    if name == "streamed":
        layer_swap(folders["math"], folders["language"], out, language_layers=LayerSelection(first=FIRST, last=LAST),
                   non_layer="math", shard_bytes=shard_mb * 2**20)
    else:
        models = {k: AutoModelForCausalLM.from_pretrained(v, dtype=torch.float32) for k, v in folders.items()}
        depth = models["math"].config.num_hidden_layers
        language_layers = set(range(FIRST)) | set(range(depth - LAST, depth))
        states = {k: m.state_dict() for k, m in models.items()}
        merged = {}
        for key, tensor in states["math"].items():
            layer = int(key.split(".layers.")[1].split(".")[0]) if ".layers." in key else None
            merged[key] = states["language"][key] if layer in language_layers else tensor
        models["math"].load_state_dict(merged)
        models["math"].save_pretrained(out, max_shard_size=f"{shard_mb}MB")
    return {"wall_s": time.perf_counter() - start, "floor_mb": floor, "peak_rss_mb": _rss_mb()}


def tensors_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file
    def load(folder: Path) -> dict:
        out = {}
        for file in sorted(folder.glob("*.safetensors")):
            out.update(load_file(file))
        return out
    left, right = load(a), load(b)
    return left.keys() == right.keys() and all(torch.equal(left[k], right[k]) for k in left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-dir", default=str(REPO_ROOT / DEFAULT_CACHE_DIR / "models" / "smollm2_135m"))
    parser.add_argument("--shard-mb", type=int, default=50)
    parser.add_argument("--contender", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--folders", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--output", help="where to write the JSON results (default bench/results/layer_swap.json)")
    parser.add_argument("--make-experts", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_experts:
        folders = make_experts(Path(args.model_dir), Path(args.make_experts))
        print(RESULT_MARKER + json.dumps({k: str(v) for k, v in folders.items()}), flush=True)
        return
    if args.contender:
        result = run_contender(args.contender, json.loads(args.folders), args.out, args.shard_mb)
        print(RESULT_MARKER + json.dumps(result), flush=True)
        return
    model_dir = Path(args.model_dir)
    if not model_dir.is_dir():
        sys.exit(f"{model_dir}: no model folder; run `make demo` or any run with model=smollm2_135m first "
                 "(it converts the packaged model there)")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        # in a subprocess: a child's peak RSS (ru_maxrss) starts at its parent's size when forked
        done = subprocess.run([sys.executable, __file__, "--make-experts", str(root), "--model-dir", str(model_dir)],
                              capture_output=True, text=True, check=True)
        folders = json.loads(next(l for l in done.stdout.splitlines() if l.startswith(RESULT_MARKER))[len(RESULT_MARKER):])
        model_mb = sum(p.stat().st_size for p in Path(folders["math"]).glob("*.safetensors")) / 2**20
        results = {}
        for name in CONTENDERS:
            done = subprocess.run([sys.executable, __file__, "--contender", name, "--folders", json.dumps(folders),
                                   "--out", str(root / name), "--shard-mb", str(args.shard_mb)],
                                  capture_output=True, text=True, check=True)
            line = next(l for l in done.stdout.splitlines() if l.startswith(RESULT_MARKER))
            results[name] = json.loads(line[len(RESULT_MARKER):])
            r = results[name]
            print(f"{name:9s} {r['wall_s']:6.2f} s   peak RSS {r['peak_rss_mb']:7.0f} MB "
                  f"(+{r['peak_rss_mb'] - r['floor_mb']:.0f} MB over the import floor = "
                  f"{(r['peak_rss_mb'] - r['floor_mb']) / model_mb:.2f}x one model of {model_mb:.0f} MB)", flush=True)
        same = tensors_equal(root / "streamed", root / "loaded")
    s, l = results["streamed"], results["loaded"]
    summary = {"model_mb": model_mb, "identical_tensors": same, "results": results,
               "time_ratio": s["wall_s"] / l["wall_s"],
               "peak_over_floor_ratio": (s["peak_rss_mb"] - s["floor_mb"]) / (l["peak_rss_mb"] - l["floor_mb"]),
               "streamed_peak_over_floor_models": (s["peak_rss_mb"] - s["floor_mb"]) / model_mb,
               "environment": environment()}
    print(f"streamed vs loaded: {summary['time_ratio']:.2f}x the time, {summary['peak_over_floor_ratio']:.2f}x the "
          f"memory over the import floor; streamed peaks at {summary['streamed_peak_over_floor_models']:.2f}x one "
          f"model (goal <= 1.2x); identical tensors: {same}")
    if args.output:
        Path(args.output).write_text(json.dumps(summary, indent=2) + "\n")
    else:
        write_results("layer_swap", summary)


if __name__ == "__main__":
    main()
