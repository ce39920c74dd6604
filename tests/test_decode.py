import cv2
import numpy as np

from conftest import encode, synthetic_face
from emodetect.data.decode import decode, sniff_format


def test_gray_and_rgb_shapes_and_colour_order():
    img = np.zeros((96, 96, 3), np.uint8)
    img[..., 0] = 200  # pure red in RGB
    data = encode(img, ".png")
    rgb = decode(data, "rgb")
    assert rgb.shape == (96, 96, 3) and rgb.dtype == np.uint8
    assert rgb[..., 0].mean() == 200 and rgb[..., 2].mean() == 0
    gray = decode(data, "gray")
    assert gray.shape == (96, 96)
    assert abs(int(gray[0, 0]) - round(0.299 * 200)) <= 1


def test_other_sizes_are_centre_cropped_and_resized():
    img = synthetic_face(3, np.random.default_rng(0), size=96)
    wide = np.concatenate([np.zeros((96, 40, 3), np.uint8), img, np.zeros((96, 40, 3), np.uint8)], axis=1)
    out = decode(encode(wide, ".png"), "rgb")
    assert out.shape == (96, 96, 3)
    np.testing.assert_array_equal(out, img)  # the crop removed exactly the padding
    big = cv2.resize(img, (200, 200))
    assert decode(encode(big, ".jpg"), "gray").shape == (96, 96)


def test_truncated_and_garbage_bytes_are_unreadable():
    data = encode(synthetic_face(0, np.random.default_rng(1)), ".jpg")
    assert decode(data) is not None
    assert decode(data[: len(data) // 2]) is None  # OpenCV alone would return a half-grey image
    assert decode(b"not an image at all") is None
    assert sniff_format(data) == "jpeg"
    assert sniff_format(encode(np.zeros((4, 4, 3), np.uint8), ".png")) == "png"


def test_png_with_alpha_decodes_to_three_channels():
    rgba = np.dstack([synthetic_face(1, np.random.default_rng(2)), np.full((96, 96), 128, np.uint8)])
    ok, buf = cv2.imencode(".png", rgba)
    assert decode(buf.tobytes(), "rgb").shape == (96, 96, 3)
