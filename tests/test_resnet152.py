"""ResNet-152 (keras.applications' layers, names and count) and the atrous output-stride option."""

import keras
import numpy as np
import pytest

from kerapose.backbones.resnet import atrous_schedule, resnet_backbone


def _weight_layout(model: keras.Model) -> list[tuple[str, tuple]]:
    return sorted((layer.name, tuple(tuple(w.shape) for w in layer.weights)) for layer in model.layers if layer.weights)


def test_resnet152_equals_keras_applications_layer_for_layer():
    ours = resnet_backbone(152)
    theirs = keras.applications.ResNet152(include_top=False, weights=None)
    assert ours.count_params() == theirs.count_params() == 58_370_944
    # same layer names with the same weight shapes: the ImageNet file loads by name
    assert _weight_layout(ours) == _weight_layout(theirs)
    assert sum(1 for layer in ours.layers if layer.name.endswith("_add")) == 3 + 8 + 36 + 3


def test_atrous_schedule():
    assert atrous_schedule(32) == {"C2": (1, 1), "C3": (2, 1), "C4": (2, 1), "C5": (2, 1)}
    assert atrous_schedule(16) == {"C2": (1, 1), "C3": (2, 1), "C4": (2, 1), "C5": (1, 2)}
    assert atrous_schedule(8) == {"C2": (1, 1), "C3": (2, 1), "C4": (1, 2), "C5": (1, 4)}
    with pytest.raises(ValueError, match=r"output_stride: expected one of \(8, 16, 32\), got 4"):
        resnet_backbone(18, output_stride=4)


@pytest.mark.parametrize("depth", [18, 50])
def test_output_stride_changes_grids_not_weights(depth):
    nets = {s: resnet_backbone(depth, input_shape=(64, 96, 3), width=0.25, output_stride=s) for s in (32, 16, 8)}
    grids = {s: {c: tuple(n.output[c].shape[1:3]) for c in ("C2", "C3", "C4", "C5")} for s, n in nets.items()}
    assert grids[32] == {"C2": (16, 24), "C3": (8, 12), "C4": (4, 6), "C5": (2, 3)}
    assert grids[16] == {"C2": (16, 24), "C3": (8, 12), "C4": (4, 6), "C5": (4, 6)}
    assert grids[8] == {"C2": (16, 24), "C3": (8, 12), "C4": (8, 12), "C5": (8, 12)}
    assert _weight_layout(nets[32]) == _weight_layout(nets[16]) == _weight_layout(nets[8])
    rates = {layer.name: layer.dilation_rate for layer in nets[8].layers if isinstance(layer, keras.layers.Conv2D)}
    assert rates["conv4_block2_2_conv"] == (2, 2) and rates["conv5_block1_2_conv"] == (4, 4)
    assert rates["conv3_block1_2_conv"] == (1, 1)


def test_atrous_bottleneck_network_is_the_strided_one_sampled_densely():
    """With the stride in the 1x1 convolutions (keras.applications' bottleneck), the dilated network
    computes the strided network's features on a denser grid: C5 at stride 16 sampled every second
    cell, and at stride 8 every fourth cell, equals C5 at stride 32 (same weights)."""
    rng = np.random.default_rng(0)
    nets = {s: resnet_backbone(50, input_shape=(64, 64, 3), width=0.25, output_stride=s) for s in (32, 16, 8)}
    weights = [rng.normal(0, 0.1, w.shape).astype("float32") if "variance" not in v.path
               else rng.uniform(0.5, 1.5, w.shape).astype("float32")
               for v, w in zip(nets[32].weights, nets[32].get_weights())]
    for net in nets.values():
        net.set_weights(weights)
    image = rng.uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    out = {s: {c: np.asarray(t) for c, t in net(image).items()} for s, net in nets.items()}
    scale = np.abs(out[32]["C5"]).max()
    np.testing.assert_allclose(out[16]["C5"][:, ::2, ::2], out[32]["C5"], atol=1e-4 * scale)
    np.testing.assert_allclose(out[8]["C5"][:, ::4, ::4], out[32]["C5"], atol=1e-4 * scale)
    np.testing.assert_allclose(out[8]["C4"][:, ::2, ::2], out[32]["C4"], atol=1e-4 * np.abs(out[32]["C4"]).max())


def test_resnet152_imagenet_file_is_the_one_keras_applications_publishes():
    """The entry's file name and md5 are keras.applications' own (read from its source)."""
    from keras.src.applications.resnet import BASE_WEIGHTS_PATH, WEIGHTS_HASHES

    from kerapose.weights.applications import APPLICATIONS_WEIGHTS

    url, md5 = APPLICATIONS_WEIGHTS["resnet152"]
    assert url == BASE_WEIGHTS_PATH + "resnet152_weights_tf_dim_ordering_tf_kernels_notop.h5"
    assert md5 == WEIGHTS_HASHES["resnet152"][1] == "ee4c566cf9a93f14d82f913c2dc6dd0c"
