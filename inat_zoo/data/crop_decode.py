"""timm's RandomResizedCrop fused with decoding: draw the crop on the full size, decode only as much as it needs.

A training crop of a ~800x600 photo is resized to 224 px; decoding the whole photo at full resolution and resizing
it with PIL's per-pixel bicubic filter are the two big costs of the naive pipeline. :class:`FusedRandomResizedCrop`

1. reads the size from the file header (``Image.open`` is lazy) and draws the crop box with timm's own
   ``RandomResizedCropAndInterpolation.get_params`` on that full size: the same distribution, the same RNG calls;
2. picks the largest JPEG DCT reduction (1/2, 1/4, 1/8, Pillow's ``draft``) at which the box still covers the
   output size, so the crop is never upsampled from data the full decode would have had;
3. crops (box scaled to the reduced image) and resizes with torch's uint8 antialiased bilinear/bicubic kernels,
   which follow PIL's filters (a grey level or two apart) at a fraction of the cost.

Images with an EXIF rotation, already decoded PIL images and modes whose RGB conversion depends on the whole image
(16-bit, alpha, palette) are decoded in full first, without draft. The steps after the crop (flips, RandAugment,
...) run as in timm's ``Compose``.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from .transforms import decode_image, open_image, to_rgb

if TYPE_CHECKING:
    import torch
    from PIL import Image as PILImage

DRAFT_SCALES = (8, 4, 2)  # libjpeg's DCT scalings Pillow's draft offers, largest first
_PLAIN_MODES = ("RGB", "L")  # crop first, convert after: same pixels as convert-then-crop
_TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}  # PIL filters torch's antialiased kernels follow


def draft_scale(box_w: float, box_h: float, out_w: int, out_h: int) -> int:
    """The largest JPEG reduction (8, 4, 2 or 1) at which a ``box_w`` x ``box_h`` crop still covers the output."""
    for scale in DRAFT_SCALES:
        if box_w / scale >= out_w and box_h / scale >= out_h:
            return scale
    return 1


def _interp_name(mode: Any) -> str | None:
    name = getattr(mode, "value", mode)
    return _TORCH_MODES.get(name) if isinstance(name, str) else None


class FusedRandomResizedCrop:
    """Decode + timm ``RandomResizedCropAndInterpolation`` in one step; returns a uint8 tensor (3, H, W).

    Build it with :meth:`from_step`, which returns ``None`` for a crop it cannot reproduce (another class, or an
    interpolation other than bilinear/bicubic); the caller then keeps the plain decode + PIL path.
    """

    def __init__(self, step: Any) -> None:
        self.step = step
        self.out_h, self.out_w = step.size
        modes = step.interpolation if isinstance(step.interpolation, (tuple, list)) else [step.interpolation]
        self.modes = [_interp_name(m) for m in modes]

    @classmethod
    def from_step(cls, step: Any) -> FusedRandomResizedCrop | None:
        from timm.data.transforms import RandomResizedCropAndInterpolation

        if type(step) is not RandomResizedCropAndInterpolation:
            return None
        modes = step.interpolation if isinstance(step.interpolation, (tuple, list)) else [step.interpolation]
        if not modes or any(_interp_name(m) is None for m in modes):
            return None
        return cls(step)

    def _params(self, img: PILImage.Image) -> tuple[int, int, int, int, str]:
        """timm's draw, in timm's order: box from ``get_params``, then ``random.choice`` of the interpolation."""
        i, j, h, w = self.step.get_params(img, self.step.scale, self.step.ratio)
        isrand = isinstance(self.step.interpolation, (tuple, list))
        mode = random.choice(self.modes) if isrand else self.modes[0]
        return i, j, h, w, mode

    def decode_crop(self, value: Any) -> tuple[PILImage.Image, str, int]:
        """The RGB crop region (at the decode scale), the interpolation to resize it with, and the scale used."""
        img = open_image(value)
        lazy_ok = img is not None and (img.format == "JPEG" or img.mode in _PLAIN_MODES)
        if not lazy_ok or img.getexif().get(0x0112, 1) != 1:
            full = decode_image(value)  # decoded, rotated or an odd mode: the whole image, upright, RGB first
            i, j, h, w, mode = self._params(full)
            return full.crop((j, i, j + w, i + h)), mode, 1
        i, j, h, w, mode = self._params(img)  # header size: nothing decoded yet
        scale = draft_scale(w, h, self.out_w, self.out_h) if img.format == "JPEG" else 1
        if scale > 1:
            full_w, full_h = img.size
            drafted = img.draft("RGB", (full_w // scale, full_h // scale))  # // keeps Pillow on exactly `scale`
            scale = round(full_w / drafted[1][2]) if drafted else 1
        x0, y0 = round(j / scale), round(i / scale)
        x1 = max(x0 + 1, min(img.size[0], round((j + w) / scale)))
        y1 = max(y0 + 1, min(img.size[1], round((i + h) / scale)))
        return to_rgb(img.crop((x0, y0, x1, y1))), mode, scale

    def __call__(self, value: Any) -> torch.Tensor:
        import numpy as np
        import torch
        import torch.nn.functional as F

        region, mode, _scale = self.decode_crop(value)
        x = torch.from_numpy(np.array(region)).permute(2, 0, 1).unsqueeze(0)  # channels-last: torch's fast path
        if x.shape[-2:] != (self.out_h, self.out_w):
            x = F.interpolate(x, size=(self.out_h, self.out_w), mode=mode, antialias=True, align_corners=False)
        return x[0]
