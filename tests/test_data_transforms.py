"""Decoding (modes, EXIF, draft), timm transforms from a data config, and the batch-wise dataset transform."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from inat_zoo.data import AUGMENT_DEFAULTS, create_image_transform, load_inat12k, with_image_transform
from inat_zoo.data.batched import BatchedTransform
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
