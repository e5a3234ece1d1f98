"""Where fine-tuning changed a decoder: mean |W_tuned − W_base| per layer and module type.

The CoCo-CoLa paper locates "language layers" by comparing how much each layer moves when a model
is tuned on a target language against when it is tuned on English. :func:`layer_updates`
computes the mean absolute change of every weight tensor inside a transformer layer, streamed
tensor by tensor from safetensors files (two 8B models are never in memory; one tensor pair at a
time), grouped by (layer, module type) where the module type is the leaf module's name
(``q_proj``, ``down_proj``, ``input_layernorm``, ...). A tensor missing from either side is not
compared (NaN in the table): a partial run's weights hold only what it trained, so compare it
against the weights it started from (``method.init_from``), where everything else is unchanged.

``xlt-analyze layers RUN_A RUN_B --base BASE`` writes, into ``--out`` (default RUN_A/analysis):
a heatmap PNG per run (layers × module types) and of the difference, and ``layer_ranking.json``:
layers ranked by how much more they change in RUN_A (e.g. target-language tuning) than in RUN_B
(English tuning), mean over module types. Feed the ranking back as a layer spec:
``method.trainable.from_analysis=PATH method.trainable.top=K``.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Iterator

#: The ranking file ``xlt-analyze layers`` writes (read by ``method.trainable.from_analysis``).
RANKING_FILE = "layer_ranking.json"
RANKING_FORMAT = 1
_LAYER_TENSOR = re.compile(r"(?:^|\.)layers\.(\d+)\.(?:.*\.)?([^.]+)\.(weight|bias)$")


class AnalysisError(ValueError):
    """Inputs the analysis cannot compare; the message names the file and the reason."""


def weight_files(source: str | Path) -> list[Path]:
    """The safetensors files behind ``source``: a ``.safetensors`` file, a run directory (its
    ``method_weights.safetensors``) or a model folder (``model.safetensors`` or every shard)."""
    path = Path(source)
    if path.is_file() and path.suffix == ".safetensors":
        return [path]
    if (path / "method_weights.safetensors").is_file():
        return [path / "method_weights.safetensors"]
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise AnalysisError(f"{source}: no safetensors weights (expected a .safetensors file, a run directory "
                            f"with method_weights.safetensors, or a model folder)")
    return files


def _normalized(name: str) -> str:
    """A tensor name without the method's ``backbone.`` prefix (a run's file) so it matches the model's."""
    return name.removeprefix("backbone.")


def _index(files: list[Path]) -> dict[str, tuple[Path, str]]:
    """Normalised tensor name -> (file, name in that file)."""
    from safetensors import safe_open
    index = {}
    for file in files:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                index[_normalized(key)] = (file, key)
    return index


def _pairs(tuned: list[Path], base: list[Path]) -> Iterator[tuple[str, "object", "object"]]:
    """(name, tuned tensor, base tensor) for every layer tensor present on both sides, one at a time."""
    from safetensors import safe_open
    base_index = _index(base)
    for file in tuned:
        with safe_open(str(file), "pt") as handle:
            for key in handle.keys():
                name = _normalized(key)
                if not _LAYER_TENSOR.search(name) or name not in base_index:
                    continue
                base_file, base_key = base_index[name]
                with safe_open(str(base_file), "pt") as other:
                    yield name, handle.get_tensor(key), other.get_tensor(base_key)


def layer_updates(tuned: str | Path, base: str | Path,
                  shapes: dict[str, list[int]] | None = None) -> dict[int, dict[str, float]]:
    """layer -> module type -> mean |W_tuned − W_base| over that module type's elements (float64);
    only tensors present in both (their shapes go into ``shapes`` when given). Raises
    AnalysisError when nothing can be compared or shapes differ."""
    sums: dict[int, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, a, b in _pairs(weight_files(tuned), weight_files(base)):
        if a.shape != b.shape:
            raise AnalysisError(f"{name}: shape {tuple(a.shape)} in {tuned} but {tuple(b.shape)} in {base}: "
                                "they are not the same model")
        if shapes is not None:
            shapes[name] = list(a.shape)
        layer, module = _LAYER_TENSOR.search(name).group(1, 2)
        sums[int(layer)][module] += float((a.double() - b.double()).abs().sum())
        counts[int(layer)][module] += a.numel()
    if not sums:
        raise AnalysisError(f"no transformer-layer tensor of {tuned} is also in {base}: nothing to compare")
    return {layer: {m: sums[layer][m] / counts[layer][m] for m in sorted(sums[layer])} for layer in sorted(sums)}


def rank_layers(target: dict[int, dict[str, float]], reference: dict[int, dict[str, float]]) -> list[dict]:
    """Layers by how much more they change in ``target`` than in ``reference`` (score: the mean over
    the module types both measured of target − reference), highest first."""
    ranking = []
    for layer in sorted(set(target) & set(reference)):
        modules = sorted(set(target[layer]) & set(reference[layer]))
        if modules:
            diffs = [target[layer][m] - reference[layer][m] for m in modules]
            ranking.append({"layer": layer, "score": sum(diffs) / len(diffs),
                            "target": sum(target[layer][m] for m in modules) / len(modules),
                            "reference": sum(reference[layer][m] for m in modules) / len(modules)})
    return sorted(ranking, key=lambda row: (-row["score"], row["layer"]))


def plot_heatmap(updates: dict[int, dict[str, float]], path: Path, title: str, diverging: bool = False) -> None:
    """Layers (rows) × module types (columns) as a PNG, written atomically."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from xlt_runner.fileio import atomic_path
    layers = sorted(updates)
    modules = sorted({m for row in updates.values() for m in row})
    grid = np.array([[updates[layer].get(m, math.nan) for m in modules] for layer in layers])
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(modules), 1.5 + 0.3 * len(layers)))
    if diverging:
        bound = float(np.nanmax(np.abs(grid))) or 1.0
        image = ax.imshow(grid, aspect="auto", cmap="RdBu_r", vmin=-bound, vmax=bound)
    else:
        image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(modules)), modules, rotation=45, ha="right")
    ax.set_yticks(range(len(layers)), [str(layer) for layer in layers])
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="mean |ΔW|")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def analyze_layers(run_a: Path, run_b: Path, base: Path, out: Path) -> dict:
    """Updates of ``run_a`` and ``run_b`` against ``base``, their heatmaps and the ranking
    (written to ``out``); returns the ranking file's content."""
    from xlt_runner.fileio import write_json_atomic
    shapes: dict[str, list[int]] = {}
    a, b = layer_updates(run_a, base, shapes), layer_updates(run_b, base, shapes)
    if sorted(a) != sorted(b):
        raise AnalysisError(f"{run_a} and {run_b} changed different layers ({sorted(a)} vs {sorted(b)}) "
                            "against the same base: not runs of the same model")
    out.mkdir(parents=True, exist_ok=True)
    plot_heatmap(a, out / "updates_a.png", f"mean |ΔW|: {run_a} vs base")
    plot_heatmap(b, out / "updates_b.png", f"mean |ΔW|: {run_b} vs base")
    difference = {layer: {m: a[layer][m] - b[layer][m] for m in a[layer] if m in b[layer]} for layer in a}
    plot_heatmap(difference, out / "updates_a_minus_b.png", "mean |ΔW| A − B (red: A moved more)", diverging=True)
    result = {"format": RANKING_FORMAT, "run_a": str(run_a), "run_b": str(run_b), "base": str(base),
              "num_layers_compared": len(a), "layers": max(a) + 1,
              "tensor_shapes": shapes,  # of every layer tensor compared: a model to use the ranking on must match
              "ranking": rank_layers(a, b), "updates_a": {str(k): v for k, v in a.items()},
              "updates_b": {str(k): v for k, v in b.items()}}
    write_json_atomic(out / RANKING_FILE, result)
    return result


def check_ranking_model(path: str | Path, parameters: dict[str, tuple[int, ...]]) -> None:
    """Refuse a ranking made on another model: every layer tensor it compared must be among
    ``parameters`` (name -> shape) with the same shape. Rankings written before shapes were
    recorded are checked by depth only (:func:`top_layers`)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    for name, shape in (data.get("tensor_shapes") or {}).items():
        if name not in parameters or tuple(parameters[name]) != tuple(shape):
            found = f"shape {list(parameters[name])}" if name in parameters else "no such tensor"
            raise AnalysisError(f"{path} ranks another model: its {name} has shape {shape}, this model has {found} "
                                f"(it compared {data.get('run_a')} and {data.get('run_b')})")


def top_layers(path: str | Path, top: int, depth: int) -> list[int]:
    """The ``top`` highest-ranked layers of a ranking file, for a ``depth``-layer model. Raises
    AnalysisError for a file that is not a ranking, was made for another depth, or has too few layers."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        ranking = [int(row["layer"]) for row in data["ranking"]]
        layers = int(data["layers"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AnalysisError(f"{path}: not a layer ranking written by `xlt-analyze layers` ({exc})") from None
    if layers != depth:
        raise AnalysisError(f"{path} ranks the layers of a {layers}-layer model; this model has {depth}")
    if not 1 <= top <= len(ranking):
        raise AnalysisError(f"top={top}: {path} ranks {len(ranking)} layers")
    return sorted(ranking[:top])
