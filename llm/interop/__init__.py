"""GPT-2 weights in the shapes other tools hold them.

  transformers.py  `patch_transformers` / `unpatch_transformers`: transformers' GPT-2 on llm's
                   op table; `read_model` behind `GPT.from_transformers`
  book.py          "Build a Large Language Model (From Scratch)" `GPTModel` checkpoints in
  gguf.py          GGUF out, for llama.cpp and ollama (needs the `gguf` package)

Importing this package imports neither transformers nor gguf.
"""
