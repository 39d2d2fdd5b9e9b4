"""The batch arithmetic both loaders share: global batches, DDP shards, and the per-epoch seed stride."""

from __future__ import annotations

EPOCH_STRIDE = 1_000_003  # prime; (seed, epoch) pairs map to distinct generator seeds for any realistic epoch count


def shard_part(n: int, rank: int, world: int) -> slice:
    """Rank `rank`'s contiguous share of n items split over `world` ranks (torch.tensor_split's sizes: the
    first n % world shares one larger). world=1 gives everything."""
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return slice(lo, lo + base + (1 if rank < extra else 0))


class Batching:
    """The batch arithmetic both loaders share, DDP sharding included.

    Train batches are *global*: batch b holds the same images on every rank count, and with a
    `shard=(rank, world)` each rank yields only its contiguous part of it (sizes differ by at most one).
    That is what makes a DDP run equal to the single-process run on the same global batch. Under DDP a
    trailing train batch with fewer images than ranks is skipped (every rank needs at least one image).
    Test splits are cut into one contiguous share per rank and batched within it; the runner sums the
    per-rank counts.
    """

    def _init_batching(self, num_samples: int, batch_size: int, train: bool, drop_last: bool,
                       shard: tuple[int, int]) -> None:
        rank, world = int(shard[0]), int(shard[1])
        if batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size must be >= 1, got {batch_size}")
        if world < 1 or not 0 <= rank < world:
            raise ValueError(f"{type(self).__name__}: shard must be (rank, world) with 0 <= rank < world, got {shard}")
        self.batch_size, self.train, self.drop_last = int(batch_size), bool(train), bool(drop_last)
        self.rank, self.world = rank, world
        self.num_samples = int(num_samples)  # global (train) or this rank's share (test)
        self.local_range = range(num_samples)
        if not train and world > 1:
            part = shard_part(num_samples, rank, world)
            self.local_range = range(part.start, part.stop)
            self.num_samples = len(self.local_range)

    def __len__(self) -> int:
        n, bs = self.num_samples, self.batch_size
        if self.drop_last and self.train:
            return n // bs
        full, rest = divmod(n, bs)
        return full + (1 if rest and (not self.train or rest >= self.world) else 0)

    def global_batch_size(self, b: int) -> int:
        """How many images batch b holds over all ranks."""
        return min(self.batch_size, self.num_samples - b * self.batch_size)

    def batch_bounds(self, b: int) -> tuple[int, int]:
        """[lo, hi) of batch b in the epoch's order (train) or in this rank's share (test)."""
        lo = b * self.batch_size
        return lo, lo + self.global_batch_size(b)

    def my_part(self, n: int) -> slice:
        """This rank's part of a global train batch of n images."""
        return shard_part(n, self.rank, self.world)
