import numpy as np
from PIL import Image

from font_digits import FONTS, HAIRLINE, render_glyph, stroke_fraction, write_font_digits


def test_the_same_seed_writes_the_same_files(tmp_path):
    first = write_font_digits(tmp_path / "a", seed=3, count=6, max_side=128)
    second = write_font_digits(tmp_path / "b", seed=3, count=6, max_side=128)
    assert [item.path.read_bytes() for item in first] == [item.path.read_bytes() for item in second]
    other = write_font_digits(tmp_path / "c", seed=4, count=6, max_side=128)
    assert [a.path.read_bytes() for a in first] != [c.path.read_bytes() for c in other]


def test_every_font_draws_ten_different_digits():
    for font_file in FONTS:
        glyphs = [render_glyph(font_file, digit)[0] for digit in range(10)]
        shapes = {(glyph.shape, glyph.tobytes()) for glyph in glyphs}
        assert len(shapes) == 10, font_file  # a font without digits draws one missing-glyph box ten times


def test_a_glyph_is_thinned_and_thickened_without_losing_a_piece_or_a_counter():
    from scipy import ndimage

    designed, designed_stroke, _ = render_glyph("DejaVuSans.ttf", 8)
    thin, _, thin_stroke = render_glyph("DejaVuSans.ttf", 8, HAIRLINE)
    heavy, _, heavy_stroke = render_glyph("DejaVuSans.ttf", 8, 0.3)
    assert thin_stroke < designed_stroke < heavy_stroke
    assert thin_stroke < 0.05
    for glyph in (designed, thin, heavy):
        ink = np.pad(glyph, 1) >= 32  # any visible ink: a hairline is grey once rendered 4x smaller
        assert ndimage.label(ink, structure=np.ones((3, 3)))[1] == 1
        assert ndimage.label(~ink)[1] == 3  # around it, and the 8's two counters


def test_the_stroke_of_a_bar_is_its_width_over_its_height():
    bar = np.zeros((120, 40), dtype=bool)
    bar[10:110, 15:25] = True
    assert abs(stroke_fraction(bar) - 10 / 100) < 0.01


def test_the_set_holds_each_weight_with_its_label(tmp_path):
    items = write_font_digits(tmp_path, seed=0, count=20, max_side=128)
    assert {item.weight for item in items} == {"designed", "thinned", "thickened"}
    for item in items:
        assert item.path.name.endswith((f"_{item.label}.png", f"_{item.label}.jpg"))
        assert max(Image.open(item.path).size) <= 128
