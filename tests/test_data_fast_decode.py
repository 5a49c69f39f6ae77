"""The fused crop's byte-level decoders (libjpeg-turbo for JPEG: the region extension or simplejpeg; a numpy view
for PPM) against its Pillow path."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation

from inat_zoo.data import crop_decode
from inat_zoo.data.crop_decode import FusedRandomResizedCrop, jpeg_orientation, jpeg_top_rows
from inat_zoo.data.transforms import source_bytes


def _photo(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 10, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float32) + noise, 0, 255).astype(np.uint8))


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


@pytest.fixture(params=["region", "rows"])
def jpeg_decoder(request, monkeypatch):
    """Both JPEG decoders: the C extension's region decode and, as without it, simplejpeg's whole rows."""
    if request.param == "region" and crop_decode._libjpeg_region is None:
        pytest.skip(crop_decode.JPEG_DECODER)  # test_data_libjpeg_region fails where it should have been built
    if request.param == "rows":
        monkeypatch.setattr(crop_decode, "_libjpeg_region", None)
    return request.param


def _regions(fused: FusedRandomResizedCrop, data: bytes, seed: int):
    """(fast path region, Pillow path region) for the same random draw; the fast one is None if it declined."""
    random.seed(seed)
    fast = fused._jpeg_region(data) if data[:2] == b"\xff\xd8" else fused._ppm_region(data)
    random.seed(seed)
    slow = fused._pil_region({"bytes": data, "path": None})
    return fast, slow


@pytest.mark.parametrize(
    "image, options",
    [
        (_photo(200, 150), {"quality": 90}),  # 4:2:0, the usual camera JPEG
        (_photo(150, 200, seed=1), {"quality": 95, "subsampling": 0}),  # 4:4:4
        (_photo(201, 149, seed=2), {"quality": 85, "progressive": True}),  # odd sizes, progressive
        (_photo(200, 150, seed=3).convert("L"), {"quality": 90}),  # greyscale JPEG
        (_photo(200, 150, seed=5), {"quality": 90, "restart_marker_rows": 1}),  # restart markers in the scan
    ],
)
def test_jpeg_fast_path_gives_pillows_pixels_at_every_scale(image, options, jpeg_decoder, monkeypatch):
    data = _encode(image, "JPEG", **options)
    cuts = []
    monkeypatch.setattr(crop_decode, "jpeg_top_rows", lambda *a: cuts.append(jpeg_top_rows(*a)) or cuts[-1])
    scales = set()
    for size, scale_range in ((24, (0.9, 1.0)), (48, (0.5, 1.0)), (64, (0.08, 0.3))):
        fused = FusedRandomResizedCrop.from_step(
            RandomResizedCropAndInterpolation(size, scale=scale_range, interpolation="bicubic")
        )
        for seed in range(4):
            fast, slow = _regions(fused, data, seed)
            assert fast is not None, "the fast path declined a plain JPEG"
            assert fast[1:] == slow[1:]  # same interpolation, same DCT scale
            assert fast[0].shape == slow[0].shape and fast[0].dtype == np.uint8
            assert np.array_equal(fast[0], slow[0])  # libjpeg-turbo both ways: identical pixels
            scales.add(fast[2])
    assert scales >= {1, 2}  # the reduced decodes were exercised, not only full ones
    partial = [c for c in cuts if c is not None]
    if jpeg_decoder == "region":
        assert not cuts  # the extension reads only what the box needs by itself
    elif options.get("progressive"):
        assert not partial  # a progressive file is never cut short
    else:
        assert partial and len(partial) < len(cuts)  # crops high in the photo decoded only their top rows


@pytest.mark.parametrize(
    "mode, options", [("RGB", {}), ("RGB", {"subsampling": 0}), ("RGB", {"subsampling": 1}), ("L", {})]
)
def test_jpeg_top_rows_decodes_the_same_rows_as_the_whole_file(mode, options):
    import simplejpeg

    width, height = 67, 97
    data = _encode(_photo(width, height, seed=4).convert(mode), "JPEG", quality=90, **options)
    full = {s: simplejpeg.decode_jpeg(data, "RGB", min_width=-(-width // s)) for s in (1, 2, 4, 8)}
    for rows in range(1, height + 1):
        top = jpeg_top_rows(data, rows)
        if top is None:
            assert rows + 1 >= height  # refused only when nothing would be left out
            continue
        assert simplejpeg.decode_jpeg_header(top)[0] == rows + 1
        for s in (1, 2, 4, 8):
            part = simplejpeg.decode_jpeg(top, "RGB", min_width=-(-width // s), strict=False)
            needed = -(-rows // s)  # the top `rows` rows at this scale
            assert part.shape[1] == full[s].shape[1] and part.shape[0] >= needed
            assert np.array_equal(part[:needed], full[s][:needed]), (rows, s)


def test_jpeg_top_rows_leaves_other_files_whole():
    photo = _photo(40, 64)
    baseline = _encode(photo, "JPEG", quality=90)
    assert jpeg_top_rows(baseline, 8) is not None
    assert jpeg_top_rows(_encode(photo, "JPEG", quality=90, progressive=True), 8) is None  # needs every scan
    assert jpeg_top_rows(baseline[:-200], 8) is None  # truncated: the strict decode must see it
    scan = baseline.index(b"\xff\xda")
    luma_only = b"\xff\xda\x00\x08\x01" + baseline[scan + 5 : scan + 7] + b"\x00\x3f\x00"  # Ns=1: Y alone
    non_interleaved = baseline[:scan] + luma_only + baseline[scan + 6 + 2 * baseline[scan + 4] :]
    assert jpeg_top_rows(non_interleaved, 8) is None  # its first scan is not the only one: left whole
    assert jpeg_top_rows(b"\xff\xd8\xff\xda\xff\xd9", 8) is None  # a scan without a frame header
    assert jpeg_top_rows(baseline[: scan + 2] + b"\xff\xd9", 8) is None  # a scan header cut short
    assert jpeg_top_rows(baseline, 63) is None  # nothing left to cut below
    assert jpeg_top_rows(b"\xff\xd8\xff\xd9", 8) is None  # no frame header at all


def test_jpeg_fast_path_declines_what_pillow_must_handle():
    fused = FusedRandomResizedCrop.from_step(RandomResizedCropAndInterpolation(16, interpolation="bicubic"))
    cmyk = _encode(Image.new("CMYK", (32, 32), (0, 255, 255, 0)), "JPEG", quality=95)
    exif = Image.Exif()
    exif[0x0112] = 6
    rotated = _encode(_photo(40, 20), "JPEG", quality=95, exif=exif)
    assert fused._jpeg_region(cmyk) is None and fused._jpeg_region(rotated) is None
    assert fused._jpeg_region(b"\xff\xd8 not really a jpeg") is None
    out = fused({"bytes": cmyk, "path": None}).permute(1, 2, 0).numpy()  # Pillow converts CMYK
    assert out[..., 0].min() > 200 and out[..., 1].max() < 60


def test_jpeg_orientation_reads_exif_without_decoding():
    for orientation in (1, 3, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        assert jpeg_orientation(_encode(_photo(16, 8), "JPEG", exif=exif)) == orientation
    assert jpeg_orientation(_encode(_photo(16, 8), "JPEG")) == 1  # no EXIF at all
    camera_only = Image.Exif()
    camera_only[0x010F] = "camera"
    comment_first = _encode(_photo(16, 8), "JPEG", comment=b"x" * 300, exif=camera_only)
    assert b"Exif" in comment_first and jpeg_orientation(comment_first) == 1  # EXIF after a comment, no tag


def test_ppm_fast_path_is_a_view_of_the_bytes_with_pillows_pixels():
    data = _encode(_photo(90, 70), "PPM")
    fused = FusedRandomResizedCrop.from_step(RandomResizedCropAndInterpolation(32, interpolation="bilinear"))
    for seed in range(5):
        fast, slow = _regions(fused, data, seed)
        assert fast is not None and fast[1:] == slow[1:]
        assert np.array_equal(fast[0], slow[0])
    truncated = data[: len(data) // 2]
    assert fused._ppm_region(truncated) is None  # left to Pillow ...
    with pytest.raises(OSError):
        fused({"bytes": truncated, "path": None})  # ... which names the problem


def test_source_bytes_reads_paths_once(tmp_path):
    path = tmp_path / "a.jpg"
    data = _encode(_photo(20, 10), "JPEG")
    path.write_bytes(data)
    assert source_bytes({"bytes": None, "path": str(path)}) == data
    assert source_bytes(str(path)) == data and source_bytes(path) == data
    assert source_bytes({"bytes": data, "path": "ignored"}) == data
    assert source_bytes(Image.new("RGB", (2, 2))) is None
    with pytest.raises(ValueError, match="neither bytes nor path"):
        source_bytes({"bytes": None, "path": None})
    with pytest.raises(TypeError, match="cannot decode an image from int"):
        source_bytes(3)


def test_a_jpeg_libjpeg_refuses_goes_to_pillow_with_the_same_draw(jpeg_decoder, monkeypatch):
    from PIL import ImageFile

    data = _encode(_photo(120, 90), "JPEG", quality=90)
    truncated = data[: int(len(data) * 0.7)]  # header intact, scan cut: libjpeg's strict mode refuses it
    step = RandomResizedCropAndInterpolation(32, interpolation="bicubic")
    fused = FusedRandomResizedCrop.from_step(step)
    small = RandomResizedCropAndInterpolation(8, scale=(0.02, 0.05), interpolation="bicubic")
    bottoms = []
    for seed in range(8):  # small crops, some far above the cut: a truncated file is refused wherever the box is
        random.seed(seed)
        i, _, h, _ = small.get_params(torch.empty(1, 90, 120), small.scale, small.ratio)
        bottoms.append(i + h)
        for crop in (fused, FusedRandomResizedCrop.from_step(small)):
            random.seed(seed)
            with pytest.raises(OSError, match="truncated"):
                crop({"bytes": truncated, "path": None})  # Pillow's own error, not libjpeg's ValueError
    assert min(bottoms) < 30  # the test did draw a box the surviving data covers

    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)  # a user who accepts truncated files
    random.seed(7)
    reference = step(Image.open(io.BytesIO(truncated)).convert("RGB"))
    after_reference = random.random()
    random.seed(7)
    ours = fused({"bytes": truncated, "path": None})
    assert random.random() == after_reference  # one box drawn, as timm does, although two decoders ran
    assert np.abs(ours.permute(1, 2, 0).numpy().astype(int) - np.asarray(reference, int)).max() <= 3


def test_jpeg_orientation_handles_fill_bytes_and_damaged_exif():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = _encode(_photo(16, 8), "JPEG", exif=exif)
    padded = data[:2] + b"\xff\xff" + data[2:]  # fill bytes before the first marker are legal
    assert jpeg_orientation(padded) == 6
    start = data.index(b"Exif\x00\x00")
    damaged = data[: start + 6] + b"\x00" * 8 + data[start + 14 :]  # TIFF header zeroed
    assert jpeg_orientation(damaged) in (0, 1)  # unreadable: never a made-up rotation
    fused = FusedRandomResizedCrop.from_step(RandomResizedCropAndInterpolation(8, interpolation="bicubic"))
    assert fused(damaged).shape == (3, 8, 8)  # decodes either way
