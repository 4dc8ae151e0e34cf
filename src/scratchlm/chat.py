"""`scratchlm chat --model DIR`: talk to a model, one line per user turn, the reply streamed.

The conversation is rendered with the tokenizer's chat template every turn, so the model sees what
SFT taught it. Lines starting with `/` are commands, never sent to the model (`/help` lists them).
At a terminal the line is edited with readline (arrow keys move the cursor, up and down walk the
history), Ctrl-C stops a reply and keeps the conversation, and Ctrl-C or Ctrl-D at the prompt ends.
Piped stdin works the same, without the `you>` prompt, so a script can hold a conversation; replies
start with `assistant> `.
"""

import signal
import sys

import torch
from transformers import StoppingCriteria, TextStreamer

from .errors import ScratchError
from .model.files import generation_config

HELP = """commands (never sent to the model):
  /help    this list
  /clear   start a new conversation
  /quit    end (as do Ctrl-D and, at the prompt, Ctrl-C)
Ctrl-C while the model replies stops the reply; the conversation goes on."""


def chat(model, tokenizer, sampling: dict, max_new_tokens: int) -> None:
    if not tokenizer.chat_template:
        raise ScratchError("this model's tokenizer has no chat template: use `scratchlm generate` for plain text")
    if getattr(model.config, "training_stage", None) == "pretrain":
        print("scratchlm: this model has had no chat training (its last stage was pretraining): expect it to "
              "continue text rather than answer; midtraining or SFT teaches it the turns", file=sys.stderr)  # fmt: skip
    interactive = sys.stdin.isatty()
    if interactive:
        import readline  # noqa: F401 - imported for its effect: input() edits lines instead of passing escape codes on
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.eval()
    messages: list[dict] = []  # the conversation so far, rendered whole every turn
    while True:
        text = read_turn(interactive)
        if text is None or text == "/quit":
            return
        if text == "/clear":
            messages = []
            print("(new conversation)", flush=True)
            continue
        if text.startswith("/"):
            print(HELP if text == "/help" else f"unknown command {text.split()[0]}; /help lists them", flush=True)
            continue
        if not text:
            continue
        messages.append({"role": "user", "content": text})
        ids = tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=False
        )
        if ids.shape[1] + max_new_tokens > model.config.max_position_embeddings:
            print("(the conversation is longer than the model's context: /clear to start again)", flush=True)
            messages.pop()
            continue
        with Interrupt() as interrupt:  # before the reply starts: from here on Ctrl-C stops only the reply
            print("assistant> ", end="", flush=True)
            new = continuation(model, tokenizer, ids, max_new_tokens, sampling, streamer, interrupt)
        reply = tokenizer.decode(new, skip_special_tokens=True).strip()
        if interrupt.requested:
            print("(stopped)", flush=True)  # generate() ended the streamed line
        messages.append({"role": "assistant", "content": reply})  # what was shown, even if stopped


def read_turn(interactive: bool) -> str | None:
    """The next line, stripped; None at the end of input or on Ctrl-C at the prompt."""
    try:
        line = input("you> ") if interactive else sys.stdin.readline()
    except (EOFError, KeyboardInterrupt):
        if interactive:
            print()  # leave the shell's prompt on a line of its own
        return None
    if not interactive and not line:
        return None
    return line.strip()


class Interrupt(StoppingCriteria):
    """While active, Ctrl-C (SIGINT) ends the reply at the next token instead of raising KeyboardInterrupt
    somewhere inside generate(): the reply so far is returned and the conversation keeps it."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def _handle(self, signum, frame) -> None:
        self.requested = True

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)


def continuation(
    model, tokenizer, ids, max_new_tokens: int, sampling: dict, streamer=None, interrupt: Interrupt | None = None
) -> torch.Tensor:
    """The token ids generated after `ids` (one sequence), stopping at the end of a document or of an
    assistant turn, as every export's generation config says (a training checkpoint has none)."""
    stops = generation_config(tokenizer)
    ids = ids.to(model.device)
    with torch.no_grad():
        output = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            eos_token_id=stops.eos_token_id,
            pad_token_id=stops.pad_token_id,
            streamer=streamer,
            stopping_criteria=[interrupt] if interrupt is not None else None,
            **sampling,
        )
    return output[0, ids.shape[1] :]


def sampling_options(temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict:
    """generate() arguments: greedy at temperature 0; top_k 0 and top_p 1.0 filter nothing."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
