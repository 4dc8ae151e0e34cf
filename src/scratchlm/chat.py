"""`scratchlm chat --model DIR`: talk to a model, one line per user turn, the reply streamed.

The conversation is rendered with the tokenizer's chat template every turn, so the model sees what
SFT taught it. `/clear` starts a new conversation, `/quit` (or end of input) ends. Piped stdin works
the same, without the `you>` prompt, so a script can hold a conversation; replies start with `assistant> `.
"""

import sys

import torch
from transformers import TextStreamer

from .errors import ScratchError
from .model.files import generation_config


def chat(model, tokenizer, sampling: dict, max_new_tokens: int) -> None:
    if not tokenizer.chat_template:
        raise ScratchError("this model's tokenizer has no chat template: use `scratchlm generate` for plain text")
    interactive = sys.stdin.isatty()
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    model.eval()
    messages: list[dict] = []  # the conversation so far, rendered whole every turn
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/quit":
            return
        text = line.strip()
        if text == "/clear":
            messages = []
            print("(new conversation)", flush=True)
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
        print("assistant> ", end="", flush=True)
        new = continuation(model, tokenizer, ids, max_new_tokens, sampling, streamer)
        reply = tokenizer.decode(new, skip_special_tokens=True).strip()
        messages.append({"role": "assistant", "content": reply})


def continuation(model, tokenizer, ids, max_new_tokens: int, sampling: dict, streamer=None) -> torch.Tensor:
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
            **sampling,
        )
    return output[0, ids.shape[1] :]


def sampling_options(temperature: float, top_k: int = 0, top_p: float = 1.0) -> dict:
    """generate() arguments: greedy at temperature 0; top_k 0 and top_p 1.0 filter nothing."""
    if temperature <= 0:
        return {"do_sample": False}
    return {"do_sample": True, "temperature": temperature, "top_k": top_k, "top_p": top_p}
