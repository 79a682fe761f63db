"""What the padding mask decides, kept between calls when nothing is padded.

Position encodings, valid ratios, the encoder's reference points and the two-stage proposal
boxes depend on the padding mask and the feature maps' sizes alone. A batch of same-size
pictures (the shapes demo, fixed-size training, one picture at a time) has no padding, so they
come out the same at every step: some 340 of the demo's forward pass's 916 operations, about
4 ms of its CPU step (benchmarks/train_cpu.md). They are computed once per size, the way they
always are, and the same tensors are handed out again; the sizes used last are kept.

Only in eager runs on a CPU, where learning that nothing is padded costs no host sync and the
small operations' overhead is what a step pays for; exported and compiled graphs compute them.
Kept tensors never require a gradient and nothing writes into them.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import TypeVar

import torch
from torch import Tensor

from ddetr_cli.model.utils import is_eager

T = TypeVar("T")

# Two entries a size (the encodings, the rest): 4 sizes. A training run uses two or three (its
# batch, the evaluation's, a last smaller one); more would only hold memory (an 800 px
# picture's encodings take ~20 MB).
KEPT_ENTRIES = 8

_kept: OrderedDict[Hashable, object] = OrderedDict()
_lock = threading.Lock()


def nothing_padded(mask: Tensor) -> bool:
    """True when ``mask`` (True on padding) is all False, for an eager run on a CPU; False on
    other devices and in exported or compiled graphs, which never use what is kept."""
    return mask.device.type == "cpu" and is_eager() and not bool(mask.any())


def remembered(key: tuple[Hashable, ...], compute: Callable[[], T]) -> T:
    """``compute()``'s result for ``key``, computed on its first use and kept.

    The key must hold everything the result depends on; whether inference mode is on is added
    here (a tensor made under inference_mode cannot be saved for a backward pass)."""
    key = (*key, torch.is_inference_mode_enabled())
    with _lock:
        if key in _kept:
            _kept.move_to_end(key)
            return _kept[key]  # type: ignore[return-value]
    value = compute()
    with _lock:
        _kept[key] = value
        while len(_kept) > KEPT_ENTRIES:
            _kept.popitem(last=False)
    return value


def forget() -> None:
    """Drop everything kept (tests)."""
    with _lock:
        _kept.clear()
