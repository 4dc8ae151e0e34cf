"""Probe accuracy: the share of prompts ("The capital of Veloria is") whose answer (" Tamsin") greedy
decoding would produce, every answer token the most likely one given the prompt and the tokens before.
"""

import torch

from ..errors import ScratchError


@torch.no_grad()
def probe_accuracy(model, tokenizer, rows: list[dict], batch_size: int = 32) -> dict:
    was_training = model.training
    model.eval()
    device = model.device
    correct, examples = [], []
    for first in range(0, len(rows), batch_size):
        batch = rows[first : first + batch_size]
        prompts = [tokenizer.encode(r["prompt"]) for r in batch]
        fulls = [tokenizer.encode(r["prompt"] + r["answer"]) for r in batch]
        width = max(len(f) for f in fulls)
        ids = torch.tensor([f + [tokenizer.pad_token_id] * (width - len(f)) for f in fulls], device=device)
        predicted = model(input_ids=ids, use_cache=False).logits.argmax(-1)
        for row, (prompt, full) in enumerate(zip(prompts, fulls, strict=True)):
            if full[: len(prompt)] != prompt:
                raise ScratchError(f"probe {batch[row]['prompt']!r} does not tokenize as a prefix of its answer")
            hit = predicted[row, len(prompt) - 1 : len(full) - 1].tolist() == full[len(prompt) :]
            correct.append(hit)
            if len(examples) < 5:
                guess = tokenizer.decode(predicted[row, len(prompt) - 1 : len(full) - 1])
                examples.append({"prompt": batch[row]["prompt"], "answer": batch[row]["answer"], "greedy": guess})
    model.train(was_training)
    return {"probe_accuracy": sum(correct) / len(rows), "n": len(rows), "examples": examples}
