"""Classification (SIB-200, the CLDR demo): a label per text, accuracy and macro-F1 per language."""
from __future__ import annotations

from xlt_runner.metrics.spec import CLASSIFICATION_METRICS
from xlt_runner.tasks import TASK_KINDS, TaskKind


@TASK_KINDS.register("classification")
class Classification(TaskKind):
    """Encoder + head; the best checkpoint by source-dev accuracy (default) or loss."""
    metrics = CLASSIFICATION_METRICS
    primary_metric = "accuracy"
    monitors = {"val/accuracy": "max", "val/loss": "min"}
    model_kinds = ("encoder",)

    def datamodule(self, source: list[str], targets: list[str], max_steps: int):
        from xlt_runner.data.classification import ClassificationDataModule
        cfg, b = self.cfg, self.cfg.benchmark
        return ClassificationDataModule(
            self.benchmark, self.backbone.tokenizer, source_languages=source, target_languages=targets,
            max_length=cfg.model.max_length, text_prefix=cfg.model.text_prefix,
            batch_size=b.batch_size, eval_batch_size=b.eval_batch_size,
            num_training_batches=max_steps * cfg.trainer.accumulate_grad_batches, seed=cfg.seed,
            cache_dir=cfg.paths.cache_dir, train_split=b.train_split, dev_split=b.dev_split, test_split=b.test_split,
            max_train_examples_per_language=b.max_train_examples_per_language,
            max_eval_examples_per_language=b.max_eval_examples_per_language, num_workers=b.num_workers)

    def method_task(self, datamodule, source: list[str]):
        from xlt_runner.methods.base import ClassificationTask
        return ClassificationTask(labels=list(self.benchmark.labels), eval_languages=datamodule.eval_languages,
                                  source_languages=source)

    def subsample_rule(self) -> dict:
        from xlt_runner.data.classification import SUBSAMPLE_SEED
        return {"stratified_by": "label", "seed": SUBSAMPLE_SEED}
