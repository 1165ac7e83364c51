"""Generation: batched, left-padded decoding on a static KV cache, every sampling control,
stop strings, streaming, and CUDA graphs; the slots of a continuous batch.

  api.py         generate / stream: arguments, text per row, results
  engine.py      the batch state and the decode loop on a `Decoder`
  cuda_graph.py  the decode step captured in a CUDA graph
  slots.py       a fixed pool of KV-cache slots (continuous batching, `llm serve`)
  sampling.py    penalties, temperature, top-k / top-p / min-p, the draw
  text.py        token ids to UTF-8-safe text deltas, stop strings, finish reasons
  config.py      GenerationConfig and Hugging Face's generation_config.json
"""

from .api import GenerationChunk, GenerationOutput, encode_prompts, generate, resolve_config, stream
from .config import GenerationConfig

__all__ = ["GenerationChunk", "GenerationConfig", "GenerationOutput", "encode_prompts", "generate",
           "resolve_config", "stream"]
