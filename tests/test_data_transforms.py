"""Decoding (modes, EXIF, draft), timm transforms from a data config, and the batch-wise dataset transform."""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image
from timm.data.transforms import RandomResizedCropAndInterpolation
from torchvision import transforms as T

from inat_zoo.data import AUGMENT_DEFAULTS, create_image_transform, load_inat12k, with_image_transform
from inat_zoo.data.batched import BatchedTransform
from inat_zoo.data.crop_decode import FusedRandomResizedCrop, draft_scale
from inat_zoo.data.transforms import decode_image, decode_short_side, validate_augment
from inat_zoo.errors import UsageError

CONFIG = {
    "input_size": (3, 32, 32),
    "interpolation": "bilinear",
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "crop_pct": 0.875,
    "crop_mode": "center",
}


def _encode(img: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kwargs)
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ decoding
def test_odd_modes_come_out_rgb():
    grey = Image.new("L", (6, 4), 100)
    assert decode_image(_encode(grey, "PNG")).getpixel((0, 0)) == (100, 100, 100)

    sixteen = Image.fromarray(np.full((4, 6), 32896, np.uint16))  # 16-bit grey ~ half scale
    assert sixteen.mode.startswith("I;16")
    assert decode_image(_encode(sixteen, "PNG")).getpixel((0, 0)) == (128, 128, 128)  # scaled, not clipped

    rgba = Image.new("RGBA", (6, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))  # fully transparent: goes on white
    out = decode_image(_encode(rgba, "PNG"))
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (10, 20, 30)

    palette = Image.new("P", (6, 4), 1)
    palette.putpalette([0, 0, 0, 250, 10, 10] + [0] * 762)
    assert decode_image(_encode(palette, "PNG")).getpixel((0, 0)) == (250, 10, 10)

    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red in CMYK
    r, g, b = decode_image(_encode(cmyk, "JPEG", quality=95)).getpixel((8, 8))
    assert r > 200 and g < 60 and b < 60

    la = Image.new("LA", (6, 4), (50, 255))
    assert decode_image(_encode(la, "PNG")).getpixel((2, 2)) == (50, 50, 50)
    assert decode_image(Image.new("1", (4, 4), 1)).getpixel((0, 0)) == (255, 255, 255)


def _two_tone(width=40, height=20) -> Image.Image:
    """Left half red, right half blue."""
    arr = np.zeros((height, width, 3), np.uint8)
    arr[:, : width // 2] = (255, 0, 0)
    arr[:, width // 2 :] = (0, 0, 255)
    return Image.fromarray(arr)


@pytest.mark.parametrize("min_side, size", [(None, (20, 40)), (8, (10, 20))])  # 8: drafted at half scale
def test_exif_orientation_applied(min_side, size):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = _encode(_two_tone(), "JPEG", quality=95, exif=exif)
    out = decode_image({"bytes": data, "path": None}, min_side)
    assert out.size == size  # portrait now
    w, h = size
    top, bottom = np.asarray(out)[h // 8, w // 2], np.asarray(out)[h - h // 8 - 1, w // 2]
    assert top[0] > 200 and top[2] < 60  # the left (red) half is on top after a clockwise turn
    assert bottom[2] > 200 and bottom[0] < 60


def test_draft_decodes_jpeg_at_reduced_scale(tmp_path):
    rng = np.random.default_rng(0)
    big = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8)).resize((800, 600), Image.BICUBIC)
    path = tmp_path / "big.jpg"
    big.save(path, quality=90)
    assert decode_image(str(path)).size == (800, 600)
    assert decode_image(str(path), min_side=256).size == (400, 300)  # both sides stay >= 256
    assert decode_image(str(path), min_side=400).size == (800, 600)
    reduced = np.asarray(decode_image(str(path), min_side=256), np.float32)
    reference = np.asarray(decode_image(str(path)).resize((400, 300), Image.BILINEAR), np.float32)
    assert np.abs(reduced - reference).mean() < 3.0
    png = tmp_path / "big.png"
    big.save(png)
    assert decode_image({"bytes": None, "path": str(png)}, min_side=256).size == (800, 600)  # only JPEG drafts


# --------------------------------------------------------------------------------------------- transforms
def test_train_and_eval_transforms_from_data_config():
    img = _two_tone(60, 44)
    train = create_image_transform(CONFIG, is_training=True)
    x = train(img)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    names = [type(t).__name__ for t in train.transforms]
    assert names[0] == "RandomResizedCropAndInterpolation" and "RandomHorizontalFlip" in names
    assert "ColorJitter" not in names  # off by default

    evaluate = create_image_transform(CONFIG, is_training=False)
    assert [type(t).__name__ for t in evaluate.transforms] == ["Resize", "CenterCrop", "MaybeToTensor", "Normalize"]
    assert evaluate.transforms[0].size == 36  # 32 / 0.875
    assert torch.equal(evaluate(img), evaluate(img))
    big = {**CONFIG, "input_size": (3, 48, 40)}
    assert create_image_transform(big, is_training=False)(img).shape == (3, 48, 40)
    assert decode_short_side(CONFIG) == 37 and decode_short_side({**CONFIG, "crop_pct": 1.0}) == 37


def test_augment_options_reach_timm():
    names = lambda aug: [type(t).__name__ for t in create_image_transform(CONFIG, True, aug).transforms]  # noqa: E731
    assert "RandomHorizontalFlip" not in names({"hflip": 0.0})
    assert "RandomVerticalFlip" in names({"vflip": 0.5})
    assert "RandAugment" in names({"auto_augment": "rand-m9-mstd0.5-inc1"})
    assert "TrivialAugmentWide" in names({"auto_augment": "trivialaugment"})
    assert "ColorJitter" in names({"color_jitter": 0.3})
    assert "RandomErasing" in names({"re_prob": 0.25})
    rrc = create_image_transform(CONFIG, True, {"scale": [0.5, 1.0], "ratio": [1.0, 1.0]}).transforms[0]
    assert rrc.scale == (0.5, 1.0) and rrc.ratio == (1.0, 1.0)
    for aug in ({"auto_augment": "trivialaugment"}, {"auto_augment": "rand-m9-mstd0.5-inc1"}, {"re_prob": 1.0}):
        assert create_image_transform(CONFIG, True, aug)(_two_tone()).shape == (3, 32, 32)


@pytest.mark.parametrize(
    "augment, message",
    [
        ({"flip": 0.5}, "unknown data.augment key.*allowed: auto_augment, color_jitter, hflip, ratio, re_prob"),
        ({"hflip": 2}, "hflip must be a probability"),
        ({"scale": [0.5, 1.5]}, "scale must be"),
        ({"ratio": [2, 1]}, "ratio must be"),
        ({"auto_augment": "nonsense"}, "not a timm policy"),
        ({"auto_augment": 3}, "auto_augment must be"),
        ({"color_jitter": "lots"}, "color_jitter must be"),
        ({"auto_augment": "rand-m9", "color_jitter": 0.4}, "set only one"),
    ],
)
def test_augment_mistakes_are_usage_errors(augment, message):
    with pytest.raises(UsageError, match=message):
        create_image_transform(CONFIG, True, augment)


def test_augment_defaults_are_the_allowed_keys():
    assert set(AUGMENT_DEFAULTS) == {"hflip", "vflip", "scale", "ratio", "auto_augment", "color_jitter", "re_prob"}
    assert validate_augment({})["hflip"] == 0.5 and validate_augment(None)["scale"] == (0.08, 1.0)


# ------------------------------------------------------------------------------------- dataset transform
@pytest.fixture(scope="module")
def splits(sample_root):
    return load_inat12k(sample_root, val_fraction=0.25, seed=0)


def test_with_image_transform_items_and_workers(splits):
    evaluate = create_image_transform(CONFIG, is_training=False)
    ds = with_image_transform(splits["test"], evaluate, CONFIG)
    item = ds[3]
    assert set(item) == {"pixel_values", "label"} and item["pixel_values"].shape == (3, 32, 32)
    assert item["label"] == splits["test"][3]["label"]
    assert splits["test"].features["image"].decode  # the source keeps its decoded image column

    loader = torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2)  # pickled into worker processes
    batches = list(loader)
    assert sum(len(b["label"]) for b in batches) == len(ds)
    assert batches[0]["pixel_values"].shape == (8, 3, 32, 32)
    assert batches[0]["label"].tolist() == splits["test"]["label"][:8]
    assert torch.equal(batches[0]["pixel_values"][3], item["pixel_values"])

    train = with_image_transform(splits["train"], create_image_transform(CONFIG, True), CONFIG)
    assert train[0]["pixel_values"].shape == (3, 32, 32)


def test_batched_tail_is_bit_identical_to_per_image(splits):
    """Eval: ToTensor + Normalize batched must give exactly the per-image timm result."""
    evaluate = create_image_transform(CONFIG, is_training=False)
    ds = with_image_transform(splits["validation"], evaluate, CONFIG)
    raw = splits["validation"].cast_column("image", __import__("datasets").Image(decode=False))
    batch = ds[:10]["pixel_values"]
    for i in range(10):
        reference = evaluate(decode_image(raw[i]["image"], decode_short_side(CONFIG)))
        assert torch.equal(batch[i], reference)


@pytest.mark.parametrize(
    "options, max_levels, mean_levels",
    [
        ({"brightness": 0.4}, 1.2, 0.6),
        ({"contrast": 0.4}, 1.2, 0.6),
        ({"saturation": 0.4}, 1.2, 0.6),
        ({"brightness": 0.4, "contrast": 0.4, "saturation": 0.4}, 4.0, 1.6),  # PIL rounds after every step
    ],
)
def test_batched_color_jitter_matches_torchvision_pil(options, max_levels, mean_levels):
    """Same factors and order (same torch seed) -> within PIL's uint8 rounding of torchvision's PIL ColorJitter."""
    rng = np.random.default_rng(1)
    images = [Image.fromarray((rng.random((16, 16, 3)) * 255).astype(np.uint8)) for _ in range(12)]
    pipeline = T.Compose([T.ColorJitter(**options), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    batched = BatchedTransform.from_transform(pipeline)
    assert batched is not None and batched.jitter is not None and batched.head == []
    torch.manual_seed(0)
    reference = torch.stack([pipeline(img) for img in images])
    torch.manual_seed(0)
    ours = torch.stack(batched(images))
    levels = (ours - reference).abs() * 0.25 * 255  # grey levels of the 0-255 image
    assert levels.max() <= max_levels and levels.mean() <= mean_levels
    torch.manual_seed(1)
    assert (torch.stack(batched(images)) - reference).abs().max() > 0.05  # other factors: really jittered


def test_unsupported_tails_fall_back_to_per_image():
    assert BatchedTransform.from_transform(lambda img: img) is None
    assert BatchedTransform.from_transform(T.Compose([T.ToTensor()])) is None
    assert BatchedTransform.from_transform(T.Compose([T.ToTensor(), T.Normalize((0.5,), (0.5,))])) is None
    odd_tail = T.Compose([T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3), T.RandomHorizontalFlip()])
    assert BatchedTransform.from_transform(odd_tail) is None


# ------------------------------------------------------------------------------ crop fused with decoding
def _textured(width: int, height: int, seed: int = 0) -> Image.Image:
    """Smooth colour field + texture: a wrong crop box or a missed flip changes it by far more than resampling."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((5, 7, 3)) * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    noise = rng.normal(0, 12, (height, width, 1))
    return Image.fromarray(np.clip(np.asarray(coarse, np.float32) + noise, 0, 255).astype(np.uint8))


def _levels(a: torch.Tensor | Image.Image, b: torch.Tensor | Image.Image) -> np.ndarray:
    as_hwc = lambda x: np.asarray(x, np.float32) if isinstance(x, Image.Image) else x.permute(1, 2, 0).numpy()  # noqa: E731
    return np.abs(as_hwc(a).astype(np.float32) - as_hwc(b).astype(np.float32))


def test_draft_scale_is_the_largest_reduction_that_still_covers_the_output():
    assert draft_scale(800, 600, 224, 224) == 2
    assert draft_scale(447, 600, 224, 224) == 1  # 447 / 2 < 224: a reduced decode would be upsampled
    assert draft_scale(900, 900, 224, 224) == 4
    assert draft_scale(1800, 1800, 224, 224) == 8
    assert draft_scale(1800, 300, 224, 224) == 1
    assert draft_scale(64, 64, 32, 32) == 2 and draft_scale(64, 64, 32, 48) == 1  # (w, h) vs (out_w, out_h)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "random"])
def test_fused_crop_draws_timm_params_and_matches_timm_output(interpolation):
    """A lossless file (no draft): same crop box, same interpolation choice, same RNG use; pixels within resampling."""
    step = RandomResizedCropAndInterpolation((24, 32), interpolation=interpolation)
    fused = FusedRandomResizedCrop.from_step(step)
    assert fused is not None
    img = _textured(120, 90)
    value = {"bytes": _encode(img, "PNG"), "path": None}
    worst = []
    for seed in range(12):
        random.seed(seed)
        reference = step(img)
        after_reference = random.random()
        random.seed(seed)
        ours = fused(value)
        assert random.random() == after_reference  # exactly timm's number of draws
        assert ours.dtype == torch.uint8 and ours.shape == (3, 24, 32)
        worst.append(_levels(ours, reference).max())
    assert max(worst) <= 3  # torch's uint8 antialiased kernels vs PIL's: rounding only
    random.seed(100)
    far = _levels(fused(value), reference)
    assert far.mean() > 5  # another seed, another crop: the comparison above can fail


def test_fused_crop_decodes_big_crops_at_reduced_scale(tmp_path):
    path = tmp_path / "photo.jpg"
    _textured(800, 600).save(path, quality=92)
    full = decode_image(str(path))
    big = RandomResizedCropAndInterpolation(64, scale=(0.9, 1.0), interpolation="bicubic")
    small = RandomResizedCropAndInterpolation(224, scale=(0.08, 0.1), interpolation="bicubic")
    for step, expected_scale in ((big, 8), (small, 1)):
        fused = FusedRandomResizedCrop.from_step(step)
        for seed in range(3):
            random.seed(seed)
            i, j, h, w = step.get_params(full, step.scale, step.ratio)
            random.seed(seed)
            region, mode, scale = fused.decode_region(str(path))
            assert scale == expected_scale and mode == "bicubic" and region.dtype == np.uint8
            assert abs(region.shape[1] - w / scale) <= 1 and abs(region.shape[0] - h / scale) <= 1
            random.seed(seed)
            reference = step(full)
            random.seed(seed)
            matched = _levels(fused(str(path)), reference).mean()
            assert matched < (3.0 if scale > 1 else 0.1)  # DCT reduction at 1/8; else resampling rounding only
        assert _levels(fused(str(path)), reference).mean() > 2 * matched  # unseeded: another crop, far off


def test_fused_crop_handles_exif_rotation_and_odd_modes():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 CW to display: the 40x20 file is a 20x40 portrait
    value = {"bytes": _encode(_two_tone(), "JPEG", quality=95, exif=exif), "path": None}
    whole = FusedRandomResizedCrop.from_step(
        RandomResizedCropAndInterpolation((32, 16), scale=(1.0, 1.0), ratio=(0.5, 0.5))
    )
    out = whole(value).permute(1, 2, 0).numpy()
    assert out[3, 8, 0] > 200 and out[3, 8, 2] < 60  # red on top after the turn
    assert out[28, 8, 2] > 200 and out[28, 8, 0] < 60

    fused = FusedRandomResizedCrop.from_step(RandomResizedCropAndInterpolation(8))
    sixteen = Image.fromarray(np.full((12, 12), 32896, np.uint16))
    rgba = Image.new("RGBA", (12, 12), (0, 0, 0, 0))
    for img, rgb in ((sixteen, 128), (rgba, 255), (Image.new("L", (12, 12), 77), 77)):
        out = fused({"bytes": _encode(img, "PNG"), "path": None})
        assert out.shape == (3, 8, 8) and out.unique().tolist() == [rgb]
    assert FusedRandomResizedCrop.from_step(RandomResizedCropAndInterpolation(8, interpolation="nearest")) is None
    assert FusedRandomResizedCrop.from_step(T.RandomResizedCrop(8)) is None


def test_dataset_train_items_use_the_fused_crop_and_match_timm(splits):
    transform = create_image_transform({**CONFIG, "interpolation": "bicubic"}, is_training=True)
    ds = with_image_transform(splits["train"], transform, CONFIG)
    assert ds._format_kwargs["transform"].batched.crop is not None
    raw = splits["train"].cast_column("image", __import__("datasets").Image(decode=False))
    random.seed(3)
    torch.manual_seed(3)
    ours = ds[:16]["pixel_values"]
    random.seed(3)
    torch.manual_seed(3)
    reference = [transform(decode_image(raw[i]["image"])) for i in range(16)]
    levels = torch.stack([(a - b).abs() for a, b in zip(ours, reference, strict=True)]) * 0.229 * 255
    assert levels.mean() < 2.0  # tiny 40-72 px JPEGs: draft decodes of big crops, resampling
    random.seed(3)
    torch.manual_seed(3)
    assert all(torch.equal(a, b) for a, b in zip(ds[:16]["pixel_values"], ours, strict=True))  # deterministic
    assert (torch.stack(ds[:16]["pixel_values"]) - torch.stack(ours)).abs().mean() > 0.1  # no reseed: new crops


def test_steps_after_the_fused_crop_run_on_its_output():
    config = {**CONFIG, "interpolation": "bicubic"}
    transform = create_image_transform(config, True, {"vflip": 1.0, "hflip": 1.0, "auto_augment": "rand-m9"})
    batched = BatchedTransform.from_transform(transform)
    assert batched.crop is not None and "RandAugment" in [type(s).__name__ for s in batched.head]
    values = [{"bytes": _encode(_textured(60, 44, seed), "JPEG", quality=90), "path": None} for seed in range(3)]
    out = batched.from_values(values)
    assert len(out) == 3 and all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x in out)

    flips = create_image_transform(config, True, {"vflip": 1.0, "hflip": 1.0, "scale": [1.0, 1.0], "ratio": [1, 1]})
    square = _textured(40, 40)
    flipped = BatchedTransform.from_transform(flips).from_values([{"bytes": _encode(square, "PNG"), "path": None}])
    expected = flips.transforms[-1](flips.transforms[-2](square.rotate(180).resize((32, 32), Image.BICUBIC)))
    assert (flipped[0] - expected).abs().max() * 0.229 * 255 <= 3  # both flips applied, within resampling
