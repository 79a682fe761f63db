"""Picture decoding, the official evaluation resize, and input listing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddetr_cli.data.pictures import list_images, load_image
from ddetr_cli.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_size, eval_transform
from ddetr_cli.errors import DdetrError


@pytest.mark.parametrize(
    ("hw", "min_size", "max_size", "expected"),
    [
        ((800, 1067), 800, 1333, (800, 1067)),  # short side already 800: unchanged
        ((480, 640), 800, 1333, (800, 1066)),  # 640 / 480 * 800 = 1066.67, floored
        ((640, 480), 800, 1333, (1066, 800)),  # portrait: same rule on the other axis
        ((1000, 3000), 800, 1333, (444, 1332)),  # 2400 > 1333: s = round(444.33) = 444
        ((3000, 1000), 800, 1333, (1332, 444)),
        ((427, 640), 800, 1333, (800, 1199)),  # a typical COCO picture
        ((500, 500), 800, 1333, (800, 800)),  # square
        ((1200, 1600), 800, 1333, (800, 1066)),  # downscaling follows the same rule
        ((600, 1000), 800, 1333, (800, 1333)),  # exactly at the cap: not clamped
        ((600, 1001), 800, 1333, (799, 1332)),  # s = round(799.0); 799 * 1001 / 600 = 1332.998
        ((300, 400), 512, None, (512, 682)),  # no cap
    ],
)
def test_eval_size_matches_the_official_rule(hw, min_size, max_size, expected):
    assert eval_size(*hw, min_size=min_size, max_size=max_size) == expected


def test_eval_size_defaults_are_the_official_800_1333():
    assert eval_size(480, 640) == (800, 1066)


def test_eval_transform_resizes_and_normalises():
    image = torch.full((3, 48, 64), 255, dtype=torch.uint8)
    out = eval_transform(image, min_size=60, max_size=100)
    assert out.dtype == torch.float32
    assert out.shape == (3, 60, 80)
    expected = [(1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD, strict=True)]
    torch.testing.assert_close(out.mean(dim=(1, 2)), torch.tensor(expected), atol=1e-4, rtol=0)


def test_eval_transform_keeps_a_picture_already_at_size():
    image = torch.randint(0, 256, (3, 60, 90), dtype=torch.uint8)
    out = eval_transform(image, min_size=60, max_size=1000)
    assert out.shape == (3, 60, 90)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    torch.testing.assert_close(out * std + mean, image.float() / 255, atol=1e-6, rtol=0)


def _check_rgb(image: torch.Tensor, height: int, width: int) -> None:
    assert image.dtype == torch.uint8
    assert image.shape == (3, height, width)


def test_rgb_jpeg(image_files):
    image = load_image(image_files["rgb"])
    _check_rgb(image, 30, 40)
    left, right = image[:, :, :15].float().mean((1, 2)), image[:, :, 25:].float().mean((1, 2))
    assert left[0] > 180 and left[2] < 80  # red
    assert right[2] > 180 and right[0] < 80  # blue


def test_grayscale_png_becomes_three_equal_channels(image_files):
    image = load_image(image_files["gray"])
    _check_rgb(image, 20, 25)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    assert image[0, 0].tolist() == list(range(0, 250, 10))


def test_rgba_png_drops_alpha(image_files):
    image = load_image(image_files["rgba"])
    _check_rgb(image, 16, 24)
    assert image[:, 0, 0].tolist() == [10, 200, 30]


def test_16_bit_png_is_scaled_to_8_bit(image_files):
    image = load_image(image_files["gray16"])
    _check_rgb(image, 10, 30)
    assert image[0, 0, [0, 15, 29]].tolist() == [0, 128, 255]


def test_exif_orientation_is_applied(image_files):
    image = load_image(image_files["exif_rotated"])
    _check_rgb(image, 40, 20)  # stored 40 x 20 (w x h), displayed upright as 20 x 40
    top, bottom = image[:, :15].float().mean((1, 2)), image[:, 25:].float().mean((1, 2))
    assert top[0] > 180 and top[2] < 80  # the stored left (red) half is on top
    assert bottom[2] > 180 and bottom[0] < 80


@pytest.mark.parametrize(
    ("mode", "suffix", "colour", "rgb"),
    [
        ("P", ".png", 0, [10, 20, 30]),  # palette entry 0, set below
        ("CMYK", ".tif", (0, 255, 255, 0), [255, 0, 0]),
        ("CMYK", ".jpg", (0, 255, 255, 0), [255, 0, 0]),
        ("1", ".png", 1, [255, 255, 255]),
        ("LA", ".png", (100, 0), [100, 100, 100]),  # transparent: the grey still comes through
    ],
)
def test_other_modes_decode(tmp_path, mode, suffix, colour, rgb):
    path = tmp_path / f"x{suffix}"
    image = Image.new(mode, (7, 5), colour)
    if mode == "P":
        image.putpalette([10, 20, 30] * 256)
    image.save(path)
    out = load_image(path)
    _check_rgb(out, 5, 7)
    # Lossy JPEG may move a value by a step or two.
    torch.testing.assert_close(out.long(), torch.tensor(rgb).view(3, 1, 1).expand(3, 5, 7),
                               atol=2, rtol=0)  # fmt: skip


def test_palette_with_transparency(tmp_path):
    image = Image.new("P", (6, 4))
    image.putpalette([255, 0, 0] * 256)
    path = tmp_path / "p.png"
    image.save(path, transparency=0)
    out = load_image(path)
    _check_rgb(out, 4, 6)
    assert out[:, 0, 0].tolist() == [255, 0, 0]


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("empty", "empty file"),
        ("truncated", "cannot decode"),
        ("text", "not a picture"),
    ],
)
def test_bad_files_raise_naming_the_file(image_files, name, why):
    path = image_files[name]
    with pytest.raises(DdetrError) as info:
        load_image(path)
    message = str(info.value)
    assert str(path) in message and why in message
    assert "\n" not in message


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DdetrError, match="no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(DdetrError, match="is a directory"):
        load_image(tmp_path)


def test_list_images_expands_folders_sorted_by_extension(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["b.JPG", "a.png", "c.webp", "notes.txt", ".hidden.jpg", "d.TIFF"]:
        (folder / name).write_bytes(b"x")
    (folder / "sub").mkdir()
    (folder / "sub" / "e.jpg").write_bytes(b"x")  # not recursive
    extra = tmp_path / "explicit.dat"
    extra.write_bytes(b"x")
    found = list_images([folder, extra, folder / "a.png"])
    assert [p.name for p in found] == ["a.png", "b.JPG", "c.webp", "d.TIFF", "explicit.dat"]


def test_predict_and_the_data_readers_take_the_same_pictures(tmp_path):
    """One list of suffixes (#20): a GIF in a folder is a picture for predict as for a data
    set, and reads as its first frame."""
    from ddetr_cli.data.pictures import pictures_in

    folder = tmp_path / "in"
    folder.mkdir()
    Image.new("P", (5, 4), 3).save(folder / "a.gif")
    Image.new("RGB", (5, 4)).save(folder / "b.png")
    assert list_images([folder]) == pictures_in(folder) == [folder / "a.gif", folder / "b.png"]
    assert load_image(folder / "a.gif").shape == (3, 4, 5)


def test_list_images_errors(tmp_path):
    with pytest.raises(DdetrError, match="missing.jpg: no such file"):
        list_images([tmp_path / "missing.jpg"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DdetrError, match="no pictures found"):
        list_images([tmp_path / "empty"])


def test_decoded_picture_matches_pillow(image_files):
    path: Path = image_files["rgb"]
    expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
    assert torch.equal(load_image(path), torch.from_numpy(expected.copy()))
