"""`llm chat`: talk to an instruction-tuned model in the terminal.

Each line you type is an instruction, wrapped in the model's prompt template (the one
`llm finetune instruct` saved in its config.json, else --template); the answer streams as it
is generated. Earlier turns stay in the prompt while they fit in the context window (the
oldest go first). `/reset` forgets them, `/exit` (or end of input) quits.
"""

from __future__ import annotations

import sys

HELP = "type an instruction; /reset forgets the conversation, /exit quits"


def add_parser(sub):
    p = sub.add_parser("chat", help="chat with an instruction-tuned model (streams each answer)")
    p.add_argument("--model", required=True, help="model folder (from `llm finetune instruct`) or hub name")
    p.add_argument("--adapter", default=None, help="a LoRA adapter folder to put on --model (merged in)")
    p.add_argument("--template", default=None,
                   help="prompt template when the model has none saved: alpaca (default), phi3, or a string")
    p.add_argument("--max-new-tokens", type=int, default=256, help="tokens per answer at most (default 256)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")
    p.add_argument("--backend", default=None, help="op backend: torch, triton, native or auto")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    return p


class Conversation:
    """The turns so far, rendered with a template and cut to fit a token budget."""

    def __init__(self, template, budget: int):
        from ..tokenizer import get_tokenizer

        self.template, self.budget, self.enc = template, budget, get_tokenizer()
        self.turns: list[tuple[str, str]] = []

    def prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of the kept turns and the new instruction; the oldest turns are dropped
        until they fit. ValueError when the instruction alone does not."""
        new = self.enc.encode_ordinary(self.template.prompt(instruction))
        if len(new) > self.budget:
            raise ValueError(f"the instruction takes {len(new)} tokens; at most {self.budget} fit")
        while True:
            past = "".join(self.template.prompt(u) + a + "\n\n" for u, a in self.turns)
            ids = self.enc.encode_ordinary(past) + new
            if len(ids) <= self.budget or not self.turns:
                return ids
            self.turns.pop(0)


def run(args) -> int:
    import torch

    from ..finetune import get_template, load_adapter, model_template, remove_lora
    from ..generation import GenerationConfig
    from ..model import GPT
    from ..tokenizer import EOT_TOKEN

    model = GPT.from_pretrained(args.model, backend=args.backend, device=args.device)
    if args.adapter:
        load_adapter(model, args.adapter)
        remove_lora(model)  # merged: full speed
    template = get_template(args.template) if args.template else model_template(model)
    if not 1 <= args.max_new_tokens < model.config.n_positions:
        raise ValueError(f"--max-new-tokens must be in [1, {model.config.n_positions})")
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                           top_p=args.top_p, eos_token_id=EOT_TOKEN, stop_strings=list(template.stop_strings) or None)
    generator = torch.Generator(device=args.device).manual_seed(args.seed) if args.seed is not None else None
    chat = Conversation(template, model.config.n_positions - args.max_new_tokens)
    interactive = sys.stdin.isatty()
    print(f"[{HELP}; template {template.name}]", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            return 0
        line = line.rstrip("\n")
        if line.strip() == "/reset":
            chat.turns.clear()
            print("[conversation reset]", file=sys.stderr)
            continue
        if not line.strip():
            continue
        try:
            ids = chat.prompt_ids(line)
        except ValueError as e:
            print(f"[{e}]", file=sys.stderr)
            continue
        answer = _stream_answer(model, ids, gen, generator, args.device)
        chat.turns.append((line, answer.strip()))


def _stream_answer(model, ids: list[int], gen, generator, device) -> str:
    import torch

    answer = ""
    for chunk in model.stream(torch.tensor([ids], device=device), generation_config=gen, generator=generator):
        answer += chunk.texts[0]
        sys.stdout.write(chunk.texts[0])
        sys.stdout.flush()
    sys.stdout.write("\n")
    sys.stdout.flush()
    return answer
