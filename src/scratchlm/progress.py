"""Progress on stderr that reads well both at a terminal and in a log file.

At a terminal, a tqdm bar. Anywhere else (nohup, a cluster job, `2> log`) a bar's carriage returns make
one endless line, so a plain line at most every `interval_s` seconds instead, and one at the end if any
was written. Training's progress (train/monitor.py) is a Bar with the run's metrics as its fields.
"""

import sys
import time

from tqdm import tqdm


class Bar:
    def __init__(
        self, total: int, what: str, unit: str, enabled: bool = True, interval_s: float = 10.0, initial: int = 0
    ):
        self.total, self.what, self.unit, self.interval_s = total, what, unit, interval_s
        self.enabled, self.tty = enabled, sys.stderr.isatty()
        self.bar = tqdm(total=total, initial=initial, desc=what, unit=f" {unit}", disable=not (enabled and self.tty),
                        leave=False, dynamic_ncols=True)  # fmt: skip
        self.done, self.initial, self.lines = initial, initial, 0
        self.fields: dict[str, str] = {}  # shown after the count: a bar's postfix, a log line's tail
        self.start = self._last_line = time.perf_counter()

    def __enter__(self) -> "Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def advance(self, count: int = 1) -> None:
        self.done += count
        if self.fields and self.tty:
            self.bar.set_postfix(self.fields, refresh=False)
        self.bar.update(count)
        if self.enabled and not self.tty and time.perf_counter() - self._last_line >= self.interval_s:
            self._line()

    def close(self) -> None:
        self.bar.close()
        if self.lines:  # a log that showed progress also shows the end
            self._line()

    def _line(self) -> None:
        now = time.perf_counter()
        self._last_line, self.lines = now, self.lines + 1
        elapsed, done_here = now - self.start, self.done - self.initial
        left = self.total - self.done if self.total else 0  # total None: a count without an end
        eta = f", about {duration(elapsed * left / done_here)} left" if done_here and left > 0 else ""
        count = f"{self.done:,}/{self.total:,} {self.unit} ({self.done / self.total:.0%})" if self.total else (
            f"{self.done:,} {self.unit}")  # fmt: skip
        fields = "".join(f"  {k} {v}" for k, v in self.fields.items())
        print(
            f"{self.what}: {count} in {duration(elapsed)}{eta}{fields}",
            file=sys.stderr,
            flush=True,
        )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"
