"""Per-rank peak memory of a training step, term by term, before any GPU hour is spent.

The terms, in bytes, for one process:
- weights: the fp32 parameters (a 1/world shard of them under FSDP2);
- weight copies: what the compute reads in bf16. Without sharding, autocast's bf16 copy of every
  decoder matmul weight, cached by autocast through the forward (checkpointing or not) and saved for
  backward until that layer's backward; under FSDP2 the unsharded
  bf16 parameters: the root's (embeddings, head, final norm: FSDP2 never reshards the root after
  forward), one layer's all-gather buffer in flight at the peak, and every layer's with
  reshard_after_forward false;
- gradients: fp32, for every parameter once any exists. Under FSDP2 a micro-batch without gradient
  sync (set_requires_gradient_sync(False)) keeps each parameter's UNSHARDED gradient, upcast to the
  reduce dtype (fp32), until the last micro-batch reduce-scatters it (torch's _fsdp_param.py
  to_accumulated_grad_if_needed / _fsdp_param_group.py post_backward): with accumulation > 1 that is
  4 bytes per parameter of the whole model on every rank, not a shard;
- optimizer: the state train/optimizer.py says its optimizer keeps (sharded under FSDP2): AdamW's two
  fp32 moments (fused on CUDA, so no temporaries), or Muon's one momentum buffer for the hidden matrices
  and AdamW's moments for the rest, with its step's transient (one matrix gathered and orthogonalised);
- activations: what the forward saves for backward, from formulas read off the real module's saved
  tensors (layer_activation_bytes below; benchmarks/memory_validation.py checks them);
- loss: the loss's saved gradients, and its largest transient (one chunk for our chunked loss);
- transient: the largest of the loss's, one layer's backward in flight (its gradient buffers and, with
  activation checkpointing, that layer recomputed) and the optimizer step's; with one micro-batch per step
  less the gradients that do not exist yet at that moment (transient_bytes);
- CUDA context and allocator overhead: outside torch's allocator counters; assumed, see below.

The allocated peak is what torch.cuda.max_memory_allocated reports; the device peak adds the context
and the allocator's slack and is what must fit the card. This module only estimates: the tools that
measure the real thing, against which these formulas are checked, are in measure.py.
"""

import math
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..errors import ScratchError
from ..model.attention import NAMES as ATTENTIONS
from ..model.attention import choose as choose_attention
from ..model.configuration_scratch import ScratchConfig
from ..model.loss import default_chunk_tokens
from .optimizer import state_bytes, step_transient_bytes

if TYPE_CHECKING:
    from .parallel import World

GIB = 2**30
# Not seen by torch's allocator, so not in max_memory_allocated: the CUDA context with cuBLAS/cuDNN
# handles (about 0.5 GiB with CUDA 12's lazy module loading on Ampere/Hopper), and NCCL's buffers for
# a multi-GPU process group (a few hundred MiB per rank). Assumed, not measured here: the GPU check
# (benchmarks/memory_validation.py --cuda) reads the context as the card's used memory minus
# torch.cuda.memory_reserved().
CUDA_CONTEXT_BYTES = GIB // 2
NCCL_BYTES = 3 * GIB // 8
# Reserved over allocated with expandable segments (hardware.py sets them): freed blocks are reused
# in place, so the slack is small; 5% is the margin assumed on top of the allocated peak.
ALLOCATOR_SLACK = 0.05
LOSSES = ("chunked", "liger", "plain")


@dataclass
class TrainingSetup:
    """What decides a rank's memory: the model, the micro-batch, and how the step runs."""

    model: ScratchConfig
    seq_len: int
    micro_batch: int
    accumulation: int = 1
    world_size: int = 1
    sharded: bool = False  # FSDP2 (fully_shard per decoder layer + root), bf16 params when bf16
    reshard_after_forward: bool = True
    reduce_dtype: str = "float32"  # FSDP2's: gradients reduce, and accumulate unsharded, in it
    gradient_checkpointing: bool = False  # full, per decoder layer
    compile: bool = False  # torch.compile per decoder block
    bf16: bool = True
    loss: str = "chunked"  # chunked (model/loss.py), liger (its fused kernel), plain (all logits)
    attention: str = "sdpa"
    document_masking: bool = True
    optimizer: str = "adamw"  # a name in train/optimizer.py's OPTIMIZERS

    def __post_init__(self):
        if self.loss not in LOSSES:
            raise ScratchError(f"memory estimate: loss '{self.loss}' is not one of {', '.join(LOSSES)}")
        if self.attention not in ATTENTIONS:
            raise ScratchError(f"memory estimate: attention '{self.attention}' is not one of {', '.join(ATTENTIONS)}")


@dataclass
class MemoryEstimate:
    terms: dict[str, int]  # bytes, each term of the allocated peak
    allocated_peak: int  # comparable to torch.cuda.max_memory_allocated
    context: int  # CUDA context (and NCCL's buffers), outside torch's allocator
    device_peak: int  # allocated peak + allocator slack + context: what must fit the card

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ParameterCounts:
    total: int
    layer: int  # one decoder layer, every parameter
    layer_matmul: int  # one decoder layer's linear weights
    root: int  # embeddings, head, final norm: FSDP2's root group


def parameter_counts(config: ScratchConfig) -> ParameterCounts:
    from ..model.modeling_scratch import ScratchForCausalLM

    with torch.device("meta"):
        model = ScratchForCausalLM(config)
    layer = model.model.layers[0]
    total = sum(p.numel() for p in model.parameters())
    layer_params = sum(p.numel() for p in layer.parameters())
    matmul = sum(m.weight.numel() for m in layer.modules() if isinstance(m, nn.Linear))
    return ParameterCounts(total, layer_params, matmul, total - config.num_hidden_layers * layer_params)


@dataclass
class Dims:
    """The sizes and byte widths every formula below reads."""

    tokens: int  # N = micro_batch x seq_len
    batch: int
    seq: int
    hidden: int
    q_width: int  # heads x head_dim
    kv_width: int  # kv heads x head_dim
    heads: int
    head_dim: int
    ffn: int
    vocab: int
    residual: int  # bytes of the residual stream: fp32 under autocast (fp32 embeddings), bf16 under FSDP2
    compute: int  # bytes of matmul inputs and outputs: 2 in bf16
    weight: int  # bytes of a parameter as the compute sees it: the head's gradient dtype in our loss


def dims_of(setup: TrainingSetup) -> Dims:
    c = setup.model
    head_dim = c.head_dim
    compute = 2 if setup.bf16 else 4
    low_precision_params = setup.sharded and setup.bf16  # FSDP2 param_dtype=bf16: everything is bf16
    return Dims(
        tokens=setup.micro_batch * setup.seq_len,
        batch=setup.micro_batch,
        seq=setup.seq_len,
        hidden=c.hidden_size,
        q_width=c.num_attention_heads * head_dim,
        kv_width=c.num_key_value_heads * head_dim,
        heads=c.num_attention_heads,
        head_dim=head_dim,
        ffn=c.intermediate_size,
        vocab=c.vocab_size,
        residual=2 if low_precision_params else 4,
        compute=compute,
        weight=2 if low_precision_params else 4,
    )


# --- activations ------------------------------------------------------------------------------------
# Derived from the saved tensors of the real modules (transformers' Llama decoder layer, our BitLinear
# and loss) on CPU: every tensor an autograd node saves, by storage, parameters excluded, once per
# storage (benchmarks/memory_validation.py prints the comparison for many shapes; a shape's formula
# matches the measurement to the byte in eager mode). N tokens, d hidden, r residual bytes, c compute
# bytes; an autocast cast is a new tensor per consuming op (autocast caches casts of leaves only).


def rms_norm_bytes(n: int, width: int, input_bytes: int) -> int:
    """LlamaRMSNorm saves its input as fp32 (the input itself when fp32, else an fp32 copy), the
    reciprocal RMS (N fp32), and the normalized input in the input's dtype (fp32: the same x·rstd)."""
    return 4 * n * width + 4 * n + input_bytes * n * width


def bitlinear_bytes(n: int, width: int, input_bytes: int, compute: int, input_saved: bool) -> int:
    """A BitLinear saves its RMSNorm's tensors (the fp32 input only if nothing else saved it) and its
    straight-through input in the compute dtype; the quantizers' graphs are detached and die."""
    norm = rms_norm_bytes(n, width, input_bytes) - (4 * n * width if input_saved else 0)
    return norm + compute * n * width


def attention_bytes(dim: Dims, attention: str, document_masking: bool) -> int:
    """q, k, v and the output in the compute dtype, and the fp32 log-sum-exp per head and query, for
    sdpa (CPU flash, CUDA flash and memory-efficient kernels alike), flash-attn and flex. With
    document masking sdpa gets a B x 1 x T x T mask: transformers then repeats k and v to every head
    (repeat_kv; sdpa's enable_gqa only without a mask) and sdpa converts the bool mask to an additive
    one in the compute dtype inside every layer's call, which the kernel saves. Eager attention also
    saves its fp32 softmax and the probabilities in the compute dtype (B x heads x T x T each)."""
    n, c = dim.tokens, dim.compute
    masked = attention == "sdpa" and document_masking
    # transformers' flex path repeats k and v itself when the query heads are not a power of two (the
    # kernel's GQA needs one): genesis-1b's 12 heads over 6, found by the rehearsal (train/rehearse.py).
    flex_repeats = attention == "flex_attention" and dim.heads & (dim.heads - 1) != 0
    repeated = (masked or attention == "eager" or flex_repeats) and dim.kv_width != dim.q_width
    # repeat_kv's expand + reshape copies, except from a single kv head (a stride-0 view), where
    # only a cast (autocast's bf16 of RoPE's fp32 k) makes a full copy.
    single = dim.kv_width == dim.head_dim
    k = dim.q_width if repeated and not (single and dim.residual == c) else dim.kv_width
    v = dim.q_width if repeated and not single else dim.kv_width
    total = c * n * (2 * dim.q_width + k + v) + 4 * dim.batch * dim.heads * dim.seq
    if masked:
        total += c * dim.batch * dim.seq**2
    if attention == "eager":
        total += (4 + c) * dim.batch * dim.heads * dim.seq**2 - 4 * dim.batch * dim.heads * dim.seq
    return total


def layer_activation_bytes(dim: Dims, setup: TrainingSetup) -> int:
    """One decoder layer's saved tensors, weight copies excluded."""
    n, d, f, r, c = dim.tokens, dim.hidden, dim.ffn, dim.residual, dim.compute
    cast = r != c  # autocast: the fp32 norm output is cast once per consuming linear layer
    attention = attention_bytes(dim, setup.attention, setup.document_masking)
    if setup.compile:
        if setup.model.bitnet:
            # Compiled BitLinear, read off the partitioned forward graph's saved outputs (CPU, bf16
            # autocast): each projection's input is its own RMSNorm's output, quantized, so q, k, v, o,
            # gate and up each save an N x width tensor in the compute dtype (the plain layer's q, k, v
            # share one, gate and up one, and o reads the attention output, counted with attention);
            # the o projection's output too, from which the residual is recomputed. Six reciprocal RMS
            # stay (the rest is recomputed), and down's input is the SwiGLU product, as below.
            return r * n * d + 24 * n + c * n * (6 * d + dim.q_width) + attention + 3 * c * n * f
        # Inductor's partitioner (measured on CPU): the layer input, two reciprocal RMS, three tensors
        # of N x d in the compute dtype (the input norm's output, o's output, the post-attention norm's
        # output), attention as eager, and gate, up and their product; the rest is recomputed in backward.
        return r * n * d + 8 * n + 3 * c * n * d + attention + 3 * c * n * f
    if setup.model.bitnet:
        # Every linear is a BitLinear with its own RMSNorm: the decoder norms' fp32 outputs are saved
        # (by those norms), the linear inputs are the straight-through values.
        norms = 2 * rms_norm_bytes(n, d, r) + 2 * r * n * d
        qkv = 3 * bitlinear_bytes(n, d, r, c, input_saved=True)
        o_proj = bitlinear_bytes(n, dim.q_width, c, c, input_saved=c == 4)  # fp32: attention's own output
        gate_up = 2 * bitlinear_bytes(n, d, r, c, input_saved=True)
        down = bitlinear_bytes(n, f, c, c, input_saved=False)
        return norms + qkv + o_proj + gate_up + down + attention + 3 * c * n * f
    norms = 2 * rms_norm_bytes(n, d, r)
    linear_inputs = (5 * c if cast else 2 * r) * n * d  # q, k, v, gate, up read the norm outputs
    # SwiGLU: gate and up outputs, silu(gate), and the product the down projection reads.
    return norms + linear_inputs + attention + 4 * c * n * f


def model_activation_bytes(dim: Dims, setup: TrainingSetup) -> int:
    """Outside the layers: the input ids, RoPE's cos and sin (shared by every layer), the final norm;
    with checkpointing, each layer's input (held for its recompute) and the bool document mask."""
    n = dim.tokens
    total = 8 * n + 2 * dim.batch * dim.seq * dim.head_dim * dim.residual + rms_norm_bytes(n, dim.hidden, dim.residual)
    layers = setup.model.num_hidden_layers
    if setup.gradient_checkpointing:
        total += layers * dim.residual * n * dim.hidden
        if setup.attention == "sdpa" and setup.document_masking:
            total += dim.batch * dim.seq**2
    else:
        total += layers * layer_activation_bytes(dim, setup)
    return total


# --- the loss ---------------------------------------------------------------------------------------


def loss_bytes(dim: Dims, setup: TrainingSetup) -> tuple[int, int]:
    """(saved until backward, largest transient during the loss's forward), for each loss kind."""
    n, d, v, c = dim.tokens, dim.hidden, dim.vocab, dim.compute
    cap = setup.model.logit_softcap is not None
    weight_copy = c * v * d if c != dim.weight else 0  # autocast's bf16 copy of an fp32 head
    if setup.loss == "plain":
        # nn.Linear saves its input (cast) and weight copy, log_softmax its fp32 output, nll_loss the
        # targets; its transients are the logits in the compute dtype and in fp32, and in backward the
        # fp32 gradient twice and its cast.
        saved = 4 * n * v + (c * n * d if c != dim.residual else 0) + weight_copy + 8 * n
        return saved, (8 + c) * n * v
    saved = dim.residual * n * d + dim.weight * v * d  # the gradients w.r.t. hidden and head weight
    if setup.loss == "liger":
        # Liger: chunks of next_pow2(ceil(N / ceil(V / d))) tokens, logits in the compute dtype with
        # the gradient written in place; an fp32 weight-gradient accumulator (our accum_dtype).
        chunk = 1 << max(0, math.ceil(math.log2(math.ceil(n / math.ceil(v / d)))))
        return saved, weight_copy + c * min(chunk, n) * v + 4 * v * d
    # Ours, per chunk: the fp32 logits (softmax and gradient in place; the softcap keeps its tanh
    # too), the gradient's cast to the compute dtype and one V x d product for the weight gradient;
    # the head's copy in the compute dtype and an fp32 weight-gradient accumulator for a low-precision
    # weight live through the whole loss.
    chunk = min(n, default_chunk_tokens(v))
    per_chunk = (4 * (2 if cap else 1) + (c if c != 4 else 0)) * chunk * v + c * v * d
    accumulator = 4 * v * d if dim.weight != 4 else 0
    return saved, weight_copy + accumulator + per_chunk


def backward_transient_bytes(dim: Dims, setup: TrainingSetup, counts: ParameterCounts) -> int:
    """One layer's backward in flight, fit to the peaks MemTracker measures on CPU (the validation's
    peak rows): the residual's fp32 gradient buffers (about four of N x d, from the final norm on) or
    two SwiGLU gradients of N x F, whichever is larger. With checkpointing the layer is first
    recomputed, so its saved tensors and weight copies exist again, next to its gradients."""
    n, d, f, c = dim.tokens, dim.hidden, dim.ffn, dim.compute
    if not setup.gradient_checkpointing:
        return max(16 * n * d, 2 * c * n * f)
    copies = c * counts.layer_matmul if setup.model.bitnet or setup.bf16 and not setup.sharded else 0
    return layer_activation_bytes(dim, setup) + copies + 2 * c * n * f


def transient_bytes(
    setup: TrainingSetup, dim: Dims, counts: ParameterCounts, gradients: int, loss: int, optimizer: int
) -> int:
    """What the peak holds beyond the other terms. The loss's transient comes at the end of the forward,
    the backward's after it: one at a time. The optimizer's comes after both, with the activations freed:
    counting it here is an upper bound. The gradients term counts every gradient, as held after the
    backward; with one micro-batch per step (the step before set them to None) none exists yet when the
    loss runs, and at the top layer's backward only the root's and that layer's do, so those moments have
    the rest of that term's bytes free for their transient (the rehearsal of the tiny recipe: its peak is
    the loss's chunk of logits, with no gradient allocated). With accumulation the previous micro-batch's
    gradients are all there."""
    backward = backward_transient_bytes(dim, setup, counts)
    if setup.accumulation == 1:
        loss -= gradients
        backward -= max(0, gradients - 4 * (counts.root + counts.layer))
    return max(0, loss, backward, optimizer)


# --- the estimate -----------------------------------------------------------------------------------


def autocast_copies(setup: TrainingSetup) -> bool:
    """Whether every decoder weight has a copy in the compute dtype through the forward: autocast's
    bf16 casts of fp32 parameters, which it caches until its context exits (with checkpointing too:
    the cache, not the saved tensors, holds them), or BitLinear's straight-through weights, which are
    not parameters (no cache) and are saved for backward unless checkpointing drops them."""
    if setup.model.bitnet:
        return not setup.gradient_checkpointing
    return setup.bf16 and not setup.sharded


def estimate_memory(setup: TrainingSetup) -> MemoryEstimate:
    counts = parameter_counts(setup.model)
    dim = dims_of(setup)
    shard = setup.world_size if setup.sharded else 1
    terms = {"weights": 4 * math.ceil(counts.total / shard)}
    layers = setup.model.num_hidden_layers
    terms["weight_copies"] = 0
    if setup.sharded:
        # At the peak (the loss, or the backward's start) one layer's all-gather buffer is in flight, beside
        # the gathered layers: every layer with reshard_after_forward false, none otherwise (the rehearsal's
        # FSDPMemTracker counts them: train/rehearse.py).
        in_flight = (layers if not setup.reshard_after_forward else 0) + min(1, layers)
        terms["weight_copies"] += dim.weight * (counts.root + in_flight * counts.layer)
    if autocast_copies(setup):
        terms["weight_copies"] += dim.compute * layers * counts.layer_matmul
    if setup.sharded and setup.accumulation > 1:  # unsharded until the last micro-batch
        terms["gradients"] = (2 if setup.bf16 and setup.reduce_dtype == "bfloat16" else 4) * counts.total
    else:
        terms["gradients"] = 4 * math.ceil(counts.total / shard)
    terms["optimizer"], optimizer_transient = optimizer_bytes(setup, shard)
    terms["activations"] = model_activation_bytes(dim, setup)
    terms["loss_saved"], loss_transient = loss_bytes(dim, setup)
    terms["transient"] = transient_bytes(setup, dim, counts, terms["gradients"], loss_transient, optimizer_transient)
    allocated = sum(terms.values())
    context = CUDA_CONTEXT_BYTES + (NCCL_BYTES if setup.world_size > 1 else 0)
    return MemoryEstimate(terms, allocated, context, math.ceil(allocated * (1 + ALLOCATOR_SLACK)) + context)


def optimizer_bytes(setup: TrainingSetup, shard: int) -> tuple[int, int]:
    """The optimizer's state on one rank, and its step's largest transient (Newton-Schulz in bf16 on a GPU),
    as the optimizer module counts them on the model's parameters."""
    from ..model.modeling_scratch import ScratchForCausalLM

    with torch.device("meta"):
        model = ScratchForCausalLM(setup.model)
    state = math.ceil(sum(state_bytes(setup.optimizer, model).values()) / shard)
    return state, step_transient_bytes(setup.optimizer, model, compute_bytes=2)


def gib(n: int) -> str:
    return f"{n / GIB:.1f} GiB"


def describe_estimate(estimate: MemoryEstimate, capacity: int, where: str = "") -> str:
    """One line per term, then the peak next to the capacity."""
    lines = [f"memory per GPU{where}:"]
    for name, value in estimate.terms.items():
        lines.append(f"  {name:15s} {gib(value):>10s}")
    lines.append(f"  {'allocated peak':15s} {gib(estimate.allocated_peak):>10s}")
    lines.append(
        f"  {'device peak':15s} {gib(estimate.device_peak):>10s}  (+{ALLOCATOR_SLACK:.0%} allocator slack, "
        f"{gib(estimate.context)} CUDA context{' and NCCL' if estimate.context > CUDA_CONTEXT_BYTES else ''}) "
        f"of {gib(capacity)}: {estimate.device_peak / capacity:.0%}"
    )
    return "\n".join(lines)


def settings_that_fit(setup: TrainingSetup, capacity: int, headroom: float = 0.0, tokens_per_step: bool = False):
    """Settings with the same tokens per step that fit `capacity` less `headroom`: the largest
    micro-batch that fits as the run is, and the largest with activation checkpointing. With
    tokens_per_step the accumulation follows the micro-batch."""
    budget = capacity * (1 - headroom)
    per_step = setup.micro_batch * setup.accumulation
    options = []
    for checkpointing in sorted({setup.gradient_checkpointing, True}):
        for micro in sorted((m for m in range(1, per_step + 1) if per_step % m == 0), reverse=True):
            trial = replace(setup, micro_batch=micro, accumulation=per_step // micro)
            trial = replace(trial, gradient_checkpointing=checkpointing)
            if trial != setup and estimate_memory(trial).device_peak <= budget:
                accumulation = per_step // micro
                words = f"per_device_train_batch_size {micro}" + (
                    f" (accumulation {accumulation})"
                    if tokens_per_step
                    else f", gradient_accumulation_steps {accumulation}"
                )
                if checkpointing != setup.gradient_checkpointing:
                    words += ", gradient_checkpointing: true"
                options.append(words)
                break
    return options


def check_fits(setup: TrainingSetup, capacity: int, device: str, tokens_per_step: bool = False) -> MemoryEstimate:
    """The estimate, or a ScratchError with it, the capacity and the settings that would fit."""
    estimate = estimate_memory(setup)
    if estimate.device_peak <= capacity:
        return estimate
    advice = settings_that_fit(setup, capacity, tokens_per_step=tokens_per_step)
    terms = ", ".join(f"{name} {gib(value)}" for name, value in estimate.terms.items())
    raise ScratchError(
        f"this run needs about {gib(estimate.device_peak)} per GPU and the {device} has {gib(capacity)} ({terms}); "
        + ("same tokens per step that would fit: " + " or ".join(advice) if advice else "no micro-batch fits")
    )


def setup_for_run(
    config, model_config: ScratchConfig, plan, world: "World | None" = None, **overrides
) -> TrainingSetup:
    """The setup of a pretraining config (PretrainConfig) whose batch `plan` resolved for its world size.
    The loop passes its `world`, which decided bf16 and sharding; without one (the planner, for a GPU) bf16 is
    on unless the config turns it off, and multi-GPU runs are FSDP2-sharded, one GPU is not. The attention is
    the one the loop gives that run on a GPU (model/attention.py)."""
    from .parallel import fsdp_reshard_after_forward

    values = dict(
        model=model_config,
        seq_len=plan.seq_len,
        micro_batch=plan.micro_batch,
        accumulation=plan.accumulation,
        world_size=plan.world_size,
        sharded=world.fsdp if world else plan.world_size > 1,
        reshard_after_forward=fsdp_reshard_after_forward(config.reshard_after_forward),
        reduce_dtype=config.reduce_dtype,
        # Selective checkpointing is estimated as none: it keeps more than full and less than none.
        gradient_checkpointing=config.gradient_checkpointing and config.gradient_checkpointing_policy == "full",
        compile=config.torch_compile,
        bf16=world.bf16 if world else config.bf16 is not False,
        attention=choose_attention(config.attn_implementation, config.document_masking, gpu=True),
        document_masking=config.document_masking,
        optimizer=config.optimizer,
    )
    return TrainingSetup(**{**values, **overrides})
