"""CIELAB and CIEDE2000 against published values; grayscale inputs come back gray."""

from __future__ import annotations

import pytest
import torch

from tokenizer.colour import ciede2000, colour_difference, is_grayscale, mean_saturation, rgb_to_lab, to_gray

# Sharma, Wu & Dalal 2005, Table 1 (pairs 1, 2, 3, 7, 8, 13, 17-20): Lab1, Lab2, Delta E00.
SHARMA_PAIRS = [
    ((50.0, 2.6772, -79.7751), (50.0, 0.0, -82.7485), 2.0425),
    ((50.0, 3.1571, -77.2803), (50.0, 0.0, -82.7485), 2.8615),
    ((50.0, 2.8361, -74.0200), (50.0, 0.0, -82.7485), 3.4412),
    ((50.0, 0.0, 0.0), (50.0, -1.0, 2.0), 2.3669),
    ((50.0, -1.0, 2.0), (50.0, 0.0, 0.0), 2.3669),
    ((50.0, 2.49, -0.001), (50.0, -2.49, 0.0009), 7.1792),
    ((50.0, 2.5, 0.0), (73.0, 25.0, -18.0), 27.1492),
    ((50.0, 2.5, 0.0), (61.0, -5.0, 29.0), 22.8977),
    ((50.0, 2.5, 0.0), (56.0, -27.0, -3.0), 31.9030),
    ((50.0, 2.5, 0.0), (58.0, 24.0, 15.0), 19.4535),
]


def _lab(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).view(3, 1, 1)


@pytest.mark.parametrize("lab1, lab2, expected", SHARMA_PAIRS)
def test_ciede2000_matches_sharma_table(lab1, lab2, expected):
    assert float(ciede2000(_lab(lab1), _lab(lab2))) == pytest.approx(expected, abs=1e-4)


def test_rgb_to_lab_reference_colours():
    colours = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]).T.reshape(3, 1, 3)  # white, red, black
    lab = rgb_to_lab(colours)[:, 0].T  # (3 colours, Lab)
    torch.testing.assert_close(lab[0], torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64), atol=0.01, rtol=0)
    torch.testing.assert_close(lab[1], torch.tensor([53.24, 80.09, 67.20], dtype=torch.float64), atol=0.02, rtol=0)
    torch.testing.assert_close(lab[2], torch.tensor([0.0, 0.0, 0.0], dtype=torch.float64), atol=0.01, rtol=0)


def test_colour_difference_sees_a_hue_shift_that_keeps_luma():
    image = torch.rand(3, 16, 16)
    assert float(colour_difference(image, image)) == 0.0
    yellow = torch.tensor([0.95, 0.85, 0.1]).view(3, 1, 1).expand(3, 8, 8)
    orange = torch.tensor([1.0, 0.6, 0.1]).view(3, 1, 1).expand(3, 8, 8)
    assert float(colour_difference(yellow, orange)) > 10
    batch = colour_difference(torch.stack([yellow, yellow]), torch.stack([yellow, orange]))
    assert batch.shape == (2,) and batch[0] == 0 and batch[1] > 10
    with pytest.raises(ValueError, match="shapes"):
        colour_difference(image, image[:, :8])


def test_saturation_and_gray_helpers():
    colourful = torch.rand(3, 8, 8)
    gray = to_gray(colourful)
    assert is_grayscale(gray) and not is_grayscale(colourful)
    assert float(mean_saturation(gray)) < 1e-3 < float(mean_saturation(colourful))


def test_grayscale_input_comes_back_gray(tiny_tokenizer, tiny_vae):
    gray = torch.rand(1, 12, 20).expand(3, 12, 20).clone()  # a gray picture read as RGB
    for model in (tiny_tokenizer, tiny_vae):
        out = model.reconstruct(gray)
        assert out.shape == gray.shape and is_grayscale(out)
        batch = model.reconstruct(torch.stack([gray, torch.rand(3, 12, 20)]))
        assert is_grayscale(batch[0]) and not is_grayscale(batch[1])  # a colour image is left alone
