"""llm: a GPT-2 engine with a pure-PyTorch reference and Triton / C++ / CUDA fast paths."""

from .config import PRESETS, GPTConfig
from .generation import GenerationConfig
from .interop.transformers import patch_transformers, unpatch_transformers
from .model import GPT
from .ops import BackendUnavailableError, available_backends, get_ops
from .tokenizer import get_tokenizer
from .training import train

__all__ = [
    "GPT",
    "GPTConfig",
    "GenerationConfig",
    "PRESETS",
    "BackendUnavailableError",
    "available_backends",
    "get_ops",
    "get_tokenizer",
    "patch_transformers",
    "train",
    "unpatch_transformers",
]
__version__ = "0.1.0"
