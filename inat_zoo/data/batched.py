"""Run the tensor tail of a timm/torchvision transform once per batch instead of once per image.

timm's transforms end in ``[ColorJitter] -> ToTensor -> Normalize [-> RandomErasing]``. On PIL images that tail
costs more than the random resized crop (PIL's ColorJitter alone ~2 ms per 224 px image); on a stacked uint8 batch
it is a few vectorised tensor operations. :class:`BatchedTransform` keeps the leading PIL steps (crop, flip,
RandAugment, ...) per image and replaces the tail with a batch-wise equivalent:

- ToTensor + Normalize: the same float32 operations in the same order, so results are bit-identical;
- ColorJitter: per-image factors and per-image random order drawn with torchvision's own ``get_params`` (same
  distribution), applied with torchvision's tensor formulas (PIL rounds to uint8 between the three steps, the
  tensor path does not: differences stay within a couple of grey levels);
- timm RandomErasing: it already handles a batch, erasing each image independently.

Any other tail (or a transform that is not a ``Compose``) is not split: :meth:`BatchedTransform.from_transform`
returns ``None`` and the caller applies the transform per image.

When the head starts with timm's RandomResizedCrop (every timm training transform), :attr:`BatchedTransform.crop`
fuses it with decoding (:mod:`inat_zoo.data.crop_decode`) and :meth:`BatchedTransform.from_values` runs the whole
pipeline from the undecoded dataset values; flips then run on the uint8 tensor (torchvision's flips take tensors
and draw the same torch random numbers), any other PIL step on a PIL image of the crop.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from PIL import Image

_TO_TENSOR = ("ToTensor", "MaybeToTensor")


def _gray(x: torch.Tensor) -> torch.Tensor:
    """torchvision's rgb_to_grayscale on a float batch (B, 3, H, W) -> (B, 1, H, W)."""
    return (0.2989 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor | float, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1.0 - factor) * other).clamp_(0.0, 1.0)


def _new_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty float32 batch of ``shape`` (B, C, H, W); in a DataLoader worker it lives in shared memory, as the
    default collate's batches do, so handing it to the main process costs no copy.

    ``share_memory_()`` (public) moves the fresh, never-touched storage into shared memory: its one copy reads
    untouched zero pages, ~0.4 ms for a 32x3x224x224 batch (measured against torch's private ``_new_shared``,
    which the default collate uses)."""
    import torch
    from torch.utils.data import get_worker_info

    batch = torch.empty(shape, dtype=torch.float32)
    return batch if get_worker_info() is None else batch.share_memory_()


class BatchColorJitter:
    """torchvision ``ColorJitter`` for a float batch in [0, 1], each image with its own factors and order."""

    def __init__(self, jitter: Any) -> None:
        self.jitter = jitter

    def __call__(self, x: torch.Tensor, seeds: Sequence[int] | None = None) -> torch.Tensor:
        """``x``: float (B, 3, H, W) in [0, 1]; ``seeds``: one per image, reseeding the global RNGs before its
        draw (the caller preserves them), else the draws come from the RNGs as they stand."""
        import torch
        from torchvision.transforms import functional as F

        from .seeding import reseed_global_rngs

        j = self.jitter
        groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
        factors = []
        for i in range(x.shape[0]):
            if seeds is not None:
                reseed_global_rngs(seeds[i])
            order, b, c, s, h = j.get_params(j.brightness, j.contrast, j.saturation, j.hue)
            groups[tuple(order.tolist())].append(i)
            factors.append((b, c, s, h))
        out = torch.empty_like(x)
        for order, rows in groups.items():
            index = torch.tensor(rows)
            part = x.index_select(0, index)

            def column(k: int, rows: list[int] = rows) -> torch.Tensor:
                return torch.tensor([factors[r][k] for r in rows], dtype=x.dtype).view(-1, 1, 1, 1)

            for fn_id in order:
                if fn_id == 0 and j.brightness is not None:
                    part = _blend(part, 0.0, column(0))
                elif fn_id == 1 and j.contrast is not None:
                    part = _blend(part, _gray(part).mean(dim=(1, 2, 3), keepdim=True), column(1))
                elif fn_id == 2 and j.saturation is not None:
                    part = _blend(part, _gray(part), column(2))
                elif fn_id == 3 and j.hue is not None:
                    part = torch.stack([F.adjust_hue(img, factors[r][3]) for img, r in zip(part, rows, strict=True)])
            out.index_copy_(0, index, part)
        return out


class BatchedTransform:
    """Per-image PIL head + batch-wise tensor tail of a ``Compose``; see the module docstring."""

    def __init__(self, head: Sequence[Callable], jitter: Any | None, mean: Any, std: Any, erasing: Any | None):
        self.head = list(head)
        self.jitter = BatchColorJitter(jitter) if jitter is not None else None
        self.mean = mean
        self.std = std
        self.erasing = erasing
        self.crop = None
        if self.head:
            from .crop_decode import FusedRandomResizedCrop

            self.crop = FusedRandomResizedCrop.from_step(self.head[0])

    @classmethod
    def from_transform(cls, transform: Any) -> BatchedTransform | None:
        """Split a timm ``Compose`` into a PIL head and a batched tail, or ``None`` when it has no supported shape.

        Supported: ``[... PIL steps, (ColorJitter)] + ToTensor/MaybeToTensor + Normalize(3 channels, not in place)
        (+ timm RandomErasing)``; the first PIL step is fused with decoding when it is timm's RandomResizedCrop.
        """
        steps = list(getattr(transform, "transforms", []) or [])
        names = [type(s).__name__ for s in steps]
        cut = next((i for i, n in enumerate(names) if n in _TO_TENSOR), None)
        if cut is None or cut + 1 >= len(steps) or names[cut + 1] != "Normalize":
            return None
        normalize = steps[cut + 1]
        if getattr(normalize, "inplace", False) or len(normalize.mean) != 3:
            return None
        rest = steps[cut + 2 :]
        erasing = None
        if rest:
            if len(rest) != 1 or names[cut + 2] != "RandomErasing" or not hasattr(rest[0], "_erase"):
                return None
            erasing = rest[0]
        head, jitter = steps[:cut], None
        if head and names[cut - 1] == "ColorJitter":
            head, jitter = head[:-1], steps[cut - 1]
        return cls(head, jitter, normalize.mean, normalize.std, erasing)

    def _pil_head(self, img: Image.Image) -> Image.Image:
        for step in self.head:
            img = step(img)
        return img

    def tail(self, crops: Sequence[torch.Tensor], seeds: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 (H, W, 3) crops of one size (a list or a (B, H, W, 3) batch) -> normalised float32 (B, 3, H, W),
        exactly as ToTensor + Normalize do per image. With ``seeds`` (one per crop) the random steps of each image
        draw from the global RNGs reseeded with its seed, which are restored afterwards (see
        :mod:`inat_zoo.data.seeding`)."""
        import torch

        h, w, c = crops[0].shape
        x = _new_batch((len(crops), c, h, w))
        mean = torch.as_tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        for image, pixels in zip(x, crops, strict=True):  # one image at a time: its passes stay in the CPU cache
            image.copy_(pixels.permute(2, 0, 1)).div_(255)  # transpose + convert in one pass, then scale
            if self.jitter is None:
                image.sub_(mean).div_(std)
        if seeds is None or (self.jitter is None and self.erasing is None):  # nothing random to seed
            return self._random_tail(x, mean, std, None)
        from .seeding import preserved_global_rngs

        with preserved_global_rngs():
            return self._random_tail(x, mean, std, seeds)

    def _random_tail(
        self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, seeds: Sequence[int] | None
    ) -> torch.Tensor:
        """Jitter (then normalisation) and erasing on the float batch ``x`` (B, 3, H, W); per-image draws when
        ``seeds`` are given, so each image's result does not depend on the others in its batch."""
        from .seeding import ERASING_STREAM, derive_seed, reseed_global_rngs

        if self.jitter is not None:
            x = self.jitter(x, seeds).sub_(mean).div_(std)
        if self.erasing is not None:
            if seeds is None:
                x = self.erasing(x)
            else:
                for image, seed in zip(x, seeds, strict=True):
                    reseed_global_rngs(derive_seed(seed, ERASING_STREAM))  # apart from the same image's jitter draw
                    self.erasing(image)  # timm's RandomErasing erases a (C, H, W) tensor in place
        return x

    def _after_crop(self, x: torch.Tensor) -> torch.Tensor:
        """The head's steps after the fused crop, on a uint8 (3, H, W) crop; returns uint8 (H, W, 3)."""
        import numpy as np
        import torch
        from PIL import Image
        from torchvision import transforms as T

        img = None
        for step in self.head[1:]:
            if img is None and type(step) in (T.RandomHorizontalFlip, T.RandomVerticalFlip):  # same RNG on tensors
                x = step(x)
                continue
            if img is None:
                img = Image.fromarray(x.permute(1, 2, 0).numpy())
            img = step(img)
        if img is None:
            return x.permute(1, 2, 0)
        return torch.from_numpy(np.array(img if img.mode == "RGB" else img.convert("RGB")))

    def crop_uint8(self, value: Any) -> torch.Tensor:
        """The head from one undecoded ``datasets`` image value, the crop fused with decoding: uint8 (H, W, 3)."""
        if self.crop is None:
            raise ValueError("this transform does not start with timm's RandomResizedCrop; decode and call it")
        return self._after_crop(self.crop(value))

    def crops_uint8(self, values: Sequence[Any]) -> list[torch.Tensor]:
        """:meth:`crop_uint8` of each value."""
        return [self.crop_uint8(value) for value in values]

    def head_uint8(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """The PIL head on decoded images: uint8 (H, W, 3) each."""
        import numpy as np
        import torch

        heads = [self._pil_head(img) for img in images]
        return [torch.from_numpy(np.array(h if h.mode == "RGB" else h.convert("RGB"))) for h in heads]

    def finish(self, crops: Sequence[torch.Tensor], seeds: Sequence[int] | None = None) -> list[torch.Tensor]:
        """The tail on uint8 (H, W, 3) crops, as one batch when their sizes agree: float32 (3, H, W) each."""
        if len({c.shape for c in crops}) == 1:
            return list(self.tail(crops, seeds).unbind(0))
        # sizes differ: one at a time
        return [self.tail([c], None if seeds is None else [seeds[i]])[0] for i, c in enumerate(crops)]

    def from_values(self, values: Sequence[Any]) -> list[torch.Tensor]:
        """The whole transform from undecoded ``datasets`` image values, the crop fused with decoding: one normalised
        float32 (3, H, W) tensor per value."""
        return self.finish(self.crops_uint8(values))

    def __call__(self, images: Sequence[Image.Image]) -> list[torch.Tensor]:
        """Decoded PIL images -> the whole transform's output, one normalised float32 (3, H, W) tensor each."""
        return self.finish(self.head_uint8(images))


class ImageCollate:
    """DataLoader ``collate_fn`` that runs a :class:`BatchedTransform` tail on a whole batch of uint8 crops.

    Items come from ``with_image_transform(..., defer_tail=True)``: ``pixel_values`` uint8 (H, W, 3), a quarter of
    the bytes of float images. Normalising each straight into its place in the batch saves the float per-item
    tensors that the default collate would copy into a new batch: on a CPU that copy costs as much as the
    normalisation itself. A plain class, so it pickles into DataLoader workers.
    """

    def __init__(self, batched: BatchedTransform | None) -> None:
        self.batched = batched

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Items -> ``{"pixel_values": float32 (B, 3, H, W) normalised, "label": int64 (B,), ...}`` (other keys as
        the default collate makes them; ``seed`` is consumed)."""
        import torch
        from torch.utils.data import default_collate

        pixels = [item["pixel_values"] for item in items]
        seeds = [item["seed"] for item in items] if "seed" in items[0] else None  # see inat_zoo.data.seeding
        rest = default_collate([{k: v for k, v in it.items() if k not in ("pixel_values", "seed")} for it in items])
        if self.batched is None or pixels[0].dtype != torch.uint8:  # a transform that finished per image
            return {"pixel_values": torch.stack(pixels), **rest}
        return {"pixel_values": self.batched.tail(pixels, seeds), **rest}
