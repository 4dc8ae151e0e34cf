"""Where a run is: the counters a checkpoint carries so a resumed run continues as if never stopped."""

import time
from dataclasses import asdict, dataclass, field, fields


@dataclass
class TrainState:
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # tokens trained on, all ranks together
    elapsed_s: float = 0.0  # wall time of every session of the run
    cost_usd: float = 0.0
    skipped_steps: int = 0  # batches dropped for a non-finite loss (on_nonfinite: skip)
    total_steps: int = 0  # the horizon
    _session: tuple[float, float, float] = field(default=(0.0, 0.0, 0.0), repr=False)

    @property
    def done(self) -> bool:
        return self.step >= self.total_steps

    def start_clock(self) -> None:
        """Time from now on adds to what earlier sessions of the run spent."""
        self._session = (time.perf_counter(), self.elapsed_s, self.cost_usd)

    def advance(self, tokens: int, usd_per_hour: float) -> None:
        """One optimizer step done; `usd_per_hour` is the price of every GPU of the run together."""
        started, elapsed, cost = self._session
        self.step += 1
        self.tokens += tokens
        self.elapsed_s = elapsed + time.perf_counter() - started
        self.cost_usd = cost + (self.elapsed_s - elapsed) / 3600 * usd_per_hour

    def state_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def load_state_dict(self, state: dict) -> None:
        for f in fields(self):
            if f.name in state:
                setattr(self, f.name, type(getattr(self, f.name))(state[f.name]))
