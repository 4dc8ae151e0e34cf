"""The optimizers pretraining can use, chosen by name in one place (`OPTIMIZERS`), and the schedule's
hyperparameters applied to their parameter groups.

- adamw: torch's AdamW with weight decay only on matrices: norms and biases never decay, the
  embeddings (and the LM head) only when asked. One learning rate for every group.
- muon: Muon (MomentUm Orthogonalized by Newton-Schulz, Keller Jordan 2024) for the hidden 2-D
  matrices, AdamW for the rest, as nanochat's setup_optimizer groups them: the embeddings and the LM
  head at their own width-scaled learning rates, the norms, biases and BitNet's input norms ("scalars")
  at `learning_rate`. Every group follows the schedule's shape: its lr is its peak times lr(step) /
  learning_rate. Defaults are nanochat's published ones: Muon lr 0.02 scaled by sqrt(max(1, rows/cols)),
  Nesterov momentum warming from 0.85 to 0.95 over the first 300 steps, 5 Newton-Schulz steps; embedding
  lr 0.2 and head lr 0.004 (a tied embedding is the head, and takes the head's), both times
  (hidden_size / 768) ** -0.5. Matrices decay by weight_decay (decoupled, times the lr, as AdamW's);
  the embeddings and head only with embedding_weight_decay; scalars never.

Muon under FSDP2: a sharded parameter (a DTensor, rows split across ranks) holds only some rows of its
matrix, and the orthogonalisation needs all of them. We gather the whole matrix on every rank
(`full_tensor()`, one all-gather per matrix), orthogonalise it there, and keep this rank's rows; the
momentum buffer stays sharded like the parameter, so the state is 1/world per rank and resharding a
checkpoint works as for AdamW. The alternative (nanochat's distributed Muon: each rank owns whole
matrices, orthogonalises those, then sends the results out) divides the Newton-Schulz work by the world
size at the price of scheduling and a second collective. We chose gathering because it is correct
with any sharding FSDP2 picks and needs no bookkeeping of owners; its cost is the price. At 1B
(genesis-1b: 1.0B parameters, 0.92B of them in Muon's matrices) on 8 GPUs, each rank receives 7/8 of
the matrices in fp32 per step (3.2 GB: ~16 ms at NVLink's ~200 GB/s), and every rank runs 5 Newton-Schulz
steps on every matrix in bf16, 5 x (4m^2 n + 2m^3) FLOPs for an m x n matrix (m <= n): 33 TFLOP, ~60-90 ms
on an H100. The step itself (524,288 tokens, 6 x 1.0e9 x 524,288 = 3.1 PFLOP over 8 GPUs at 40% MFU)
takes ~1 s, so Muon adds ~6-10% there. Owning whole matrices would cut the Newton-Schulz part to ~1/8
(~1%): the next step if a GPU profile confirms the estimate. At nanochat's d20 (0.40B in matrices) the
work is 13 TFLOP. Under DDP the gradients arrive whole and reduced, so every rank computes the same
update with no communication.
"""

import math

import torch
from torch.distributed.tensor import DTensor, Replicate

from ..errors import ScratchError

# Keller Jordan's quintic Newton-Schulz coefficients (torch.optim.Muon uses the same).
NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
# nanochat's AdamW learning rates for the embeddings and the head were tuned at width 768.
REFERENCE_WIDTH = 768
# Muon's config keys and their defaults (nanochat's); the config's None means "this default".
MUON_DEFAULTS = {
    "muon_lr": 0.02,
    "muon_momentum": 0.95,
    "muon_momentum_start": 0.85,
    "muon_momentum_warmup_steps": 300,
    "muon_ns_steps": 5,
    "muon_embedding_lr": 0.2,
    "muon_head_lr": 0.004,
}
# fp32 state elements per parameter element: AdamW's two moments, Muon's one momentum buffer.
STATE_ELEMENTS = {"adamw": 2, "muon": 1}


# --- which parameters go where ----------------------------------------------------------------------


def parameter_kinds(model: torch.nn.Module) -> dict[str, str]:
    """Each trainable parameter's name (a tied head listed once) -> its kind: "matrix" (a hidden 2-D
    weight: Muon's), "embedding", "head" (a tied embedding too), or "scalar" (norms, biases, BitNet's
    input norms)."""
    embedding = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    kinds = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if param is head:  # a tied embedding is the head too: every row moves at every step, so the head's lr
            kinds[name] = "head"
        elif param is embedding:
            kinds[name] = "embedding"
        elif param.ndim >= 2:
            kinds[name] = "matrix"
        else:
            kinds[name] = "scalar"
    return kinds


def unsupported(model: torch.nn.Module) -> str | None:
    """Why Muon cannot train this model, or None: it orthogonalises 2-D matrices, so a hidden weight of
    more dimensions (a convolution, stacked experts) has no update defined."""
    params = dict(model.named_parameters())
    for name, kind in parameter_kinds(model).items():
        param = params[name]
        if kind == "matrix" and param.ndim != 2:
            return f"parameter {name} has shape {tuple(param.shape)}; Muon updates only 2-D matrices"
    return None


# --- building them ----------------------------------------------------------------------------------


def build_adamw(model: torch.nn.Module, config) -> torch.optim.AdamW:
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


def build_muon(model: torch.nn.Module, config) -> "MuonAdamW":
    if reason := unsupported(model):
        raise ScratchError(f"optimizer muon cannot train this model: {reason}; use optimizer: adamw")
    muon = muon_settings(config)
    kinds = parameter_kinds(model)
    params = dict(model.named_parameters())
    width_scale = (model.config.hidden_size / REFERENCE_WIDTH) ** -0.5
    adamw_peaks = {
        "embedding": muon["muon_embedding_lr"] * width_scale,
        "head": muon["muon_head_lr"] * width_scale,
        "scalar": config.learning_rate,
    }
    groups = []
    for kind, peak in adamw_peaks.items():
        members = [params[n] for n, k in kinds.items() if k == kind]
        decays = kind != "scalar" and config.embedding_weight_decay
        if members:
            groups.append(_group("adamw", members, peak, config, wd_scale=1.0 if decays else 0.0))
    matrices = [params[n] for n, k in kinds.items() if k == "matrix"]
    for shape in sorted({tuple(p.shape) for p in matrices}):  # one group per shape: one lr scale each
        members = [p for p in matrices if tuple(p.shape) == shape]
        peak = muon["muon_lr"] * math.sqrt(max(1.0, shape[0] / shape[1]))
        groups.append(_group("muon", members, peak, config, wd_scale=1.0))
    optimizer = MuonAdamW(groups, betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_epsilon,
                          ns_steps=muon["muon_ns_steps"])  # fmt: skip
    optimizer.momentum_warmup = (muon["muon_momentum_start"], muon["muon_momentum"],
                                 muon["muon_momentum_warmup_steps"])  # fmt: skip
    return optimizer


def muon_settings(config) -> dict:
    """Muon's keys with the defaults filled in where the config leaves them None."""
    return {name: default if getattr(config, name) is None else getattr(config, name)
            for name, default in MUON_DEFAULTS.items()}  # fmt: skip


def _group(kind: str, params: list, peak_lr: float, config, wd_scale: float) -> dict:
    """lr_scale: the group's peak over the schedule's (learning_rate), so lr(step) x lr_scale is its lr."""
    return {"params": params, "kind": kind, "lr": peak_lr, "lr_scale": peak_lr / config.learning_rate,
            "weight_decay": config.weight_decay * wd_scale, "wd_scale": wd_scale}  # fmt: skip


OPTIMIZERS = {"adamw": build_adamw, "muon": build_muon}


def build_optimizer(model: torch.nn.Module, config) -> torch.optim.Optimizer:
    """The config's optimizer over the model's trainable parameters (after sharding: FSDP2 replaces them)."""
    return OPTIMIZERS[config.optimizer](model, config)


def optimizer_name(optimizer: torch.optim.Optimizer) -> str:
    """The name a checkpoint records, so a resume with the other optimizer is caught."""
    return "muon" if isinstance(optimizer, MuonAdamW) else "adamw"


# --- the schedule -----------------------------------------------------------------------------------


def set_hyperparameters(optimizer: torch.optim.Optimizer, lr: float, weight_decay: float, step: int) -> None:
    """The schedule's values for the step about to be taken (0-based `step`): lr x each group's lr_scale,
    weight decay x its wd_scale, and Muon's momentum warmup."""
    momentum = muon_momentum(optimizer, step)
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"] if "lr_scale" in group else lr
        group["weight_decay"] = weight_decay * group["wd_scale"]
        if group.get("kind") == "muon":
            group["momentum"] = momentum


def muon_momentum(optimizer: torch.optim.Optimizer, step: int) -> float:
    """Linear from the start value to the final one over the warmup steps (nanochat's), then constant."""
    start, end, steps = getattr(optimizer, "momentum_warmup", (0.0, 0.0, 0))
    progress = min(1.0, step / steps) if steps else 1.0
    return start + (end - start) * progress


# --- what they keep ---------------------------------------------------------------------------------


def state_bytes(name: str, model: torch.nn.Module) -> dict[str, int]:
    """Bytes of optimizer state each trainable parameter gets under optimizer `name` (whole, fp32; under
    FSDP2 each rank keeps 1/world of it): AdamW's two moments, or Muon's momentum for the hidden matrices.
    Works on a meta-device model: the planner and the rehearsal read it before anything is allocated."""
    params = dict(model.named_parameters())
    elements = {"matrix": STATE_ELEMENTS[name]} if name == "muon" else {}
    return {n: 4 * elements.get(kind, STATE_ELEMENTS["adamw"]) * params[n].numel()
            for n, kind in parameter_kinds(model).items()}  # fmt: skip


def step_transient_bytes(name: str, model: torch.nn.Module, compute_bytes: int = 4) -> int:
    """Bytes the optimizer step allocates and frees, at its largest: for Muon, one matrix gathered whole in
    fp32, and Newton-Schulz's work on it in the compute dtype (X and its next value, m x n; X X^T, its
    square and their sum, m x m; m <= n). AdamW's step (fused on CUDA) keeps no temporaries worth counting."""
    if name != "muon":
        return 0
    params = dict(model.named_parameters())
    largest = 0
    for n, kind in parameter_kinds(model).items():
        if kind == "matrix":
            m, k = sorted(params[n].shape)
            largest = max(largest, 4 * m * k + compute_bytes * (2 * m * k + 3 * m * m))
    return largest


def held_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of state a built optimizer holds now, on this rank (a sharded tensor counts its local shard)."""
    total = 0
    for state in optimizer.state.values():
        for value in state.values():
            if torch.is_tensor(value) and value.ndim > 0:
                local = value.to_local() if isinstance(value, DTensor) else value
                total += local.numel() * local.element_size()
    return total


# --- Muon -------------------------------------------------------------------------------------------


def orthogonalize(update: torch.Tensor, steps: int) -> torch.Tensor:
    """Newton-Schulz iteration towards U V^T of update = U S V^T (singular values end in about [0.7, 1.2],
    which trains as well as exact orthogonalisation). bf16 on a GPU, as nanochat; fp32 on a CPU, where
    bf16 matmuls are slower and no faster kernel waits."""
    a, b, c = NS_COEFFICIENTS
    x = update.bfloat16() if update.is_cuda else update.float()
    tall = x.size(0) > x.size(1)
    if tall:
        x = x.T
    x = x / (x.norm() + 1e-7)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


class MuonAdamW(torch.optim.Optimizer):
    """One optimizer (one state dict, one step) over groups of two kinds: "muon" groups (2-D matrices)
    and "adamw" groups. Parameters may be DTensors (FSDP2): element-wise work stays on the local shard."""

    def __init__(self, groups: list[dict], betas=(0.9, 0.95), eps: float = 1e-8, ns_steps: int = 5):
        defaults = {"lr": 0.0, "weight_decay": 0.0, "betas": betas, "eps": eps, "momentum": 0.95, "ns_steps": ns_steps}
        super().__init__(groups, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                if group["kind"] == "muon":
                    self._muon(param, group)
                else:
                    self._adamw(param, group)

    def _muon(self, param, group) -> None:
        state = self.state[param]
        if "momentum_buffer" not in state:
            state["momentum_buffer"] = torch.zeros_like(param)
        buffer, grad, momentum = state["momentum_buffer"], param.grad, group["momentum"]
        buffer.lerp_(grad, 1 - momentum)
        nesterov = grad.lerp(buffer, momentum)  # look ahead along the momentum
        if isinstance(nesterov, DTensor):  # FSDP2: orthogonalise the whole matrix, keep this rank's rows
            whole = orthogonalize(nesterov.full_tensor(), group["ns_steps"])
            replicated = DTensor.from_local(whole, nesterov.device_mesh, [Replicate()] * nesterov.device_mesh.ndim,
                                            run_check=False)  # fmt: skip
            update = replicated.redistribute(nesterov.device_mesh, nesterov.placements)  # a local slice: no comms
        else:
            update = orthogonalize(nesterov, group["ns_steps"])
        param.mul_(1 - group["lr"] * group["weight_decay"])
        param.add_(update.to(param.dtype), alpha=-group["lr"])

    def _adamw(self, param, group) -> None:
        """torch's AdamW, written out: decoupled decay, bias-corrected moments."""
        state = self.state[param]
        if "step" not in state:
            state["step"] = torch.tensor(0.0)
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        state["step"] += 1
        step, (beta1, beta2), grad = state["step"].item(), group["betas"], param.grad
        param.mul_(1 - group["lr"] * group["weight_decay"])
        state["exp_avg"].lerp_(grad, 1 - beta1)
        state["exp_avg_sq"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        denom = (state["exp_avg_sq"].sqrt() / math.sqrt(1 - beta2**step)).add_(group["eps"])
        param.addcdiv_(state["exp_avg"], denom, value=-group["lr"] / (1 - beta1**step))
