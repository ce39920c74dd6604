"""The exact fast path: folded batch norm, static padding and a 2N mirror batch give the same outputs."""

import pytest
import torch

from emodetect.models import create_model, get_spec
from emodetect.models.fuse import MirrorAveraged, fuse


def _with_real_statistics(model):
    """Batch norms with non-trivial running statistics, so that folding them is really tested."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize("name, size", [("tiny", 32), ("cnn_seed", 96), ("resnet", 96), ("mini_xception", 64),
                                        ("efficientnet_lite0", 112), ("efficientnet_lite0", 96), ("fastnet", 64),
                                        ("fastlite", 64)])  # fmt: skip
def test_the_fused_network_equals_the_original(name, size):
    model = _with_real_statistics(create_model(name, pretrained=False))
    channels = get_spec(name).preprocess.channels
    fused = fuse(model, size, channels)
    x = torch.randn(4, channels, size, size, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(fused(x.contiguous(memory_format=torch.channels_last)), model(x), atol=1e-5, rtol=0)
        mirrored = (model(x) + model(torch.flip(x, dims=[3]))) / 2
        torch.testing.assert_close(MirrorAveraged(fused)(x), mirrored, atol=1e-5, rtol=0)
    if name != "cnn_seed":  # its batch norms follow pooling, not a convolution: they stay
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
