"""Instruction fine-tuning: `finetune_instruct(model, data, out_dir, ...)`.

Alpaca-format data, one prompt template, the book's collate (padding, the first end-of-text
kept as a target, -100 elsewhere, optional prompt masking); the loss is `GPT.loss`, i.e. the
op table's `lm_head_loss` with ignore_index -100, so a fused backend never holds the logits.
The loop is pretraining's (`llm.training.trainer.fit`). At the end `out_dir` holds the model
(LoRA merged in; the adapter alone in `adapter/`), its template in config.json
(`prompt_template`, which `llm chat` reads), and `test_answers.json`: for every test example
{instruction, input, output, model_response}, generated greedily in batches by the engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..fileio import atomic_write_text
from ..generation import GenerationConfig
from ..model import GPT
from ..ops import IGNORE_INDEX
from ..tokenizer import EOT_TOKEN, get_tokenizer
from ..training.evaluation import autocast_context
from ..training.progress import logger, progress_bar
from ..training.lock import run_lock
from ..training.trainer import Evaluation, Job, TrainResult, checked_out_dir, fit
from .config import InstructConfig, parse_fractions
from .instruct import (Instruction, PromptTemplate, collate, encode_instructions, get_template, has_targets,
                       random_split, read_instructions)
from .lora import remove_lora, save_adapter
from .runs import (batch_iterator, check_resumed, count_params, files_identity, load_base, load_trainable,
                   plan_finetune, resolve_plan, select_trainable, trainable_state)

TEMPLATE_KEY = "prompt_template"  # in config.json: the template a model was tuned with


@dataclass
class InstructResult:
    out_dir: Path
    training: TrainResult
    val_loss: float | None
    answers: Path | None  # test_answers.json (None: no test split)


def model_template(gpt: GPT, default: str = "alpaca") -> PromptTemplate:
    """The template `gpt` was tuned with (config.json's prompt_template), else `default`."""
    saved = gpt.config.extra.get(TEMPLATE_KEY)
    return PromptTemplate.from_dict(saved, "config.json prompt_template") if saved else get_template(default)


def finetune_instruct(model, data, out_dir, *, val_data=None, test_data=None, backend: str | None = None,
                      resume: bool = False, overwrite: bool = False, progress: bool = True, callback=None,
                      **settings) -> InstructResult:
    """Instruction-tune the GPT-2 folder (or hub name) `model` on the Alpaca-format `data`.

    Split by `split` (seeded) unless `val_data` and `test_data` are given; `settings`:
    `InstructConfig` fields. Resuming as `llm.finetune.finetune_classifier`.
    """
    out_dir = checked_out_dir(out_dir)
    with run_lock(out_dir):  # one run per folder, from planning to the last file written
        return _run(model, data, out_dir, val_data, test_data, backend, resume, overwrite, progress, callback,
                    settings)


def _run(model, data, out_dir: Path, val_data, test_data, backend, resume, overwrite, progress, callback,
         settings) -> InstructResult:
    plan = plan_finetune(out_dir, InstructConfig, resume, overwrite, settings)
    cfg = plan.cfg
    template = get_template(cfg.template)
    splits, sources = _read_splits(data, val_data, test_data, cfg)
    torch.manual_seed(cfg.seed)  # the adapters
    gpt, base_identity = load_base(model, backend, cfg)
    info = {"task": "instruct", "base_model": base_identity, "data": files_identity(sources)}
    check_resumed(plan, "instruct", info)
    log = logger(progress)
    sets, max_length = _encode_splits(splits, template, cfg, gpt.config.n_positions, log)
    trains = select_trainable(gpt, None, cfg)
    resolve_plan(plan, len(sets["train"]))
    cfg = plan.cfg
    job = _job(gpt, sets, template, cfg, max_length, base_identity["source"])
    counts = ", ".join(f"{len(sets[s]):,} {s}" for s in ("train", "validation")) + f", {len(splits['test']):,} test"
    job.describe = (f"model: {base_identity['source']}, {count_params(gpt) / 1e6:.2f}M parameters, "
                    f"{count_params(gpt, True) / 1e6:.3f}M trained ({trains}); data: {counts} examples, "
                    f"template {template.name}, at most {max_length} tokens each")
    job.title = f"instruction tuning ({cfg.train}), {Path(sources[0]).name}"
    job.info = info
    result = fit(job, plan, out_dir, progress, callback)
    if result.final_val_loss is not None:
        log(f"validation loss {result.final_val_loss:.4f}, perplexity {math.exp(min(result.final_val_loss, 50)):.2f}")
    answers = None
    if splits["test"]:
        records = generate_answers(gpt, splits["test"], template, cfg.batch_size, cfg.max_new_tokens, progress)
        answers = out_dir / "test_answers.json"
        atomic_write_text(answers, json.dumps(records, indent=1, ensure_ascii=False) + "\n")
        log(f"{len(records)} test answers written to {answers}")
    return InstructResult(out_dir, result, result.final_val_loss, answers)


def _read_splits(data, val_data, test_data, cfg: InstructConfig) -> tuple[dict, list[Path]]:
    if (val_data is None) != (test_data is None):
        raise ValueError("pass both val_data and test_data, or neither (then data is split)")
    items = read_instructions(data)
    if val_data is None:
        train, val, test = random_split(items, parse_fractions(cfg.split, 3), cfg.seed)
        return {"train": train, "validation": val, "test": test}, [Path(data)]
    return ({"train": items, "validation": read_instructions(val_data), "test": read_instructions(test_data)},
            [Path(data), Path(val_data), Path(test_data)])


def _encode_splits(splits: dict, template: PromptTemplate, cfg: InstructConfig, n_positions: int, log):
    """{"train", "validation": encoded examples that keep a target} and the max length."""
    encoded = {name: encode_instructions(splits[name], template) for name in ("train", "validation")}
    max_length = cfg.max_length or min(n_positions, max(len(e.ids) - 1 for e in encoded["train"]))
    if max_length > n_positions:
        raise ValueError(f"max_length {max_length} exceeds the model's n_positions={n_positions}")
    mask = cfg.prompt_loss == "mask"
    sets = {}
    for name, rows in encoded.items():
        sets[name] = [e for e in rows if has_targets(e, max_length, mask)]
        if len(sets[name]) < len(rows):
            log(f"{len(rows) - len(sets[name])} {name} example(s) skipped: their prompt fills max_length "
                f"{max_length}, nothing is left to learn")
    if not sets["train"]:
        raise ValueError(f"no training example keeps a response within max_length {max_length}")
    return sets, max_length


def _job(gpt: GPT, sets: dict, template: PromptTemplate, cfg: InstructConfig, max_length: int,
         base_model: str) -> Job:
    mask = cfg.prompt_loss == "mask"
    batch_fn = lambda rows: collate(rows, max_length, mask)  # noqa: E731
    lengths = [len(e.ids) for e in sets["train"]] if cfg.batch_order == "by-length" else None

    def loss(batch):
        x, y, _ = batch
        return gpt.loss(x.to(cfg.device), y.to(cfg.device))

    def validate() -> Evaluation:
        val = evaluate_instruct(gpt, sets["validation"], batch_fn, cfg.batch_size, cfg.device, cfg.dtype,
                                cfg.eval_batches)
        return Evaluation(val, f"val perplexity {math.exp(min(val, 50)):.2f}")

    def save(folder: Path) -> None:
        if cfg.train == "lora":
            save_adapter(folder / "adapter", gpt, cfg.lora_config(), "CAUSAL_LM", base_model)
            remove_lora(gpt)  # merged: the saved model generates at full speed
        gpt.config.extra[TEMPLATE_KEY] = template.to_dict()
        gpt.save_pretrained(folder)

    return Job(gpt, loss, lambda start: batch_iterator(sets["train"], cfg.batch_size, cfg.seed, start, batch_fn,
                                                       lengths),
               tokens=lambda batch: batch[2], save=save, validate=validate if sets["validation"] else None,
               state_dict=trainable_state(gpt), load_state_dict=load_trainable(gpt))


@torch.no_grad()
def evaluate_instruct(gpt: GPT, rows: list, batch_fn, batch_size: int, device: str = "cpu",
                      dtype: str = "float32", max_batches: int | None = None) -> float:
    """Mean loss per target token over `rows` in order (the first max_batches batches)."""
    was_training = gpt.training
    gpt.eval()
    n = len(rows) if max_batches is None else min(len(rows), max_batches * batch_size)
    total, count = 0.0, 0
    for start in range(0, n, batch_size):
        x, y, _ = batch_fn(rows[start:start + batch_size])
        k = int((y != IGNORE_INDEX).sum())
        with autocast_context(device, dtype):
            total += float(gpt.loss(x.to(device), y.to(device))) * k
        count += k
    gpt.train(was_training)
    return total / max(count, 1)


def generate_answers(gpt: GPT, items: list[Instruction], template: PromptTemplate, batch_size: int = 8,
                     max_new_tokens: int = 256, progress: bool = True) -> list[dict]:
    """{instruction, input, output, model_response} per item, greedy, in batches of prompts of
    similar length (left padded); an answer ends at <|endoftext|> or a template stop string."""
    enc, n_pos = get_tokenizer(), gpt.config.n_positions
    prompts = enc.encode_ordinary_batch([template.prompt(it.instruction, it.input) for it in items])
    order = sorted(range(len(items)), key=lambda i: len(prompts[i]))
    answers = [""] * len(items)
    gen = GenerationConfig(eos_token_id=EOT_TOKEN, stop_strings=list(template.stop_strings) or None)
    device = gpt.transformer.wte.weight.device
    was_training = gpt.training
    gpt.eval()  # no dropout while answering
    bar = progress_bar(progress, 0, len(items))
    bar.set_description("test answers")
    for start in range(0, len(order), batch_size):
        rows = [i for i in order[start:start + batch_size] if len(prompts[i]) < n_pos]  # longer: no room
        if rows:
            T = max(len(prompts[i]) for i in rows)
            ids = torch.full((len(rows), T), EOT_TOKEN, dtype=torch.long)
            mask = torch.zeros(len(rows), T, dtype=torch.long)
            for r, i in enumerate(rows):
                ids[r, T - len(prompts[i]):], mask[r, T - len(prompts[i]):] = torch.tensor(prompts[i]), 1
            out = gpt.generate(ids.to(device), min(max_new_tokens, n_pos - T), attention_mask=mask.to(device),
                               generation_config=gen, return_dict=True)
            for r, i in enumerate(rows):
                answers[i] = out.texts[r].strip()
        bar.update(len(order[start:start + batch_size]))
    bar.close()
    gpt.train(was_training)
    return [{**it.record(), "model_response": a} for it, a in zip(items, answers)]
