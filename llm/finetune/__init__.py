"""Fine-tuning a pretrained GPT-2: classification and instruction tuning, with LoRA.

    config.py         FinetuneConfig, ClassifyConfig, InstructConfig (every setting, with its help)
    lora.py           LoRA adapters: inject, merge / unmerge, remove, PEFT-compatible save / load
    classify.py       GPTForSequenceClassification: the last real token's hidden state -> labels
    classify_data.py  CSV / TSV / JSONL / SMS Spam Collection data, labels, splits, batches
    metrics.py        accuracy, per-class precision / recall / F1, confusion matrix (text, JSON, PNG)
    classify_run.py   finetune_classifier()
    instruct.py       prompt templates, Alpaca-format data, the collate function
    instruct_run.py   finetune_instruct(), generate_answers()
    runs.py           what both runs share around the training loop (llm.training.trainer.fit)
"""

from .classify import GPTForSequenceClassification
from .classify_run import ClassifyResult, evaluate_classifier, finetune_classifier
from .config import ClassifyConfig, FinetuneConfig, InstructConfig
from .instruct import TEMPLATES, PromptTemplate, collate, get_template, read_instructions
from .instruct_run import InstructResult, finetune_instruct, generate_answers, model_template
from .lora import (LoRAConfig, LoRALinear, inject_lora, load_adapter, lora_layers, merge_lora, remove_lora,
                   save_adapter, unmerge_lora)

__all__ = ["ClassifyConfig", "ClassifyResult", "FinetuneConfig", "GPTForSequenceClassification", "InstructConfig",
           "InstructResult", "LoRAConfig", "LoRALinear", "PromptTemplate", "TEMPLATES", "collate",
           "evaluate_classifier", "finetune_classifier", "finetune_instruct", "generate_answers", "get_template",
           "inject_lora", "load_adapter", "lora_layers", "merge_lora", "model_template", "read_instructions",
           "remove_lora", "save_adapter", "unmerge_lora"]
