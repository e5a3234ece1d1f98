"""Language-identification probe on a trained method's representations (XPE paper, Table 4).

The backbone and the trained method (e.g. its soft prompt) stay frozen; their pooled
representation of each sentence (what the classification head reads) is extracted for
``regime.probe_train_per_language`` train and ``regime.probe_test_per_language`` test
sentences of every probe language, and a linear classifier (standardised features,
full-batch Adam) learns to predict the language; ``regime.probe_seeds`` probes are
trained on the same features and examples, differing only in their initialisation, and averaged
(the XPE paper: 5 per trained prompt; what its seeds vary is not stated). On standardised
features the problem is nearly convex, so the seeds' spread is small. Lower
test accuracy means the representation carries less language identity, i.e. is more
language-agnostic. Per-group scores are means of per-language recall (paper, Table 4).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def extract_features(method, tokenizer, texts: list[str], *, max_length: int, prefix: str, batch_size: int,
                     device: torch.device) -> torch.Tensor:
    """Pooled representations ``(len(texts), hidden)`` in input order (batches sorted by length)."""
    encoded = tokenizer([prefix + t for t in texts], truncation=True, max_length=max_length)["input_ids"]
    order = np.argsort([-len(x) for x in encoded], kind="stable")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[torch.Tensor] = [None] * len(texts)  # type: ignore[list-item]
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, :len(encoded[i])] = 1
        pooled = method.encode({"input_ids": ids.to(device), "attention_mask": mask.to(device)}).float().cpu()
        for row, i in enumerate(idx):
            out[i] = pooled[row]
    return torch.stack(out)


def language_id_probe(method, benchmark, tokenizer, languages: list[str], cfg) -> dict:
    """Train ``regime.probe_seeds`` linear language-ID probes (initialisation seeds 0..n-1) on
    the same features and average them. Returns ``accuracy`` (all test examples),
    ``per_language_recall`` (share of a language's test sentences identified as it; the runner
    averages it per report group, the XPE paper's Table 4 cells), ``per_seed`` and sizes;
    fractions in [0, 1]."""
    r = cfg.regime
    if len(languages) < 2:
        raise ValueError(f"regime.probe_languages selects {len(languages)} language(s); the probe needs at least 2")
    from xlt_runner.models import resolve_device
    device = resolve_device(cfg.model.device)
    method.to(device).eval()
    features, labels = {}, {}
    for split, per_language in (("train", r.probe_train_per_language), ("test", r.probe_test_per_language)):
        split_name = cfg.benchmark.train_split if split == "train" else cfg.benchmark.test_split
        texts, ys = [], []
        for y, lang in enumerate(languages):
            examples = benchmark.load(lang, split_name)[:per_language]
            texts += [ex.text for ex in examples]
            ys += [y] * len(examples)
        features[split] = extract_features(method, tokenizer, texts, max_length=cfg.model.max_length,
                                           prefix=cfg.model.text_prefix, batch_size=cfg.benchmark.eval_batch_size,
                                           device=device)
        labels[split] = torch.tensor(ys)
    mean, std = features["train"].mean(0), features["train"].std(0).clamp(min=1e-6)
    x_train, x_test = (features["train"] - mean) / std, (features["test"] - mean) / std
    per_seed, recalls = [], []
    for probe_seed in range(r.probe_seeds):
        predictions, train_loss = train_linear_probe(x_train, labels["train"], x_test, len(languages),
                                                     seed=probe_seed, epochs=r.probe_epochs, lr=r.probe_lr)
        correct = (predictions == labels["test"]).double()
        recall = torch.zeros(len(languages), dtype=torch.float64).index_add_(0, labels["test"], correct)
        recall /= torch.bincount(labels["test"], minlength=len(languages)).clamp(min=1)
        recalls.append(recall)
        per_seed.append({"probe_seed": probe_seed, "accuracy": float(correct.mean()), "train_loss": train_loss})
    recall = torch.stack(recalls).mean(0)
    return {"accuracy": float(np.mean([s["accuracy"] for s in per_seed])), "probe_seeds": r.probe_seeds,
            "per_language_recall": {lang: float(recall[i]) for i, lang in enumerate(languages)}, "per_seed": per_seed,
            "n_languages": len(languages), "chance": 1.0 / len(languages),
            "train_examples": len(labels["train"]), "test_examples": len(labels["test"])}


def train_linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, num_classes: int, *,
                       seed: int, epochs: int, lr: float) -> tuple[torch.Tensor, float]:
    """Full-batch Adam on a linear classifier (weights drawn from ``seed``); returns the test
    predictions and the final training loss."""
    generator = torch.Generator().manual_seed(seed)
    probe = nn.Linear(x_train.shape[1], num_classes)
    with torch.no_grad():
        probe.weight.normal_(0, 0.01, generator=generator)
        probe.bias.zero_()
    optimizer = torch.optim.Adam(probe.parameters(), lr=lr, weight_decay=1e-4)
    for _ in range(epochs):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(probe(x_train), y_train)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return probe(x_test).argmax(-1), float(loss.detach())
