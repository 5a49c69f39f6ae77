"""Augmentation randomness as a function of (seed, epoch, sample index) only.

timm's and torchvision's transforms draw from the global RNGs (Python's ``random``, numpy's legacy global state,
torch's default CPU generator). Left alone, those draws depend on which process runs them: DataLoader workers seed
themselves from the main process when their iterator starts, accelerate's saved RNG state cannot reproduce what each
worker drew, and the main process's own stream (dropout!) shifts with every batch it decodes itself when
``num_workers=0``. So a run would change with ``data.num_workers``, with the number of processes and with a resume.

Here every training sample gets its own seed, :func:`sample_seed` of the run's seed, the epoch and its index in the
split. The transform reseeds the global RNGs with it just before that sample's random steps (crop, flips,
RandAugment, ...) and with a second seed derived from it (:data:`TAIL_STREAM`) before the batch-wise tail (colour
jitter, random erasing), inside :func:`preserved_global_rngs` so that the caller's streams are left exactly as they
were. The order of the samples comes from :class:`EpochSampler`, a permutation seeded by (seed, epoch), whose keys
carry the epoch to the dataset in whichever process reads it (or from :class:`BalancedSampler`, ``data.sampler:
balanced``, a draw with replacement seeded by (seed, epoch), whose keys also count the repeats of a sample, so that
each copy is augmented differently). Together: the same crops, flips and batches for 0, 1
or 8 workers, for one process or several, and for a run resumed at an epoch boundary or in the middle of an epoch.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Sampler

# derive_seed(sample seed, TAIL_STREAM) seeds the batch-wise tail of a sample (its colour jitter), apart from its
# per-image head; derive_seed(tail seed, ERASING_STREAM) its random erasing, apart from its jitter
TAIL_STREAM = 1
ERASING_STREAM = 2
# derive_seed(seed, BALANCED_STREAM, epoch) seeds the balanced sampler's draw; derive_seed(seed, MIXUP_STREAM, epoch,
# step, rank) a training step's mixup / CutMix (inat_zoo.trainer.losses)
BALANCED_STREAM = 3
MIXUP_STREAM = 4


def derive_seed(*parts: int) -> int:
    """A 64-bit seed that depends on every integer in ``parts`` (BLAKE2b of their decimal text): nearby inputs give
    unrelated seeds, unlike ``seed + epoch``, and the result is the same on every platform and process."""
    text = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def sample_seed(seed: int, epoch: int, index: int, repeat: int = 0) -> int:
    """The seed of sample ``index`` (its row in the split) in ``epoch`` of a run seeded with ``seed``; ``repeat`` > 0
    for its later copies in one epoch of a sampler that draws with replacement (:class:`BalancedSampler`)."""
    return derive_seed(seed, epoch, index) if repeat == 0 else derive_seed(seed, epoch, index, repeat)


def reseed_global_rngs(seed: int) -> None:
    """Seed Python's ``random``, numpy's global state and torch's default CPU generator from one 64-bit ``seed``.

    Only the CPU generator: the transforms run on the CPU, and seeding CUDA here would initialise it in workers.
    """
    random.seed(seed)
    np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
    torch.default_generator.manual_seed(seed)


@contextmanager
def preserved_global_rngs() -> Iterator[None]:
    """Restore the global RNGs (Python, numpy, torch CPU) on exit to their state on entry, whatever ran inside."""
    python_state, numpy_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.set_rng_state(torch_state)


class SampleKey(NamedTuple):
    """What :class:`EpochSampler` yields: the row to read and the epoch it is read in (which the dataset needs for
    the sample's seed, and which a DataLoader worker could not know otherwise); :class:`BalancedSampler` adds
    ``repeat``, how many times the row was drawn before in this epoch (0 for a first draw)."""

    epoch: int
    index: int
    repeat: int = 0


class _SeededEpochSampler(Sampler[SampleKey]):
    """What the seeded samplers share: ``num_samples`` keys per pass, the pass chosen by :meth:`set_epoch`."""

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields (called by accelerate before each pass)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples


class EpochSampler(_SeededEpochSampler):
    """A shuffled pass over ``num_samples`` rows whose order is a function of (``seed``, epoch) only.

    Call :meth:`set_epoch` before each pass (accelerate's ``DataLoaderShard.set_epoch`` does, through the batch
    sampler). Yields :class:`SampleKey` s. Not a ``RandomSampler`` on purpose: accelerate replaces those with its own
    sampler, whose keys would lose the epoch. Under DDP accelerate shards the batches this order forms.
    """

    def __iter__(self) -> Iterator[SampleKey]:
        for index in torch.randperm(self.num_samples, generator=_generator(self.seed, self.epoch)).tolist():
            yield SampleKey(self.epoch, index)


def _generator(*parts: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(*parts) & 0x7FFF_FFFF_FFFF_FFFF)


class BalancedSampler(_SeededEpochSampler):
    """``len(labels)`` draws with replacement per epoch, each row weighted by 1 / (its class's row count), so every
    class is equally likely at each draw (``WeightedRandomSampler``'s rule); the draw is a function of (``seed``,
    epoch) only.

    ``labels`` is a sequence of int class indices, one per row. Like :class:`EpochSampler` it is not a
    ``RandomSampler`` and yields the same one global draw on every process: accelerate's ``BatchSamplerShard``
    gives each rank its own batches of it (rank r takes batches r, r + W, ...), so the ranks read disjoint slices of
    one draw, and ``skip_first_batches`` resumes it mid-epoch. ``WeightedRandomSampler`` itself would draw from an
    unseeded generator, differently on each rank. Yields :class:`SampleKey` s whose ``repeat`` numbers the copies of
    a row within the epoch (each augmented from its own seed). Raises ValueError for empty or negative labels.
    """

    def __init__(self, labels, seed: int) -> None:
        labels = np.asarray(labels, dtype=np.int64)
        if labels.ndim != 1 or labels.size == 0 or labels.min() < 0:
            raise ValueError("BalancedSampler needs a non-empty sequence of class indices >= 0")
        super().__init__(len(labels), seed)
        counts = np.bincount(labels)
        self.weights = torch.from_numpy(1.0 / counts[labels])  # (N,) float64: 1 / count of the row's class

    def draw(self) -> list[int]:
        """This epoch's rows, in order: ``len(labels)`` indices drawn with replacement (torch.multinomial)."""
        generator = _generator(self.seed, BALANCED_STREAM, self.epoch)
        return torch.multinomial(self.weights, self.num_samples, replacement=True, generator=generator).tolist()

    def __iter__(self) -> Iterator[SampleKey]:
        seen: dict[int, int] = {}
        for index in self.draw():
            repeat = seen.get(index, 0)
            seen[index] = repeat + 1
            yield SampleKey(self.epoch, index, repeat)
