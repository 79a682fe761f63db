"""Drawn boxes and labels: sized to the picture, kept inside it, no scores on ground truth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ddetr_cli.viz.draw import class_color, draw_detections, label_text

NAMES = ["circle", "rectangle", "triangle"]


def _mask(drawn: torch.Tensor, colour: tuple[int, int, int]) -> np.ndarray:
    """Where a drawn (3, H, W) picture has exactly `colour`."""
    return (drawn.permute(1, 2, 0).numpy() == np.array(colour, dtype=np.uint8)).all(-1)


def _draw_one(size: tuple[int, int], box: list[float], label: int = 1) -> torch.Tensor:
    width, height = size
    picture = torch.zeros((3, height, width), dtype=torch.uint8)
    return draw_detections(picture, torch.tensor([box]), [label], [0.97], NAMES)


def test_a_label_at_the_right_edge_is_moved_left_not_cut():
    colour = class_color(1)
    at_left = _mask(_draw_one((128, 128), [2, 60, 20, 90]), colour).sum()
    at_right = _mask(_draw_one((128, 128), [108, 60, 126, 90]), colour).sum()
    # The same plate and box: as many coloured pixels on both sides of the picture.
    assert at_right >= 0.97 * at_left


def test_a_label_at_the_top_edge_goes_below_the_box_not_over_the_object():
    drawn = _mask(_draw_one((128, 128), [30, 0, 90, 60]), class_color(1))
    assert not drawn[3:57, 33:87].any()  # the inside of the box stays clear
    assert drawn[62:, 30:90].any(1).sum() >= 10  # the plate is just below it


def test_a_label_sits_above_its_box_when_there_is_room():
    drawn = _draw_one((128, 128), [30, 60, 90, 100])
    plate_rows = np.nonzero(_mask(drawn, class_color(1))[:, 40])[0]  # a column inside the box
    assert plate_rows.min() < 60  # drawn above the top edge, not over the object


@pytest.mark.parametrize("small, large", [((128, 128), (800, 600)), ((800, 600), (4000, 3000))])
def test_line_width_and_font_grow_with_the_picture(small, large):
    from ddetr_cli.viz.draw import drawing_sizes

    small_line, small_font = drawing_sizes(*small)
    large_line, large_font = drawing_sizes(*large)
    assert large_font > small_font and large_line >= small_line
    # The drawn label plate is taller, in pixels.
    heights = []
    for width, height in (small, large):
        box = [0.3 * width, 0.5 * height, 0.6 * width, 0.8 * height]
        mask = _mask(_draw_one((width, height), box), class_color(1))
        heights.append(mask[: int(0.5 * height)].any(1).sum())  # plate rows above the box
    assert heights[1] > heights[0] > 0


def test_an_8000_pixel_photo_gets_lines_and_labels_to_match():
    from ddetr_cli.viz.draw import drawing_sizes

    line, font = drawing_sizes(8000, 6000)
    assert line >= 15 and font >= 6 * line  # labels well above the old ~10 px beside 20 px lines
    drawn = _draw_one((8000, 6000), [2000, 2000, 5000, 4000])
    plate = _mask(drawn, class_color(1))[:2000]  # above the box
    assert plate.any(1).sum() >= font  # the plate is at least a font size tall


def test_labels_stay_readable_on_a_128_pixel_picture():
    from ddetr_cli.viz.draw import drawing_sizes

    _, font = drawing_sizes(128, 96)
    assert font >= 10


def test_ground_truth_labels_are_names_only():
    assert label_text(0, None, NAMES) == "circle"
    assert label_text(2, 0.5, NAMES) == "triangle 0.50"
    assert label_text(7, None, NAMES) == "#7"
    picture = torch.zeros((3, 64, 64), dtype=torch.uint8)
    boxes = torch.tensor([[10.0, 20, 40, 50]])
    names_only = draw_detections(picture, boxes, [0], class_names=NAMES)
    with_score = draw_detections(picture, boxes, [0], [1.0], NAMES)
    plate = class_color(0)
    assert _mask(names_only, plate).sum() < _mask(with_score, plate).sum()  # a shorter label


def test_dataset_view_labels_ground_truth_without_scores(tmp_path, monkeypatch):
    import ddetr_cli.viz.draw as draw
    from ddetr_cli.recipe import load_recipe
    from ddetr_cli.viz.dataset import dataset_pictures

    texts = []

    def spy(*args, **kwargs):
        texts.append(label_text(*args, **kwargs))
        return texts[-1]

    monkeypatch.setattr(draw, "label_text", spy)
    dataset_pictures(load_recipe("recipes/shapes.yaml"), tmp_path, count=2)
    assert texts and all(text in NAMES for text in texts), texts


def test_boxes_keep_the_picture_size_and_dtype():
    picture = torch.full((3, 50, 70), 128, dtype=torch.uint8)
    drawn = draw_detections(picture, torch.tensor([[-10.0, 5, 200, 40]]), [2], [0.3], NAMES)
    assert drawn.shape == picture.shape and drawn.dtype == torch.uint8
    assert torch.equal(picture, torch.full((3, 50, 70), 128, dtype=torch.uint8))  # not in place
    nothing = draw_detections(picture, torch.tensor([[float("nan")] * 4]), [0], [0.9], NAMES)
    assert torch.equal(nothing, picture)


def test_contact_sheet_thumbnails_fill_their_cells(tmp_path):
    from ddetr_cli.viz.predictions import contact_sheet

    paths = []
    for i in range(3):
        path = tmp_path / f"{i}.png"
        Image.new("RGB", (128, 96), (40 * i, 60, 90)).save(path)
        paths.append(path)
    sheet = np.asarray(Image.open(contact_sheet(paths, tmp_path / "sheet.png", 2)))
    cell = sheet.shape[1] // 2
    assert sheet.shape[0] == 2 * cell
    for row, column in ((0, 0), (0, 1), (1, 0)):
        part = sheet[row * cell : (row + 1) * cell, column * cell : (column + 1) * cell]
        filled = (part != 255).any(-1).mean()
        assert filled > 0.6, f"cell {row},{column} is {filled:.0%} picture"
    assert (sheet[cell:, cell:] == 255).all()  # the fourth cell is empty


def test_contact_sheet_shrinks_large_pictures_to_the_cell(tmp_path):
    from ddetr_cli.viz.predictions import contact_sheet

    Image.new("RGB", (1000, 500), (10, 20, 30)).save(tmp_path / "wide.png")
    sheet = Image.open(contact_sheet([tmp_path / "wide.png"], tmp_path / "s.png", 1, cell=320))
    assert sheet.size == (320, 320)
    filled = (np.asarray(sheet) != 255).any(-1)
    assert filled.any(0).sum() >= 310  # the long side spans the cell


def _crowded_pictures():
    """Shapes val pictures (128 px), every object detected twice (the second shifted, of
    another class), as a poorly trained model draws them."""
    from ddetr_cli.data import shapes

    generator = np.random.default_rng(0)
    for index in range(12):
        picture = shapes.make_picture(shapes.VAL_SEED, index)
        boxes = torch.from_numpy(picture.boxes)
        labels = torch.from_numpy(picture.labels)
        scores = torch.from_numpy(generator.uniform(0.5, 0.99, len(boxes))).float()
        shift = torch.from_numpy(generator.uniform(-4, 4, boxes.shape)).float()
        yield (torch.from_numpy(picture.image).permute(2, 0, 1).contiguous(),
               torch.cat([boxes, boxes + shift]), torch.cat([labels, (labels + 1) % 3]),
               torch.cat([scores, scores / 2]))  # fmt: skip


def test_labels_never_cover_each_other(monkeypatch):
    from PIL import ImageDraw

    plates = []
    real = ImageDraw.ImageDraw.rectangle

    def spy(self, xy, fill=None, *args, **kwargs):
        if fill is not None:  # label plates are the filled rectangles
            plates.append([round(v) for v in xy])
        return real(self, xy, fill, *args, **kwargs)

    monkeypatch.setattr(ImageDraw.ImageDraw, "rectangle", spy)
    for image, boxes, labels, scores in _crowded_pictures():
        plates.clear()
        draw_detections(image, boxes, labels, scores, NAMES)
        assert len(plates) == len(boxes)
        for i, a in enumerate(plates):
            assert 0 <= a[0] and 0 <= a[1] and a[2] < 128 and a[3] < 128, a  # inside
            for b in plates[:i]:
                apart = a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]
                assert apart, (a, b)


def test_a_box_shows_on_an_object_and_background_of_its_own_colour():
    """A red box on a red shape on red: edged in black or white, inside and out."""
    colour = class_color(0)
    picture = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 128, 128).clone()
    drawn = draw_detections(picture, torch.tensor([[30.0, 30, 90, 90]]), [0], class_names=NAMES)
    pixels = drawn.permute(1, 2, 0).numpy().astype(int)
    distance = np.abs(pixels - np.array(colour)).sum(-1)
    line, _ = __import__("ddetr_cli.viz.draw", fromlist=["drawing_sizes"]).drawing_sizes(128, 128)
    assert (distance[60, 25:30] > 250).any()  # outside the line, on the left
    assert (distance[60, 30 + line : 36 + line] > 250).any()  # inside it
    assert (distance[60, 40:80] == 0).all()  # the object itself stays as it is
