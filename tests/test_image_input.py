"""ifmdm-infer's portrait reader: alpha composited over a stated white backdrop (issue 11)."""
import cv2
import numpy as np
import pytest
from PIL import Image

from ifmdm_model.infer.media_io import composite_alpha, load_image


def _rgba():
    """Left half opaque red; right half fully transparent with BLACK paint under it; middle
    column half transparent green."""
    a = np.zeros((8, 8, 4), np.uint8)
    a[:, :4] = (255, 0, 0, 255)
    a[:, 4:] = (0, 0, 0, 0)
    a[:, 4] = (0, 255, 0, 128)
    return a


@pytest.mark.parametrize("kind", ["png8", "png16", "pil_palette"])
def test_transparent_pixels_become_white(tmp_path, kind):
    a = _rgba()
    p = tmp_path / "face.png"
    if kind == "png8":
        cv2.imwrite(str(p), cv2.cvtColor(a, cv2.COLOR_RGBA2BGRA))
    elif kind == "png16":
        cv2.imwrite(str(p), cv2.cvtColor(a.astype(np.uint16) * 257, cv2.COLOR_RGBA2BGRA))
    else:                                           # palette image with a transparent index
        Image.fromarray(a).convert("RGBA").save(p)
        im = Image.open(p).convert("P", palette=Image.Palette.ADAPTIVE)
        im.info["transparency"] = im.getpixel((7, 0))
        im.save(p, transparency=im.getpixel((7, 0)))
    rgb = load_image(p)
    assert rgb.dtype == np.uint8 and rgb.shape == (8, 8, 3)
    np.testing.assert_array_equal(rgb[0, 0], (255, 0, 0))          # opaque: unchanged
    np.testing.assert_array_equal(rgb[0, 7], (255, 255, 255))      # transparent: white, not black
    if kind != "pil_palette":                                       # 50% green over white
        a_ = 128 / 255
        np.testing.assert_allclose(rgb[0, 4], np.rint([255 * (1 - a_), 255, 255 * (1 - a_)]), atol=1)


def test_opaque_images_are_untouched(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (6, 6, 3), np.uint8)
    p = tmp_path / "x.png"
    cv2.imwrite(str(p), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(load_image(p), img)
    rgba = np.concatenate([img, np.full((6, 6, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(composite_alpha(rgba), img)


def test_inspect_tells_same_named_clips_apart():
    from ifmdm_data.report.inspect import display_paths
    got = display_paths(["/data/set/a/clip.mp4", "/data/set/b/clip.mp4", "/data/set/a/x/y.mp4"])
    assert got == ["a/clip.mp4", "b/clip.mp4", "a/x/y.mp4"]
    assert display_paths(["/d/only.mp4"]) == ["only.mp4"]
    long = display_paths(["/r/" + "n" * 80 + "/c.mp4", "/r/z/c.mp4"], width=20)
    assert long[0].startswith("...") and long[0].endswith("/c.mp4") and len(long[0]) == 20
