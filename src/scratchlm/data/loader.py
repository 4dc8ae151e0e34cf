"""The training loader: fixed-length windows from token shards, mixed by weight, in a seeded order.

Everything is a function of one integer, `samples_seen` (windows consumed by all ranks together):
- The global stream is a sequence of blocks of BLOCK samples. Each block holds every source
  exactly in proportion to its weight (largest-remainder rounding), in an order shuffled by
  (seed, block). So the mixture is exact every BLOCK samples, not only on average.
- A source's n-th draw is window perm(seed, source, epoch)[n % windows], epoch = n // windows:
  within an epoch no window of a source repeats. A source drawn past its end starts a new,
  differently shuffled epoch, and `epochs()` reports it (data you would otherwise train on twice
  without knowing).
- Rank r of W takes samples [s + r*B, s + (r+1)*B) of each step's W*B: ranks are disjoint.

Resuming at step N therefore costs what step 0 costs and yields exactly the batches the
uninterrupted run would have seen. A different world size continues the same global stream
exactly (the trainer keeps the global batch equal); a different seed, sequence length, mixture
or set of shards would not, and is refused.
"""

import numpy as np
import torch

from ..errors import ScratchError
from .shards import TokenShards

BLOCK = 10_000


class WindowLoader:
    def __init__(
        self,
        shards: TokenShards,
        *,
        seq_len: int,  # tokens per window (each window reads seq_len + 1 for its labels)
        micro_batch: int,  # windows per batch on this rank
        rank: int = 0,  # this rank among `world_size` processes, which draw disjoint windows
        world_size: int = 1,
        seed: int = 0,
    ):
        self.shards, self.seq_len, self.micro_batch = shards, seq_len, micro_batch
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.tokens = [s.train for s in shards.sources]
        self.windows = np.array([(len(t) - 1) // seq_len for t in self.tokens])
        for source, count in zip(shards.sources, self.windows, strict=True):
            if count == 0:
                raise ScratchError(
                    f"source '{source.name}' has {len(source.train)} training tokens, "
                    f"fewer than one window of seq_len + 1 = {seq_len + 1}"
                )
        self.weights = [s.weight for s in shards.sources]
        self.per_block = apportion(BLOCK, self.weights)
        if min(self.per_block) == 0:
            raise ScratchError(f"a source weight below 1/{BLOCK} rounds to no samples: {self.weights}")
        self.samples_seen = 0
        self._blocks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict:
        return {
            "samples_seen": self.samples_seen,
            "seed": self.seed,
            "seq_len": self.seq_len,
            "shards": self.shards.config_hash,
            "weights": self.weights,
        }

    def load_state_dict(self, state: dict) -> None:
        mine = self.state_dict()
        for key, why in (
            ("shards", "the data was prepared differently"),
            ("seq_len", "windows would be cut elsewhere"),
            ("seed", "the order would differ"),
            ("weights", "the mixture would differ"),
        ):
            if state[key] != mine[key]:
                raise ScratchError(
                    f"cannot resume the data stream: {key} was {state[key]!r}, now {mine[key]!r} ({why}, so "
                    "windows already trained on could repeat or be skipped); restore the original setting"
                )
        self.samples_seen = int(state["samples_seen"])

    def epochs(self) -> dict[str, float]:
        """Passes over each source's training windows so far (above 1.0: data is being repeated)."""
        drawn = self._draws_before(self.samples_seen)
        return {s.name: float(d / w) for s, d, w in zip(self.shards.sources, drawn, self.windows, strict=True)}

    # --- batches -----------------------------------------------------------------------------

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        first = self.samples_seen + self.rank * self.micro_batch
        ids = [self.window_id(k) for k in range(first, first + self.micro_batch)]
        self.samples_seen += self.micro_batch * self.world_size
        start = [w * self.seq_len for _, w in ids]
        windows = np.stack([self.tokens[s][i : i + self.seq_len + 1] for (s, _), i in zip(ids, start, strict=True)])
        inputs = windows[:, :-1].astype(np.int64)
        return {
            "input_ids": torch.from_numpy(inputs),
            "labels": torch.from_numpy(windows[:, 1:].astype(np.int64)),
            "position_ids": torch.from_numpy(document_positions(inputs, self.shards.bos_id)),
            "window_ids": torch.tensor(ids, dtype=torch.int64),  # (source, window): what was trained on
        }

    def window_id(self, k: int) -> tuple[int, int]:
        """(source, window number) of the k-th sample of the global stream."""
        source, draw = self.locate(k)
        epoch, position = divmod(draw, int(self.windows[source]))
        return source, int(self._permutation(source, epoch)[position])

    def locate(self, k: int) -> tuple[int, int]:
        """(source, how many draws from that source came before) for global sample k."""
        block, offset = divmod(k, BLOCK)
        order, earlier = self._block(block)
        source = int(order[offset])
        return source, block * self.per_block[source] + int(earlier[offset])

    def _draws_before(self, k: int) -> np.ndarray:
        block, offset = divmod(k, BLOCK)
        order, _ = self._block(block)
        return block * np.array(self.per_block) + np.bincount(order[:offset], minlength=len(self.per_block))

    def _block(self, block: int) -> tuple[np.ndarray, np.ndarray]:
        if block not in self._blocks:
            order = np.repeat(np.arange(len(self.per_block)), self.per_block)
            np.random.default_rng([self.seed, 0, block]).shuffle(order)
            earlier = np.empty_like(order)  # earlier[i] = occurrences of order[i] in order[:i]
            for source in range(len(self.per_block)):
                where = np.flatnonzero(order == source)
                earlier[where] = np.arange(len(where))
            self._blocks = {block: (order, earlier)}  # the stream moves forward: keep one block
        return self._blocks[block]

    def _permutation(self, source: int, epoch: int) -> np.ndarray:
        key = (source, epoch)
        if key not in self._perms:
            if len(self._perms) >= 2 * len(self.tokens):
                self._perms.clear()
            self._perms[key] = np.random.default_rng([self.seed, 1 + source, epoch]).permutation(self.windows[source])
        return self._perms[key]


def apportion(total: int, weights: list[float]) -> list[int]:
    """Integers proportional to `weights` summing to `total` (largest remainder)."""
    exact = np.array(weights, dtype=np.float64) / sum(weights) * total
    counts = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - counts), kind="stable")[: total - counts.sum()]:
        counts[i] += 1
    return counts.tolist()


def document_positions(inputs: np.ndarray, bos_id: int) -> np.ndarray:
    """Position ids that restart at 0 at each document's BOS (and at the window's start), so
    attention that understands packed sequences keeps documents apart."""
    index = np.broadcast_to(np.arange(inputs.shape[1]), inputs.shape)
    starts = np.maximum.accumulate(np.where(inputs == bos_id, index, 0), axis=1)
    return (index - starts).astype(np.int64)
