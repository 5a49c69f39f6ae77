"""The optional C extension ``inat_zoo.data._libjpeg_region``: a rectangle of a JPEG, the full decode's pixels."""

from __future__ import annotations

import io
import sysconfig
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from inat_zoo.data import crop_decode


def _headers_present() -> bool:
    """Whether this machine could have built the extension: libjpeg-turbo's header where the compiler looks."""
    folders = ["/usr/include", "/usr/local/include", sysconfig.get_config_var("INCLUDEDIR") or ""]
    folders += [f"/usr/include/{sysconfig.get_config_var('MULTIARCH') or ''}"]
    return any((Path(folder) / "jpeglib.h").is_file() for folder in folders if folder)


def test_the_region_decoder_is_built_where_libjpeg_turbo_headers_are():
    # optional=True lets a failed build pass quietly: this is where that would show
    if crop_decode._libjpeg_region is None and _headers_present():
        pytest.fail(f"jpeglib.h is installed but {crop_decode.JPEG_DECODER}; rebuild with `pip install -e .`")
    if crop_decode._libjpeg_region is not None:
        assert crop_decode.JPEG_DECODER.startswith("libjpeg-turbo ")


@pytest.fixture
def region():
    """The extension module; its tests skip where it is not built (the test above says whether it should be)."""
    if crop_decode._libjpeg_region is None:
        pytest.skip(crop_decode.JPEG_DECODER)
    return crop_decode._libjpeg_region


def _photo(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 12, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float32) + noise, 0, 255).astype(np.uint8))


def _jpeg(img: Image.Image, **options) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def _full(data: bytes, width: int, scale: int) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, "RGB", min_width=-(-width // scale))


def _boxes(rng: np.random.Generator, width: int, height: int):
    """Random rectangles plus the ones that touch every edge and corner of a ``width`` x ``height`` image."""
    yield 0, 0, width, height
    yield 0, 0, 1, 1
    yield width - 1, height - 1, 1, 1
    yield 0, height // 2, width, height - height // 2
    yield width // 3, 0, width - width // 3, height // 4 + 1
    for _ in range(12):
        w, h = rng.integers(1, width + 1), rng.integers(1, height + 1)
        yield int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1)), int(w), int(h)


@pytest.mark.parametrize(
    "mode, options",
    [
        ("RGB", {"quality": 90}),  # 4:2:0
        ("RGB", {"quality": 90, "subsampling": 1}),  # 4:2:2
        ("RGB", {"quality": 95, "subsampling": 0}),  # 4:4:4
        ("RGB", {"quality": 85, "progressive": True}),
        ("RGB", {"quality": 90, "restart_marker_rows": 1}),
        ("L", {"quality": 90}),  # grey, out as RGB
    ],
)
def test_every_rectangle_has_the_full_decodes_pixels_at_every_scale(mode, options, region):
    width, height = 83, 61  # odd sizes: partial iMCUs on the right and at the bottom
    data = _jpeg(_photo(width, height, seed=len(options)).convert(mode), **options)
    rng = np.random.default_rng(0)
    for scale in (1, 2, 4, 8):
        full = _full(data, width, scale)
        for left, top, w, h in _boxes(rng, full.shape[1], full.shape[0]):
            pixels = region.decode_region(data, scale, left, top, w, h)
            assert isinstance(pixels, bytearray) and len(pixels) == w * h * 3
            got = np.frombuffer(pixels, np.uint8).reshape(h, w, 3)
            assert np.array_equal(got, full[top : top + h, left : left + w]), (scale, left, top, w, h)


def test_a_file_damaged_below_the_rectangle_is_not_read_there(region):
    width, height = 64, 96
    data = _jpeg(_photo(width, height, seed=3), quality=90)
    cut = data[: len(data) // 2]  # roughly the top half survives
    top_rows = region.decode_region(cut, 1, 0, 0, width, 8)
    assert np.array_equal(np.frombuffer(top_rows, np.uint8).reshape(8, width, 3), _full(data, width, 1)[:8])
    with pytest.raises(ValueError, match="libjpeg: .*(premature|end)"):  # its warning is an error here
        region.decode_region(cut, 1, 0, height - 8, width, 8)


def test_bad_requests_and_data_are_value_errors_naming_the_problem(region):
    data = _jpeg(_photo(40, 30, seed=1), quality=90)
    with pytest.raises(ValueError, match="scale must be 1, 2, 4 or 8, not 3"):
        region.decode_region(data, 3, 0, 0, 4, 4)
    with pytest.raises(ValueError, match="outside the 20x15 image"):
        region.decode_region(data, 2, 10, 0, 11, 4)
    with pytest.raises(ValueError, match="outside"):
        region.decode_region(data, 1, 0, 29, 4, 2)
    for bad in ((-1, 0, 4, 4), (0, -1, 4, 4), (0, 0, 0, 4), (0, 0, 4, 0), (2**31 - 1, 0, 4, 4), (0, 65499, 4, 4)):
        with pytest.raises(ValueError, match="bad region"):
            region.decode_region(data, 1, *bad)
    with pytest.raises(ValueError, match="libjpeg: "):
        region.decode_region(b"\xff\xd8 not really a jpeg", 1, 0, 0, 1, 1)
    with pytest.raises(ValueError, match="libjpeg: "):
        region.decode_region(b"", 1, 0, 0, 1, 1)
    cmyk = _jpeg(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), quality=95)
    with pytest.raises(ValueError, match="only YCbCr and greyscale"):
        region.decode_region(cmyk, 1, 0, 0, 4, 4)
    with pytest.raises(TypeError):
        region.decode_region("not bytes", 1, 0, 0, 1, 1)


def test_threads_decode_at_once_without_mixing_results(region):
    # the decode runs without the GIL: each thread's own libjpeg state, its own output
    files = [_jpeg(_photo(96, 64, seed=seed), quality=90) for seed in range(4)]
    expected = [_full(data, 96, 1)[10:50, 5:90] for data in files]
    failures = []

    def work(index: int) -> None:
        for _ in range(20):
            got = np.frombuffer(region.decode_region(files[index], 1, 5, 10, 85, 40), np.uint8).reshape(40, 85, 3)
            if not np.array_equal(got, expected[index]):
                failures.append(index)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures
