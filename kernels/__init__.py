"""Triton kernels of `llm`, imported as `llm.kernels` (the `triton` backend).

Importing this package imports nothing from triton; each kernel module does, on use.
"""
