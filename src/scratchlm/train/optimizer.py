"""AdamW with weight decay only on matrices: norms and biases never decay, embeddings by choice."""

import torch


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.AdamW:
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    decay, no_decay = [], []
    for _, param in model.named_parameters():  # a tied head is listed once
        if not param.requires_grad:
            continue
        is_embedding = id(param) in embeddings
        decays = param.ndim >= 2 and (config.embedding_weight_decay or not is_embedding)
        (decay if decays else no_decay).append(param)
    groups = [
        # wd_scale: the schedule sets weight_decay = schedule value x wd_scale on every step
        {"params": decay, "weight_decay": config.weight_decay, "wd_scale": 1.0},
        {"params": no_decay, "weight_decay": 0.0, "wd_scale": 0.0},
    ]
    fused = torch.cuda.is_available()  # fused kernels: one launch per step instead of one per tensor
    return torch.optim.AdamW(
        groups,
        lr=config.learning_rate,
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        fused=fused,
    )


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
        group["weight_decay"] = weight_decay * group["wd_scale"]
