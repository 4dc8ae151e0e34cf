"""How a chat model answers, and which of two answers it prefers.

- chat: for each held-out conversation, the model answers the last user turn (greedy, with the chat
  template); it is correct when the expected answer appears in its reply, and it stopped when it
  ended its turn itself (<|im_end|>) within the token budget; <|endoftext|> ends generation
  but is not a proper end of turn.
- preference: the summed log-probability of the chosen and the rejected reply given the prompt;
  accuracy is how often the chosen one is more likely. With a reference model, the DPO implicit
  reward margin beta * ((log p - log p_ref)(chosen) - (log p - log p_ref)(rejected)) as TRL logs it.
"""

import torch
import torch.nn.functional as F

from ..errors import ScratchError
from ..progress import Bar
from ..tokenization import IM_END


def _require_template(tokenizer, where: str) -> None:
    if not tokenizer.chat_template:
        raise ScratchError(f"{where}: the tokenizer has no chat template")


@torch.no_grad()
def chat_replies(
    model,
    tokenizer,
    conversations: list[list[dict]],
    max_new_tokens: int = 96,
    batch_size: int = 16,
    progress: bool = False,
) -> list[tuple[str, bool]]:
    """(reply, whether the model ended its turn itself) for each conversation, greedy; `progress` on stderr."""
    _require_template(tokenizer, "chat")
    model.eval()
    device = getattr(model, "device", torch.device("cpu"))  # a Hugging Face model's; a stand-in's CPU
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    stop_ids = [tokenizer.eos_token_id, end_of_turn]
    replies = []
    bar = Bar(len(conversations), "eval chat", "conversations", enabled=progress)
    for start in range(0, len(conversations), batch_size):
        prompts = [
            tokenizer.apply_chat_template(c, add_generation_prompt=True, return_dict=False)
            for c in conversations[start : start + batch_size]
        ]
        width = max(len(p) for p in prompts)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in prompts], device=device)
        attention = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=device)
        output = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=stop_ids,
            pad_token_id=tokenizer.pad_token_id,
        )
        for generated in output[:, width:].tolist():
            end = next((i for i, t in enumerate(generated) if t in stop_ids), None)
            reply = tokenizer.decode(generated[:end], skip_special_tokens=True).strip()
            replies.append((reply, end is not None and generated[end] == end_of_turn))
        bar.advance(len(prompts))
    bar.close()
    return replies


def chat_eval(model, tokenizer, rows: list[dict], max_new_tokens: int = 96, progress: bool = False) -> dict:
    """Rows hold the whole conversation and `answer`; the model replaces the last assistant turn."""
    replies = chat_replies(model, tokenizer, [r["messages"][:-1] for r in rows], max_new_tokens, progress=progress)
    correct = [r["answer"].lower() in reply.lower() for r, (reply, _) in zip(rows, replies, strict=True)]
    examples = [
        {"question": r["messages"][-2]["content"], "reply": reply, "correct": hit}
        for r, (reply, _), hit in list(zip(rows, replies, correct, strict=True))[:5]
    ]
    return {
        "chat_accuracy": sum(correct) / len(rows),
        "stop_rate": sum(s for _, s in replies) / len(rows),
        "n": len(rows),
        "examples": examples,
    }


@torch.no_grad()
def completion_logprobs(model, tokenizer, prompt: list[dict], reply: list[dict]) -> float:
    """log p(reply | prompt) under the chat template, through the reply's end-of-turn token."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, return_dict=False)
    full = tokenizer.apply_chat_template(prompt + reply, return_dict=False)
    if full[: len(prompt_ids)] != prompt_ids:
        raise ScratchError("the chat template renders the prompt differently inside a full conversation")
    end_of_turn = tokenizer.convert_tokens_to_ids(IM_END)
    last = max(i for i, t in enumerate(full) if t == end_of_turn)
    ids = torch.tensor([full[: last + 1]], device=model.device)
    logits = model(input_ids=ids, use_cache=False).logits.float()
    targets = ids[0, len(prompt_ids) :]
    scores = F.log_softmax(logits[0, len(prompt_ids) - 1 : -1], dim=-1)
    return scores.gather(1, targets[:, None]).sum().item()


def preference_eval(
    model, tokenizer, rows: list[dict], reference=None, beta: float = 0.1, progress: bool = False
) -> dict:
    _require_template(tokenizer, "preference eval")
    model.eval()
    wins, margins, rewards = 0, [], []
    bar = Bar(len(rows), "eval preference", "pairs", enabled=progress)
    for row in rows:
        chosen = completion_logprobs(model, tokenizer, row["prompt"], row["chosen"])
        rejected = completion_logprobs(model, tokenizer, row["prompt"], row["rejected"])
        wins += chosen > rejected
        margins.append(chosen - rejected)
        if reference is not None:
            ref_chosen = completion_logprobs(reference, tokenizer, row["prompt"], row["chosen"])
            ref_rejected = completion_logprobs(reference, tokenizer, row["prompt"], row["rejected"])
            rewards.append(beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))
        bar.advance()
    bar.close()
    result = {"preference_accuracy": wins / len(rows), "logprob_margin": sum(margins) / len(rows), "n": len(rows)}
    if rewards:
        result["reward_margin"] = sum(rewards) / len(rewards)
    return result
