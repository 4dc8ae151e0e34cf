"""Run by torchrun in tests: FSDP2 (torch's fully_shard, the layout accelerate's FSDP2 produces) on CPU
with gloo, checkpointed with scratchlm's sharded checkpoints. accelerate's own FSDP path does not run
on CPU, so this drives the same checkpoint code directly.

    torchrun --nproc_per_node N tests/fsdp_worker.py OUT_DIR MODE [OPTIMIZER]
    MODE: straight | save | resume; OPTIMIZER: adamw (torch's, the default) | muon (train/optimizer.py's)
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard

from helpers import SMALL_MODEL
from scratchlm.model import ScratchForCausalLM
from scratchlm.model.presets import build_config
from scratchlm.run_dir import RunDir
from scratchlm.tokenization import wrap_tokenizer
from scratchlm.train import checkpoint as ckpt

STEPS, SAVE_AT = 8, 4


def main() -> None:
    out, mode = Path(sys.argv[1]), sys.argv[2]
    distributed = "RANK" in __import__("os").environ
    if distributed:
        dist.init_process_group("gloo")
    rank = dist.get_rank() if distributed else 0
    torch.manual_seed(0)
    config = build_config({**SMALL_MODEL, "vocab_size": 512})
    model = ScratchForCausalLM(config)
    if distributed:
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
    muon = len(sys.argv) > 3 and sys.argv[3] == "muon"
    if muon:
        from scratchlm.train.config import PretrainConfig
        from scratchlm.train.optimizer import build_optimizer, set_hyperparameters

        keys = {"model_preset": "tiny", "data_dir": "x", "max_steps": STEPS, "learning_rate": 1e-3}
        optimizer = build_optimizer(model, PretrainConfig(output_dir=str(out), optimizer="muon", **keys))
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = torch.randint(0, 512, (STEPS, 8, 17), generator=torch.Generator().manual_seed(1))
    start = 0
    if mode == "resume":
        start = ckpt.load_checkpoint(out / "checkpoints" / f"step_{SAVE_AT:08d}", model, optimizer)["step"]
    losses = {}
    for step in range(start, STEPS):
        batch = data[step]
        if muon:  # the schedule's values are a function of the step: the same after a resume
            set_hyperparameters(optimizer, lr=1e-3, weight_decay=0.1, step=step * 50)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses[step + 1] = loss.item()
        if mode == "save" and step + 1 == SAVE_AT:
            from tokenizers import Tokenizer, models

            tokenizer = wrap_tokenizer(Tokenizer(models.BPE()))
            ckpt.save_checkpoint(
                RunDir(out).checkpoint(SAVE_AT), model, optimizer, {"step": SAVE_AT}, config, tokenizer
            )
            break
    if rank == 0:
        (out / f"losses_{mode}.json").write_text(json.dumps(losses))
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
