"""The learning-rate and weight-decay schedules: pure functions of the step, so resumes are exact."""

import pytest

from scratchlm.errors import ScratchError
from scratchlm.train.config import PretrainConfig
from scratchlm.train.schedule import Schedule


def test_schedules():
    cosine = Schedule("cosine", 1e-3, 1e-4, warmup_steps=10, total_steps=111, weight_decay=0.1)
    assert cosine.lr(0) == pytest.approx(1e-4) and cosine.lr(9) == pytest.approx(1e-3)
    assert cosine.lr(60) == pytest.approx(5.5e-4) and cosine.lr(110) == pytest.approx(1e-4)
    wsd = Schedule("wsd", 1e-3, 0.0, warmup_steps=0, total_steps=100, weight_decay=0.1, decay_fraction=0.2)
    assert wsd.lr(79) == 1e-3 and wsd.lr(80) == 1e-3 and wsd.lr(99) == 0.0 and wsd.phase(85) == "decay"
    two = Schedule(
        "two_stage",
        1.5e-3,
        1.5e-5,
        warmup_steps=375,
        total_steps=400_000,
        weight_decay=0.1,
        stage_boundary=200_000,
        stage1_final_lr=1e-3,
        stage2_weight_decay=0.0,
    )
    assert two.lr(374) == pytest.approx(1.5e-3) and two.lr(199_999) == pytest.approx(1e-3)
    assert two.lr(399_999) == pytest.approx(1.5e-5)
    assert (two.weight_decay_at(199_999), two.weight_decay_at(200_000)) == (0.1, 0.0)
    assert two.forced_checkpoints() == {199_999, 200_000}


def test_every_step_of_a_schedule_is_a_function_of_the_step_alone():
    """A resumed run rebuilds the schedule from its config and horizon: the same value at every step."""
    kwargs = {"warmup_steps": 5, "total_steps": 50, "weight_decay": 0.1}
    for kind in ("cosine", "wsd", "constant"):
        first, again = Schedule(kind, 1e-3, 1e-4, **kwargs), Schedule(kind, 1e-3, 1e-4, **kwargs)
        assert [first.lr(s) for s in range(50)] == [again.lr(s) for s in range(50)]
        assert max(first.lr(s) for s in range(50)) == pytest.approx(1e-3)
        assert all(first.lr(s) <= first.lr(s - 1) + 1e-12 for s in range(6, 50))  # never rises after warmup
    cosine = Schedule("cosine", 1e-3, 1e-4, **kwargs)
    assert [cosine.phase(s) for s in (0, 4, 5, 49)] == ["warmup", "warmup", "decay", "decay"]
    assert Schedule("constant", 1e-3, 0.0, **kwargs).lr(49) == 1e-3
    assert cosine.forced_checkpoints() == set()  # only two_stage forces any


def test_a_schedule_of_an_unknown_kind_is_refused_where_it_is_built_and_in_the_config():
    with pytest.raises(ScratchError, match="lr_scheduler_type 'linear' is not one of cosine, wsd, two_stage"):
        Schedule("linear", 1e-3, 1e-4, warmup_steps=5, total_steps=50, weight_decay=0.1)
    with pytest.raises(ScratchError, match="lr_scheduler_type"):
        PretrainConfig(output_dir="x", model_preset="tiny", data_dir="x", max_steps=1, lr_scheduler_type="linear")


@pytest.mark.parametrize("total_steps, fraction", [(100, 0.2), (37, 0.1), (10, 0.2), (10, 0.05)])
def test_wsd_decays_and_says_decay_from_the_same_step(total_steps, fraction):
    wsd = Schedule("wsd", 1e-3, 0.0, warmup_steps=2, total_steps=total_steps, weight_decay=0.1, decay_fraction=fraction)
    falling = [s for s in range(1, total_steps) if wsd.lr(s) < wsd.lr(s - 1)]
    decaying = [s for s in range(total_steps) if wsd.phase(s) == "decay"]
    assert decaying == list(range(wsd.decay_start, total_steps)) and wsd.lr(total_steps - 1) == 0.0
    assert falling[0] == wsd.decay_start + (len(decaying) > 1)  # the first of several decay steps is at the peak
