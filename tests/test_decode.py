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


# ----------------------------------------------------------------------------- any file, any mode
import io  # noqa: E402
import struct  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from emodetect.data.decode import UnreadableImage, decode_rgb  # noqa: E402


def pil_bytes(im: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


FACE = synthetic_face(2, np.random.default_rng(5))


def test_trailing_bytes_after_a_complete_jpeg_or_png_are_accepted():
    for ext in (".jpg", ".png"):
        data = encode(FACE, ext)
        for tail in (b"\x00" * 100, b"garbage" * 50, b"\xff\xd9" + bytes(range(256)) * 2, b"\xff\xda\x00\x08"):
            out = decode_rgb(data + tail)
            assert out.shape == (96, 96, 3)


def _jpeg_declaring(w: int, h: int) -> bytes:
    data = bytearray(encode(FACE, ".jpg"))
    i = data.find(b"\xff\xc0")  # baseline start-of-frame: height, width follow the precision byte
    data[i + 5 : i + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _png_declaring(w: int, h: int) -> bytes:
    import zlib

    data = bytearray(encode(FACE, ".png"))
    data[16:24] = struct.pack(">II", w, h)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # a valid IHDR CRC: only the size lies
    return bytes(data)


@pytest.mark.parametrize("data", [_jpeg_declaring(60000, 60000), _png_declaring(30000, 30000)])
def test_decompression_bombs_are_refused_by_their_header(data):
    with pytest.raises(UnreadableImage, match="over the limit|more than"):
        decode_rgb(data)
    assert decode(data) is None


def test_the_pixel_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("EMODETECT_MAX_PIXELS", "5000")
    with pytest.raises(UnreadableImage, match="over the limit of 5,000"):
        decode_rgb(encode(FACE, ".png"))  # 96 x 96 = 9,216 pixels
    assert decode_rgb(encode(FACE[:50, :50], ".png")).shape == (50, 50, 3)
    monkeypatch.setenv("EMODETECT_MAX_PIXELS", "lots")
    with pytest.raises(Exception, match="whole number"):
        decode_rgb(encode(FACE, ".png"))


def test_float_and_16_bit_images_keep_their_real_range():
    ramp = np.linspace(-200.0, 800.0, 30 * 20, dtype=np.float32).reshape(20, 30)
    out = decode_rgb(pil_bytes(Image.fromarray(ramp, mode="F"), "TIFF"))
    assert out.shape == (20, 30, 3) and out.min() == 0 and out.max() == 255  # not turned black
    expected = (ramp - ramp.min()) / (ramp.max() - ramp.min()) * 255
    assert np.abs(out[..., 0].astype(float) - expected).max() <= 0.5  # linear in the real range
    unit = np.linspace(0, 1, 100, dtype=np.float32).reshape(10, 10)
    out = decode_rgb(pil_bytes(Image.fromarray(unit * 0.5, mode="F"), "TIFF"))
    assert out.max() == 128  # [0, 1] floats are pixels in [0, 1], not stretched
    out = decode_rgb(pil_bytes(Image.fromarray(np.eye(4, dtype=np.int32), mode="I"), "TIFF"))
    assert out.max() == 255  # 32-bit integers 0 and 1 are a range to stretch, unlike [0, 1] floats
    sixteen = (np.arange(400).reshape(20, 20) * 160).astype(np.uint16)
    ok, buf = cv2.imencode(".png", sixteen)
    out = decode_rgb(buf.tobytes())
    assert out.shape == (20, 20, 3) and out.max() >= 247 and out[0, 0, 0] == 0


def test_modes_gray_palette_cmyk_alpha_gif_webp_bmp():
    rgb = Image.fromarray(FACE)
    cases = {
        "gray": pil_bytes(rgb.convert("L"), "PNG"),
        "palette": pil_bytes(rgb.convert("P"), "PNG"),
        "cmyk": pil_bytes(rgb.convert("CMYK"), "JPEG"),
        "webp": pil_bytes(rgb, "WEBP"),
        "bmp": pil_bytes(rgb, "BMP"),
        "tiff": pil_bytes(rgb, "TIFF"),
        "gif": pil_bytes(rgb.convert("P"), "GIF", save_all=True,
                         append_images=[Image.new("P", (96, 96), 0)]),  # fmt: skip
    }
    for name, data in cases.items():
        out = decode_rgb(data)
        assert out.shape == (96, 96, 3) and out.dtype == np.uint8, name
        assert abs(float(out.mean()) - float(FACE.mean())) < 12, name  # the picture, not black or white
    transparent = np.dstack([FACE, np.zeros((96, 96), np.uint8)])
    assert decode_rgb(pil_bytes(Image.fromarray(transparent, "RGBA"), "PNG")).min() == 255  # alpha on white


def test_exif_orientation_is_honoured():
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, :20] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    for fmt in ("JPEG", "PNG", "WEBP"):
        data = pil_bytes(Image.fromarray(wide), fmt, exif=exif.tobytes())
        out = decode_rgb(data)
        assert out.shape == (40, 20, 3), fmt
        assert out[:18].mean() > 200 and out[22:].mean() < 50, fmt  # the white half ends up on top


def _mutate(data: bytes, rng: np.random.Generator) -> bytes:
    b = bytearray(data)
    kind = rng.integers(5)
    if kind == 0:  # flip bytes anywhere
        for i in rng.integers(0, len(b), rng.integers(1, 20)):
            b[i] = rng.integers(256)
    elif kind == 1:  # flip bytes in the header, where sizes and offsets live
        for i in rng.integers(0, min(len(b), 64), rng.integers(1, 6)):
            b[i] = rng.integers(256)
    elif kind == 2:  # truncate
        b = b[: rng.integers(1, len(b))]
    elif kind == 3:  # insert random bytes
        at = rng.integers(0, len(b))
        b[at:at] = rng.integers(0, 256, rng.integers(1, 200), dtype=np.uint8).tobytes()
    else:  # large values in 32-bit fields of the header
        at = rng.integers(0, max(1, min(len(b), 60) - 4))
        b[at : at + 4] = struct.pack("<I", int(rng.integers(2**31)))
    return bytes(b)


def test_fuzzed_files_never_raise_anything_but_unreadable_image(monkeypatch):
    """A fixed-seed mutation loop over every format: a decoder's own exception never escapes decode_rgb."""
    monkeypatch.setenv("EMODETECT_MAX_PIXELS", "2000000")  # keeps decoded garbage small and the test fast
    rgb = Image.fromarray(FACE[:40, :40])
    bases = [pil_bytes(rgb, "JPEG"), pil_bytes(rgb, "PNG"), pil_bytes(rgb, "BMP"), pil_bytes(rgb, "TIFF"),
             pil_bytes(rgb.convert("P"), "GIF"), pil_bytes(rgb, "WEBP"), pil_bytes(rgb.convert("L"), "TIFF"),
             pil_bytes(rgb, "JPEG", progressive=True)]  # fmt: skip
    rng = np.random.default_rng(0)
    outcomes = {"decoded": 0, "refused": 0}
    for base in bases:
        for _ in range(50):
            data = _mutate(base, rng)
            try:
                out = decode_rgb(data)
            except UnreadableImage:
                outcomes["refused"] += 1
                continue
            assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
            outcomes["decoded"] += 1
    assert sum(outcomes.values()) == 400 and outcomes["refused"] > 50 and outcomes["decoded"] > 50, outcomes


def test_load_image_reads_arrays_and_pillow_images_as_it_reads_files():
    from emodetect.inference.analyze import load_image

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 128  # half-transparent red
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    from_file = load_image(buf.getvalue())
    assert from_file.shape == (4, 5, 3) and from_file[0, 0].tolist() == [227, 127, 127]  # onto white
    np.testing.assert_array_equal(load_image(rgba), from_file)  # an RGBA array: the same pixels as its file
    with pytest.raises(ValueError, match=r"\(H, W, 4\) RGBA"):
        load_image(np.zeros((4, 5, 2), np.uint8))
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (160, 200, 3), dtype=np.uint8)).save(buf, format="JPEG")
    truncated = Image.open(io.BytesIO(buf.getvalue()[: len(buf.getvalue()) // 2]))  # lazily opened: header only
    with pytest.raises(UnreadableImage, match="cannot decode"):
        load_image(truncated)
