"""Triton kernels of `llm`, imported as `llm.kernels` (the `triton` backend's ops).

  layernorm     layer_norm: forward and backward
  attention     attention (causal flash attention, forward and backward) and
                cached_attention (split-KV decode; flash forward over a cache)
  matmul        matmul: tiled matmul with fused epilogues (bias, GELU, GELU backward, row sums)
  mlp           mlp: GPT-2's MLP block on the matmul of matmul.py
  lm_head_loss  lm_head_loss: the lm_head projection fused with cross-entropy, in chunks

Each file opens with its algorithm, references and limits. Importing this package imports
nothing from triton; each kernel module does, on use. The ahead-of-time compile check of
every kernel for sm_80 / sm_90 is a developer tool outside the package: tools/aot.py.
"""
