"""Chat messages to one prompt string.

An instruction-tuned model says how it was taught to read a conversation: Hugging Face's
`chat_template` (Jinja, in `tokenizer_config.json` or `chat_template.jinja` of the model
folder). Such a template is rendered as transformers renders it (`messages`,
`add_generation_prompt=True`, `bos_token` / `eos_token`), in Jinja's sandbox. A model without
one (GPT-2 and other base models) gets the plain concatenation of the message contents, one
per line, ending with a newline for the model to continue after. `/v1/models` states which.
"""

from __future__ import annotations

import json
from pathlib import Path

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

EOT = "<|endoftext|>"


class PromptTemplate:
    """`render(messages) -> str`; `kind` is "chat_template" or "plain"."""

    def __init__(self, source: str | None = None, origin: str = ""):
        self.source, self.origin = source, origin
        self.kind = "plain" if source is None else "chat_template"
        self._template = None
        if source is not None:
            env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
            env.globals["raise_exception"] = _raise
            try:
                self._template = env.from_string(source)
            except TemplateError as e:
                raise ValueError(f"{origin}: the chat template does not parse: {e}") from e

    @classmethod
    def from_model_dir(cls, folder: str | Path | None) -> "PromptTemplate":
        """The model folder's chat template, else plain concatenation."""
        if folder is None:
            return cls()
        folder = Path(folder)
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return cls(jinja.read_text(), str(jinja))
        config = folder / "tokenizer_config.json"
        if config.is_file():
            try:
                source = json.loads(config.read_text()).get("chat_template")
            except (json.JSONDecodeError, AttributeError) as e:
                raise ValueError(f"{config}: not a JSON object ({e})") from e
            if isinstance(source, str):
                return cls(source, str(config))
        return cls()

    def render(self, messages: list[dict]) -> str:
        """messages: [{"role": ..., "content": str}]; ValueError when the template refuses."""
        if self._template is None:
            return "".join(m["content"] + "\n" for m in messages)
        try:
            return self._template.render(messages=messages, add_generation_prompt=True, bos_token=EOT,
                                         eos_token=EOT)
        except TemplateError as e:
            raise ValueError(f"the chat template refused the messages: {e}") from e


def _raise(message):
    raise TemplateError(message)
