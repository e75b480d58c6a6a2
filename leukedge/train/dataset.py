"""Torch datasets over records: eval images through the runtime's own preprocessing.

An unreadable image never stops a run: the item comes back as ``None`` with its
path, the collate function drops it and reports it, and the training loop lists
every skipped file at the end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from leukedge.data.records import Record
from leukedge.imaging.images import ImageReadError, read_image
from leukedge.imaging.preprocess import normalize, prepare, preprocess
from leukedge.spec import ModelSpec
from leukedge.train.augment import AugmentConfig, augment


class CellDataset(Dataset):
    """Records -> (tensor, label, index); augmentation only when ``train``.

    With ``stains`` each evaluation item also carries the crop's stain statistics
    (what the domain-shift score compares).
    """

    def __init__(
        self,
        records: Sequence[Record],
        spec: ModelSpec,
        train: bool = False,
        seed: int = 0,
        augment_cfg: AugmentConfig = AugmentConfig(),
        stains: bool = False,
    ) -> None:
        self.records = list(records)
        self.spec = spec
        self.train = train
        self.seed = seed
        self.epoch = 0
        self.augment_cfg = augment_cfg
        self.stains = stains and not train

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int):
        record = self.records[index]
        try:
            image = read_image(record.path)
        except ImageReadError as e:
            return {"error": (record.path, e.reason)}
        if self.train:
            rng = np.random.default_rng([self.seed, self.epoch, index])
            x = normalize(augment(image, self.spec, rng, self.augment_cfg), self.spec)
        elif self.stains:
            x, stain = prepare(image, self.spec)
            return {"x": torch.from_numpy(x), "y": record.label, "index": index, "stain": stain}
        else:
            x = preprocess(image, self.spec)
        return {"x": torch.from_numpy(x), "y": record.label, "index": index}


def collate_skipping_bad(items: list[dict]) -> dict:
    """Stack the good items; pass the unreadable ones on by path."""
    good = [it for it in items if "x" in it]
    errors = [it["error"] for it in items if "error" in it]
    if not good:
        return {"x": None, "y": None, "index": None, "errors": errors}
    out = {
        "x": torch.stack([it["x"] for it in good]),
        "y": torch.tensor([it["y"] for it in good], dtype=torch.long),
        "index": torch.tensor([it["index"] for it in good], dtype=torch.long),
        "errors": errors,
    }
    if "stain" in good[0]:
        out["stain"] = np.stack([it["stain"] for it in good])
    return out


def make_loader(
    dataset: CellDataset,
    batch_size: int,
    shuffle: bool,
    workers: int,
    generator: torch.Generator | None = None,
    sampler=None,
    drop_last: bool = False,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle if sampler is None else False,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping_bad,
        generator=generator,
        drop_last=drop_last,
        persistent_workers=False,  # workers re-fork each epoch and see the new epoch number
        pin_memory=torch.cuda.is_available(),
    )
