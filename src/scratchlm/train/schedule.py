"""Learning rate and weight decay as pure functions of the step: nothing to save, exact on resume.

`step` is the 0-based index of the optimizer step about to be taken.
- cosine: linear warmup to the peak, then cosine to min_lr at the last step;
- wsd: warmup, stable at the peak, linear decay to min_lr over the last decay_fraction of steps;
- two_stage (the BitNet b1.58 95M recipe): warmup, linear peak -> stage1_final_lr until stage_boundary,
  then linear stage1_final_lr -> min_lr with weight decay stage2_weight_decay (0);
- constant: warmup, then the peak.
"""

import math
from dataclasses import dataclass

from ..errors import ScratchError

SCHEDULES = ("cosine", "wsd", "two_stage", "constant")


@dataclass
class Schedule:
    kind: str
    peak_lr: float
    min_lr: float
    warmup_steps: int
    total_steps: int
    weight_decay: float
    decay_fraction: float = 0.2
    stage_boundary: int = 0
    stage1_final_lr: float = 0.0
    stage2_weight_decay: float = 0.0

    def __post_init__(self):
        if self.kind not in SCHEDULES:
            raise ScratchError(f"lr_scheduler_type '{self.kind}' is not one of {', '.join(SCHEDULES)}")

    @property
    def decay_start(self) -> int:
        """wsd: the first step of the decay, the last decay_fraction of the steps (at least one)."""
        return self.total_steps - max(1, round(self.decay_fraction * self.total_steps))

    @classmethod
    def from_config(cls, config, total_steps: int) -> "Schedule":
        return cls(
            kind=config.lr_scheduler_type,
            peak_lr=config.learning_rate,
            min_lr=config.min_lr,
            warmup_steps=config.warmup_steps,
            total_steps=total_steps,
            weight_decay=config.weight_decay,
            decay_fraction=config.decay_fraction,
            stage_boundary=config.stage_boundary,
            stage1_final_lr=config.stage1_final_lr,
            stage2_weight_decay=config.stage2_weight_decay,
        )

    def lr(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.peak_lr * (step + 1) / self.warmup_steps
        if self.kind == "constant":
            return self.peak_lr
        if self.kind == "cosine":
            progress = _progress(step, self.warmup_steps, self.total_steps)
            return self.min_lr + (self.peak_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.kind == "wsd":
            if step < self.decay_start:
                return self.peak_lr
            return _linear(self.peak_lr, self.min_lr, _progress(step, self.decay_start, self.total_steps))
        if step < self.stage_boundary:  # two_stage, the one kind left (__post_init__ refuses any other)
            return _linear(self.peak_lr, self.stage1_final_lr, _progress(step, self.warmup_steps, self.stage_boundary))
        return _linear(self.stage1_final_lr, self.min_lr, _progress(step, self.stage_boundary, self.total_steps))

    def weight_decay_at(self, step: int) -> float:
        if self.kind == "two_stage" and step >= self.stage_boundary:
            return self.stage2_weight_decay
        return self.weight_decay

    def phase(self, step: int) -> str:
        """Where step `step` lies in the schedule (metrics' `schedule_phase`)."""
        if step < self.warmup_steps:
            return "warmup"
        if self.kind == "two_stage":
            return "stage 1" if step < self.stage_boundary else "stage 2"
        if self.kind == "wsd":
            return "stable" if step < self.decay_start else "decay"
        return "decay" if self.kind == "cosine" else "constant"

    def forced_checkpoints(self) -> set[int]:
        """Completed-step counts that must be saved: the two sides of the two-stage boundary."""
        if self.kind == "two_stage":
            return {self.stage_boundary - 1, self.stage_boundary}
        return set()


def _progress(step: int, start: int, end: int) -> float:
    """0 at `start`, 1 at the last step before `end`; a part one step long is at its end at once (else a
    one-step decay would never decay)."""
    if end - 1 <= start:
        return float(step >= start)
    return min(1.0, max(0.0, (step - start) / (end - 1 - start)))


def _linear(start: float, end: float, progress: float) -> float:
    return start + (end - start) * progress
