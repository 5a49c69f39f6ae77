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
carry the epoch to the dataset in whichever process reads it. Together: the same crops, flips and batches for 0, 1
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


def derive_seed(*parts: int) -> int:
    """A 64-bit seed that depends on every integer in ``parts`` (BLAKE2b of their decimal text): nearby inputs give
    unrelated seeds, unlike ``seed + epoch``, and the result is the same on every platform and process."""
    text = ",".join(str(int(p)) for p in parts).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of sample ``index`` (its row in the split) in ``epoch`` of a run seeded with ``seed``."""
    return derive_seed(seed, epoch, index)


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
    the sample's seed, and which a DataLoader worker could not know otherwise)."""

    epoch: int
    index: int


class EpochSampler(Sampler[SampleKey]):
    """A shuffled pass over ``num_samples`` rows whose order is a function of (``seed``, epoch) only.

    Call :meth:`set_epoch` before each pass (accelerate's ``DataLoaderShard.set_epoch`` does, through the batch
    sampler). Yields :class:`SampleKey` s. Not a ``RandomSampler`` on purpose: accelerate replaces those with its own
    sampler, whose keys would lose the epoch. Under DDP accelerate shards the batches this order forms.
    """

    def __init__(self, num_samples: int, seed: int) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next ``__iter__`` yields (called by accelerate before each pass)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[SampleKey]:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch) & 0x7FFF_FFFF_FFFF_FFFF)
        for index in torch.randperm(self.num_samples, generator=generator).tolist():
            yield SampleKey(self.epoch, index)
