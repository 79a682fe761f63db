"""Batching: the collate function and a resumable, distributed batch sampler."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor
from torch.utils.data import Dataset, DistributedSampler, Sampler


def collate(batch: list[tuple[Tensor, dict[str, Any]]]) -> tuple[list[Tensor], list[dict]]:
    """Keep pictures as a list: the model pads them bottom-right and builds the masks itself
    (``pad_images``, the official layout), so nothing is padded twice."""
    images, targets = zip(*batch, strict=True)
    return list(images), list(targets)


class ResumableBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of one process's share of a ``DistributedSampler`` epoch (drop_last), able to
    start at batch ``start`` so an interrupted epoch resumes exactly where it stopped. Items
    are (epoch, index) pairs: the dataset seeds each sample's augmentation from them."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        self.sampler = DistributedSampler(
            dataset,
            num_replicas=world_size,
            rank=rank,
            shuffle=shuffle,
            seed=seed,
            drop_last=drop_last,
        )
        self.batch_size = batch_size
        self.drop_last = drop_last
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.sampler.set_epoch(epoch)
        self.start = start

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        indices = list(self.sampler)
        epoch = self.sampler.epoch
        for b in range(self.start, len(self)):
            yield [(epoch, i) for i in indices[b * self.batch_size : (b + 1) * self.batch_size]]
