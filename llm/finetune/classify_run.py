"""Classification fine-tuning: `finetune_classifier(model, data, out_dir, ...)`.

A GPT-2 folder gets a new head for the training split's labels; `train` picks what trains
(head, last-k, all, lora); the training loop is pretraining's (`llm.training.trainer.fit`:
checkpoints, exact resume, progress bar, loss.png, Ctrl-C, NaN stop, time limit). Each
evaluation scores the validation split (loss, accuracy, per-class precision / recall / F1,
confusion matrix), logs a line and writes `metrics_validation.json` and
`confusion_validation.png`. At the end `out_dir` holds the classifier (config.json +
model.safetensors; LoRA merged in, and the adapter alone in `adapter/`), and `metrics.json`
with the train, validation and test scores, with a confusion PNG per split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..fileio import atomic_write_text
from ..training.evaluation import autocast_context
from ..training.progress import logger
from ..training.lock import run_lock
from ..training.trainer import Evaluation, Job, TrainResult, checked_out_dir, fit
from .classify import GPTForSequenceClassification
from .classify_data import (ClassificationDataset, class_weights, collate, label_ids, label_names, balance,
                            read_examples, stratified_split)
from .config import ClassifyConfig, parse_fractions
from .lora import remove_lora, save_adapter
from .metrics import ClassificationMetrics, write_confusion_png
from .runs import (batch_iterator, check_resumed, count_params, files_identity, load_base, load_trainable,
                   plan_finetune, resolve_plan, select_trainable, trainable_state)

SPLITS = ("train", "validation", "test")


@dataclass
class ClassifyResult:
    out_dir: Path
    labels: list[str]
    training: TrainResult
    metrics: dict  # split name -> ClassificationMetrics (splits that have examples)


def finetune_classifier(model, data, out_dir, *, val_data=None, test_data=None, backend: str | None = None,
                        resume: bool = False, overwrite: bool = False, progress: bool = True, callback=None,
                        **settings) -> ClassifyResult:
    """Fine-tune the GPT-2 folder (or hub name) `model` as a classifier of `data` into `out_dir`.

    `data`: CSV, TSV, JSONL or the SMS Spam Collection file; split by `split` (stratified,
    seeded) unless `val_data` and `test_data` are given. `settings`: `ClassifyConfig` fields.
    Resuming (`resume=True`) continues the newest checkpoint with the same base model, data
    and settings (those in `llm.finetune.config.RESUME_MAY_CHANGE` may change).
    """
    out_dir = checked_out_dir(out_dir)
    with run_lock(out_dir):  # one run per folder, from planning to the last file written
        return _run(model, data, out_dir, val_data, test_data, backend, resume, overwrite, progress, callback,
                    settings)


def _run(model, data, out_dir: Path, val_data, test_data, backend, resume, overwrite, progress, callback,
         settings) -> ClassifyResult:
    plan = plan_finetune(out_dir, ClassifyConfig, resume, overwrite, settings)
    cfg = plan.cfg
    splits, sources = _read_splits(data, val_data, test_data, cfg)
    labels = label_names(splits["train"])
    ids = {name: label_ids(split, labels, name) for name, split in splits.items()}
    torch.manual_seed(cfg.seed)  # the head and the adapters
    gpt, base_identity = load_base(model, backend, cfg)
    info = {"task": "classify", "base_model": base_identity, "data": files_identity(sources), "labels": labels}
    check_resumed(plan, "classify", info)
    n_pos = gpt.config.n_positions
    sets = {name: ClassificationDataset(splits[name], ids[name]) for name in SPLITS}
    max_length = cfg.max_length or min(n_pos, sets["train"].longest())
    if max_length > n_pos:
        raise ValueError(f"max_length {max_length} exceeds the model's n_positions={n_pos}")
    for s in sets.values():
        s.truncate(max_length)
    clf = GPTForSequenceClassification(gpt, labels, max_length)
    trains = select_trainable(gpt, clf.score, cfg)
    weights = class_weights(cfg.class_weights, ids["train"], len(labels))
    resolve_plan(plan, len(sets["train"]))
    cfg = plan.cfg
    job = _job(clf, sets, weights, cfg, out_dir, base_identity["source"])
    counts = ", ".join(f"{len(sets[s]):,} {s}" for s in SPLITS)
    job.describe = (f"model: {base_identity['source']}, {count_params(clf) / 1e6:.2f}M parameters, "
                    f"{count_params(clf, True) / 1e6:.3f}M trained ({trains}); data: {counts} examples, "
                    f"labels {labels}, at most {max_length} tokens each")
    job.title = f"classification ({cfg.train}), {Path(sources[0]).name}"
    job.info = info
    result = fit(job, plan, out_dir, progress, callback)
    metrics = _final_metrics(clf, sets, weights, cfg, out_dir, logger(progress))
    return ClassifyResult(out_dir, labels, result, metrics)


def _read_splits(data, val_data, test_data, cfg: ClassifyConfig) -> tuple[dict, list[Path]]:
    """{split name: examples} and the files they came from."""
    read = lambda p: read_examples(p, cfg.format, cfg.text_column, cfg.label_column)  # noqa: E731
    if (val_data is None) != (test_data is None):
        raise ValueError("pass both val_data and test_data, or neither (then data is split)")
    examples = read(data)
    if cfg.balance == "downsample":
        examples = balance(examples, cfg.seed)
    if val_data is None:
        train, val, test = stratified_split(examples, parse_fractions(cfg.split, 3), cfg.seed)
        return {"train": train, "validation": val, "test": test}, [Path(data)]
    return {"train": examples, "validation": read(val_data), "test": read(test_data)}, \
        [Path(data), Path(val_data), Path(test_data)]


def _job(clf: GPTForSequenceClassification, sets: dict, weights, cfg: ClassifyConfig, out_dir: Path,
         base_model: str) -> Job:
    device = cfg.device

    def loss(batch):
        ids, mask, labels = (t.to(device) for t in batch)
        return clf.loss(ids, labels, mask, weights)

    def validate() -> Evaluation:
        m = evaluate_classifier(clf, sets["validation"], cfg.batch_size, device, cfg.dtype, weights,
                                cfg.eval_batches)
        _write_split_metrics(out_dir, "validation", m)
        return Evaluation(m.loss, f"val accuracy {m.accuracy:.2%}, macro F1 {m.macro_f1:.3f}")

    def save(folder: Path) -> None:
        if cfg.train == "lora":
            save_adapter(folder / "adapter", clf.gpt, cfg.lora_config(), "SEQ_CLS", base_model,
                         extra={"score.weight": clf.score.weight})
            remove_lora(clf.gpt)  # merged: the saved classifier runs at full speed
        clf.save_pretrained(folder)

    return Job(clf, loss, lambda start: batch_iterator(sets["train"], cfg.batch_size, cfg.seed, start, collate),
               tokens=lambda batch: int(batch[1].sum()), save=save,
               validate=validate if len(sets["validation"]) else None,
               state_dict=trainable_state(clf), load_state_dict=load_trainable(clf))


@torch.no_grad()
def evaluate_classifier(clf: GPTForSequenceClassification, dataset: ClassificationDataset, batch_size: int = 8,
                        device: str = "cpu", dtype: str = "float32", weights=None,
                        max_batches: int | None = None) -> ClassificationMetrics:
    """Loss (weighted as in training), accuracy, per-class scores and confusion of the model
    on `dataset`, in order (the first max_batches batches)."""
    was_training = clf.training
    clf.eval()
    n = len(dataset) if max_batches is None else min(len(dataset), max_batches * batch_size)
    logits, labels = [], []
    for start in range(0, n, batch_size):
        ids, mask, y = collate([dataset[i] for i in range(start, min(n, start + batch_size))])
        with autocast_context(device, dtype):
            logits.append(clf(ids.to(device), mask.to(device)).float().cpu())
        labels.append(y)
    clf.train(was_training)
    logits, labels = torch.cat(logits), torch.cat(labels)
    loss = float(F.cross_entropy(logits, labels, weight=weights))
    return ClassificationMetrics.from_predictions(clf.labels, labels, logits.argmax(-1), loss)


def _write_split_metrics(out_dir: Path, split: str, m: ClassificationMetrics) -> None:
    atomic_write_text(out_dir / f"metrics_{split}.json", json.dumps(m.to_dict(), indent=1) + "\n")
    write_confusion_png(out_dir / f"confusion_{split}.png", m, f"{split}: accuracy {m.accuracy:.1%}")


def _final_metrics(clf, sets: dict, weights, cfg: ClassifyConfig, out_dir: Path, log) -> dict:
    """Every split's metrics, logged, in metrics.json and one confusion PNG per split."""
    metrics = {}
    for name in SPLITS:
        if len(sets[name]):
            m = metrics[name] = evaluate_classifier(clf, sets[name], cfg.batch_size, cfg.device, cfg.dtype, weights)
            _write_split_metrics(out_dir, name, m)
            log(f"{name}: {m.summary()} ({m.total} examples)\n{m.table()}")
    atomic_write_text(out_dir / "metrics.json",
                      json.dumps({k: m.to_dict() for k, m in metrics.items()}, indent=1) + "\n")
    return metrics
