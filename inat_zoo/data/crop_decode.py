"""timm's RandomResizedCrop fused with decoding: draw the crop on the full size, decode only as much as it needs.

A training crop of a ~800x600 photo is resized to 224 px; decoding the whole photo at full resolution and resizing
it with PIL's per-pixel bicubic filter are the two big costs of the naive pipeline. :class:`FusedRandomResizedCrop`

1. reads the size from the file header and draws the crop box with timm's own
   ``RandomResizedCropAndInterpolation.get_params`` on that full size: the same distribution, the same RNG calls;
2. picks the largest JPEG DCT reduction (1/2, 1/4, 1/8) at which the box still covers the output size, so the crop
   is never upsampled from data the full decode would have had, and for a baseline JPEG stops decoding just below
   the box (:func:`jpeg_top_rows`);
3. crops (box scaled to the reduced image) and resizes with torch's uint8 antialiased bilinear/bicubic kernels,
   which follow PIL's filters (a grey level or two apart) at a fraction of the cost.

Decoders, fastest first (:func:`decode_region`):

- baseline/progressive YCbCr or grey JPEGs without an EXIF rotation: libjpeg-turbo straight into a numpy array, the
  same pixels as Pillow's decoder at every scale, without Pillow's 4-byte RGB buffer and copies. With the optional C
  extension (``_libjpeg_region``, built by ``setup.py`` where the libjpeg-turbo headers are) only the crop rectangle
  is reconstructed; without it ``simplejpeg`` decodes whole rows down to the crop (:func:`jpeg_top_rows`).
  :data:`JPEG_DECODER` says which one runs;
- binary PPM (what ``prepare_dataset`` stores): a numpy view of the bytes, nothing to decode;
- anything else (PNG, CMYK JPEGs, EXIF rotations, 16-bit, alpha, palette, PIL images): Pillow, with ``draft`` for
  JPEGs, the whole image decoded upright first where the RGB conversion or rotation needs it.

The steps after the crop (flips, RandAugment, ...) run as in timm's ``Compose``.
"""

from __future__ import annotations

import random
import re
from typing import TYPE_CHECKING, Any

from .decode import decode_image, open_image, source_bytes, to_rgb

if TYPE_CHECKING:
    import numpy as np
    import torch

DRAFT_SCALES = (8, 4, 2)  # libjpeg's power-of-two DCT scalings (its other M/8 scalings have no SIMD: slower)
_PLAIN_MODES = ("RGB", "L")  # crop first, convert after: same pixels as convert-then-crop
_TORCH_MODES = {"bilinear": "bilinear", "bicubic": "bicubic"}  # PIL filters torch's antialiased kernels follow
_SIMPLEJPEG_COLORSPACES = ("YCbCr", "Gray")  # libjpeg converts these to RGB exactly as Pillow does
_PPM_HEADER = re.compile(rb"P6\s+(\d+)\s+(\d+)\s+255\s")  # 8-bit binary PPM: what prepare_dataset writes

try:  # optional, like PyYAML's libyaml loader: the package works without it, the same pixels, ~15% slower
    from . import _libjpeg_region
except ImportError as exc:  # not built (no compiler or headers at install time) or libjpeg too old at run time
    _libjpeg_region = None
    JPEG_DECODER = (
        f"simplejpeg, whole rows (the optional region decoder did not load: {exc}; it is built at install time where"
        " a C compiler and the libjpeg-turbo headers are)"
    )
else:
    JPEG_DECODER = f"libjpeg-turbo {_libjpeg_region.LIBJPEG_TURBO_VERSION} region decode (_libjpeg_region)"


def draft_scale(box_w: float, box_h: float, out_w: int, out_h: int) -> int:
    """The largest JPEG reduction (8, 4, 2 or 1) at which a ``box_w`` x ``box_h`` crop still covers the output."""
    for scale in DRAFT_SCALES:
        if box_w / scale >= out_w and box_h / scale >= out_h:
            return scale
    return 1


def _interp_name(mode: Any) -> str | None:
    name = getattr(mode, "value", mode)
    return _TORCH_MODES.get(name) if isinstance(name, str) else None


def _jpeg_segments(data: bytes):
    """``(marker, offset)`` of each header segment of JPEG ``data`` up to and including the first scan header (SOS),
    read without decoding."""
    pos = 2  # after SOI
    while pos + 4 <= len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte before a marker
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            return
        yield marker, pos
        if marker == 0xDA:  # start of scan: entropy-coded data follows, no more header segments to read
            return
        pos += 2 + max(int.from_bytes(data[pos + 2 : pos + 4], "big"), 2)


def jpeg_orientation(data: bytes) -> int:
    """The EXIF orientation (1-8) of JPEG ``data``, read from its APP1 segment without decoding; 1 when absent,
    0 when the EXIF block cannot be read (the caller then leaves the file to Pillow)."""
    for marker, pos in _jpeg_segments(data):
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xE1 and data[pos + 4 : pos + 10] == b"Exif\x00\x00":
            from PIL import Image

            try:
                exif = Image.Exif()
                exif.load(data[pos + 4 : pos + 2 + length])
                return int(exif.get(0x0112, 1) or 1)
            except Exception:  # a damaged EXIF block: Pillow's full path decides what it means
                return 0
    return 1


def jpeg_top_rows(data: bytes, rows: int) -> bytes | None:
    """A copy of baseline JPEG ``data`` whose frame header claims only its top ``rows`` rows plus one; ``None`` when
    that would not save anything or the file is not a complete, single-scan baseline JPEG.

    libjpeg decodes a sequential JPEG top to bottom and stops after the rows its frame header (SOF) declares, so a
    crop in the upper part of a photo skips the entropy decoding and IDCT of everything below it (about a sixth of
    the decode for timm's default crop scales). The top ``rows`` rows are the same pixels as the full decode's at
    every DCT scale; only the new last row can differ, where 4:2:0 chroma upsampling has no row below, hence the
    extra row. libjpeg then warns about the data it did not read ("extraneous bytes"), so the copy must be decoded
    with that warning allowed; the file is only cut when it ends with its EOI marker, which keeps truncated files on
    the strict path.
    """
    if not data.endswith(b"\xff\xd9"):
        return None
    frame = None
    for marker, pos in _jpeg_segments(data):
        if marker in (0xC0, 0xC1):  # baseline / extended sequential Huffman frame
            frame = pos
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # progressive, lossless, arithmetic
            return None
        elif marker == 0xDA:
            # a sequential file codes each component in exactly one scan: a first scan with all of the frame's
            # components is the only one, anything else (a non-interleaved file) is left whole
            if frame is None or not frame + 9 < pos + 4 < len(data) or data[pos + 4] != data[frame + 9]:
                return None
            height = int.from_bytes(data[frame + 5 : frame + 7], "big")
            if rows + 1 >= height:
                return None
            return b"".join((data[: frame + 5], (rows + 1).to_bytes(2, "big"), data[frame + 7 :]))
    return None


def _decode_box(data: bytes, scale: int, rows: slice, cols: slice) -> np.ndarray:
    """The ``rows`` x ``cols`` rectangle of JPEG ``data`` at 1/``scale``, nothing else reconstructed (the C
    extension)."""
    import numpy as np

    if not data.endswith(b"\xff\xd9"):  # maybe truncated: the strict path must see it even if the crop is above
        raise ValueError("JPEG data without its end-of-image marker")
    height, width = rows.stop - rows.start, cols.stop - cols.start
    pixels = _libjpeg_region.decode_region(data, scale, cols.start, rows.start, width, height)
    return np.frombuffer(pixels, np.uint8).reshape(height, width, 3)  # a bytearray: writable, as torch wants


def _decode_rows(data: bytes, scale: int, rows: slice, cols: slice, width: int, height: int) -> np.ndarray:
    """The same rectangle of the ``width`` x ``height`` JPEG with simplejpeg: whole rows at 1/``scale``, a baseline
    file cut just below the box."""
    import simplejpeg

    needed = rows.stop * scale + scale  # the box's rows at full size, rounded out; the rest stays unread
    top = jpeg_top_rows(data, needed)
    pixels = simplejpeg.decode_jpeg(
        data if top is None else top,
        "RGB",
        min_height=-(-(height if top is None else needed + 1) // scale),  # the height the cut copy claims
        min_width=-(-width // scale),
        strict=top is None,  # a cut file leaves data unread, which strict mode calls corrupt
    )
    return pixels[rows, cols]  # min_width is exactly the width at 1/scale: simplejpeg picks that scale


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
        """The fused crop for timm's ``RandomResizedCropAndInterpolation`` ``step``, else ``None`` (keep PIL)."""
        from timm.data.transforms import RandomResizedCropAndInterpolation

        if type(step) is not RandomResizedCropAndInterpolation:
            return None
        modes = step.interpolation if isinstance(step.interpolation, (tuple, list)) else [step.interpolation]
        if not modes or any(_interp_name(m) is None for m in modes):
            return None
        return cls(step)

    def _params(self, width: int, height: int) -> tuple[int, int, int, int, str]:
        """timm's draw, in timm's order: box from ``get_params``, then ``random.choice`` of the interpolation."""
        import torch

        size_only = torch.empty((1, 1), dtype=torch.uint8).expand(height, width)  # get_params reads the size only
        i, j, h, w = self.step.get_params(size_only, self.step.scale, self.step.ratio)
        isrand = isinstance(self.step.interpolation, (tuple, list))
        mode = random.choice(self.modes) if isrand else self.modes[0]
        return i, j, h, w, mode

    @staticmethod
    def _scaled_box(box: tuple[int, int, int, int], scale: float, width: int, height: int) -> tuple[slice, slice]:
        """Rows and columns of the crop box (i, j, h, w) in an image reduced ``scale`` times to ``width`` x
        ``height``; never empty."""
        i, j, h, w = box
        x0, y0 = round(j / scale), round(i / scale)
        x1 = max(x0 + 1, min(width, round((j + w) / scale)))
        y1 = max(y0 + 1, min(height, round((i + h) / scale)))
        return slice(y0, y1), slice(x0, x1)

    def _jpeg_region(self, data: bytes) -> tuple[np.ndarray, str, int] | None:
        import simplejpeg

        try:
            height, width, colorspace, _subsampling = simplejpeg.decode_jpeg_header(data)
        except ValueError:
            return None
        if colorspace not in _SIMPLEJPEG_COLORSPACES or jpeg_orientation(data) != 1:
            return None
        params = self._params(width, height)
        i, j, h, w, mode = params
        scale = draft_scale(w, h, self.out_w, self.out_h)
        # libjpeg's size at 1/scale rounds up
        rows, cols = self._scaled_box((i, j, h, w), scale, -(-width // scale), -(-height // scale))
        try:
            if _libjpeg_region is not None:
                return _decode_box(data, scale, rows, cols), mode, scale
            return _decode_rows(data, scale, rows, cols, width, height), mode, scale
        except ValueError:  # something libjpeg's strict mode refuses: Pillow decides (and raises if it is broken)
            return self._pil_region({"bytes": data, "path": None}, params)  # the same draw: RNG use stays timm's

    def _ppm_region(self, data: bytes) -> tuple[np.ndarray, str, int] | None:
        import numpy as np

        header = _PPM_HEADER.match(data)
        if header is None:
            return None
        width, height = int(header[1]), int(header[2])
        if len(data) - header.end() < width * height * 3:
            return None  # truncated: let Pillow raise its error
        i, j, h, w, mode = self._params(width, height)
        pixels = np.frombuffer(data, np.uint8, width * height * 3, header.end()).reshape(height, width, 3)
        rows, cols = self._scaled_box((i, j, h, w), 1, width, height)
        return pixels[rows, cols].copy(), mode, 1  # a copy: torch wants writable memory, and the crop is small

    def _pil_region(self, value: Any, params: tuple | None = None) -> tuple[np.ndarray, str, int]:
        """Pillow's decode of the crop region; ``params`` is a box already drawn on the same (upright) size."""
        import numpy as np

        img = open_image(value)
        lazy_ok = img is not None and (img.format == "JPEG" or img.mode in _PLAIN_MODES)
        if not lazy_ok or img.getexif().get(0x0112, 1) != 1:
            full = decode_image(value)  # decoded, rotated or an odd mode: the whole image, upright, RGB first
            i, j, h, w, mode = params or self._params(*full.size)
            return np.array(full.crop((j, i, j + w, i + h))), mode, 1
        full_w, full_h = img.size
        i, j, h, w, mode = params or self._params(full_w, full_h)  # header size: nothing decoded yet
        scale = draft_scale(w, h, self.out_w, self.out_h) if img.format == "JPEG" else 1
        if scale > 1:
            drafted = img.draft("RGB", (full_w // scale, full_h // scale))  # // keeps Pillow on exactly `scale`
            scale = round(full_w / drafted[1][2]) if drafted else 1
        rows, cols = self._scaled_box((i, j, h, w), scale, *img.size)
        return np.array(to_rgb(img.crop((cols.start, rows.start, cols.stop, rows.stop)))), mode, scale

    def decode_region(self, value: Any) -> tuple[np.ndarray, str, int]:
        """The RGB crop region as a uint8 array (H, W, 3) at the decode scale, the interpolation to resize it with,
        and the scale used (1, 2, 4 or 8)."""
        data = source_bytes(value)
        if data is not None:
            fast = None
            if data[:2] == b"\xff\xd8":
                fast = self._jpeg_region(data)
            elif data[:2] == b"P6":
                fast = self._ppm_region(data)
            if fast is not None:
                return fast
            value = {"bytes": data, "path": None}  # read once: Pillow opens the same bytes
        return self._pil_region(value)

    def __call__(self, value: Any) -> torch.Tensor:
        """A ``datasets`` image value -> the random resized crop as uint8 (3, out_h, out_w), antialiased resize."""
        import torch
        import torch.nn.functional as F

        region, mode, _scale = self.decode_region(value)
        x = torch.from_numpy(region).permute(2, 0, 1).unsqueeze(0)
        if x.shape[-2:] != (self.out_h, self.out_w):
            # a dense channels-last copy first: the crop is a strided view, and torch's vectorised uint8 kernels
            # take only dense channels-last input (same pixels, ~40% less time than resizing the view)
            x = x.contiguous(memory_format=torch.channels_last)
            x = F.interpolate(x, size=(self.out_h, self.out_w), mode=mode, antialias=True, align_corners=False)
        return x[0]
