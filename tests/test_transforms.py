"""The preprocessing home: batched augmentations (shapes, label alignment, identity at strength 0) and the
fixed corruptions of the robustness evaluation."""

import numpy as np
import pytest
import torch

from emodetect.config import Augment
from emodetect.data.transforms import (
    CORRUPTIONS,
    Preprocess,
    augment_batch,
    augment_groups,
    corrupt,
    gaussian_blur,
    to_model_input,
)

RGB112 = Preprocess(size=112, mode="rgb", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
STILL = dict(rotation=0, zoom=(1, 1), shift=0, flip=0, brightness=0, contrast=0)  # geometry and colour off
NEW = ("grayscale", "lowres", "jpeg", "blur", "saturation")


def _faces(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    smooth = torch.nn.functional.interpolate(torch.rand(n, 3, 12, 12, generator=g), size=(96, 96), mode="bicubic")
    return (smooth.clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.mark.parametrize("name", NEW)
def test_each_new_augmentation_is_the_identity_at_strength_zero(name):
    x = _faces()
    off = augment_batch(x, RGB112, Augment(**STILL, **{name: 0.0}), torch.Generator().manual_seed(0))
    torch.testing.assert_close(off, to_model_input(x, RGB112), atol=1e-4, rtol=0)
    on = augment_batch(x, RGB112, Augment(**STILL, **{name: 1.0}), torch.Generator().manual_seed(0))
    assert on.shape == off.shape == (6, 3, 112, 112) and on.dtype == torch.float32
    assert not torch.allclose(on, off, atol=1e-3)  # at full strength it does something


@pytest.mark.parametrize("name", NEW)
def test_each_augmentation_keeps_label_alignment(name):
    """Image i is flat grey i*30 (pixel noise aside): whatever the augmentation, output i stays image i."""
    values = torch.arange(8, dtype=torch.float32) * 30
    x = values.view(8, 1, 1, 1).expand(8, 3, 96, 96).clone()
    x += torch.randn(x.shape, generator=torch.Generator().manual_seed(1)) * 3
    x = x.clamp(0, 255).round().to(torch.uint8)
    pre = Preprocess(size=64, mode="rgb", mean=(0.0,) * 3, std=(1.0,) * 3)
    out = augment_batch(x, pre, Augment(**STILL, **{name: 1.0}), torch.Generator().manual_seed(0))
    np.testing.assert_allclose(out.mean(dim=(1, 2, 3)).numpy(), values.numpy() / 255, atol=0.03)


def test_grayscale_makes_channels_equal_and_blur_smooths():
    x = _faces()
    out = augment_batch(x, RGB112, Augment(**STILL, grayscale=1.0))
    torch.testing.assert_close(out[:, 0], out[:, 1]) and torch.testing.assert_close(out[:, 1], out[:, 2])
    f = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(2))  # pixel noise: blur removes most of it
    blurred = gaussian_blur(f, torch.full((6,), 2.0))
    assert blurred.shape == f.shape and blurred.diff(dim=-1).abs().mean() < f.diff(dim=-1).abs().mean() / 2
    torch.testing.assert_close(gaussian_blur(f, torch.zeros(6)), f)  # sigma 0: untouched


def test_augmentations_off_draw_the_same_random_numbers_as_before_they_existed():
    """A config without the newer augmentations trains exactly as it did: same draws, same batches."""
    x = _faces()
    a = augment_batch(x, RGB112, Augment(), torch.Generator().manual_seed(3))
    b = augment_batch(x, RGB112, Augment(grayscale=0, lowres=0, jpeg=0, blur=0, saturation=0),
                      torch.Generator().manual_seed(3))  # fmt: skip
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_each_group_of_images_gets_its_own_augmentation_in_its_own_place():
    x = _faces(8)
    group = torch.tensor([1, 0, 0, 1, 1, 0, 1, 0])
    shortcuts = Augment(**STILL, jpeg=1.0, lowres=1.0, blur=1.0)
    augs = [shortcuts, Augment(**STILL)]  # group 1: geometry and colour off too, so its rows are the clean input
    out = augment_groups(x, RGB112, augs, group, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[group == 1], to_model_input(x[group == 1], RGB112), atol=1e-4, rtol=0)
    torch.testing.assert_close(out[group == 0], augment_batch(x[group == 0], RGB112, shortcuts,
                                                              torch.Generator().manual_seed(0)))  # fmt: skip
    assert not torch.allclose(out[group == 0], to_model_input(x[group == 0], RGB112), atol=1e-3)
    same = augment_groups(x, RGB112, [Augment()], None, torch.Generator().manual_seed(4))  # no groups: augment_batch
    torch.testing.assert_close(same, augment_batch(x, RGB112, Augment(), torch.Generator().manual_seed(4)))


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_corruptions_keep_shape_and_are_deterministic(name):
    rgb = _faces().permute(0, 2, 3, 1).numpy()
    gray = rgb[..., 0].copy()
    for images in (rgb, gray):
        out = corrupt(images, name)
        assert out.shape == images.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out, corrupt(images, name))
    assert not np.array_equal(corrupt(rgb, name), rgb)
    with pytest.raises(ValueError, match="unknown corruption"):
        corrupt(rgb, "fog")


@pytest.mark.parametrize("size", [64, 88, 96, 112])
def test_augmentation_at_strength_0_is_the_eval_preset_at_any_input_size(size):
    pre = Preprocess(size=size, mode="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    x = _faces()  # 96 px: a downscale to 64 and 88 (the fast model), none at 96, an upscale to 112
    out = augment_batch(x, pre, Augment(**STILL), torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, to_model_input(x, pre), atol=1e-4, rtol=0)


def test_the_jpeg_corruption_is_the_training_augmentations_jpeg_at_quality_30():
    from emodetect.data.transforms import jpeg_batch

    x = _faces()  # (N, 3, H, W) uint8, in colour: OpenCV's BGR order must not swap red and blue in the encoder
    want = jpeg_batch(x, torch.ones(len(x), dtype=torch.bool), torch.full((len(x),), 30))
    np.testing.assert_array_equal(corrupt(x.permute(0, 2, 3, 1).numpy(), "jpeg30"), want.permute(0, 2, 3, 1).numpy())
    gray = x[:, :1]
    np.testing.assert_array_equal(corrupt(gray[:, 0].numpy(), "jpeg30"),
                                  jpeg_batch(gray, torch.ones(len(x), dtype=torch.bool), torch.full((len(x),), 30))[:, 0].numpy())  # fmt: skip


def test_reframe_turns_one_models_input_into_anothers():
    from emodetect.data.transforms import reframe

    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 48, 48, 3), dtype=np.uint8)
    teacher = Preprocess(size=48, mode="rgb", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    gray = Preprocess(size=48, mode="gray", mean=(0.5,), std=(0.5,))
    x = to_model_input(faces, teacher)
    assert torch.allclose(reframe(x, teacher, teacher), x)
    assert torch.allclose(reframe(x, teacher, gray), to_model_input(faces, gray), atol=1e-5)  # mode + normalisation
    small = Preprocess(size=24, mode="rgb", mean=(0.5,) * 3, std=(0.5,) * 3)
    pixels = torch.from_numpy(faces).permute(0, 3, 1, 2).float() / 255
    want = (torch.nn.functional.interpolate(pixels, size=(24, 24), mode="bilinear", antialias=True) - 0.5) / 0.5
    assert reframe(x, teacher, small).shape == (4, 3, 24, 24)
    assert torch.allclose(reframe(x, teacher, small), want, atol=1e-5)
