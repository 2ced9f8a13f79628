"""Model builders: an MLP, a small CNN sized for 8x8 digits, a classic VGG-style CIFAR net,
CIFAR ResNets (He et al., "Deep Residual Learning for Image Recognition", 2016, section 4.2) and a
CIFAR MobileNet (Howard et al., "MobileNets", 2017: depthwise-separable convolutions).

Dropout layers get an explicit (seed, layer_id) so their masks depend only on the model and the
step, never on how many models the process built before (resume and reproducibility)."""
from __future__ import annotations

import math

from . import nn

# The classifier head starts with small weights, so the initial logits are near 0 and the initial
# loss is near ln(C): the first sanity check of the lecture notes (`fasttrain check`).
HEAD_INIT = "small_normal"


def mlp(in_features: int, num_classes: int = 10, hidden: tuple = (128,), dropout: float = 0.0, seed: int = 0):
    """Flatten, then (Linear, ReLU[, Dropout]) per hidden width, then a Linear classifier."""
    layers = [nn.Flatten()]
    width = int(in_features)
    for i, h in enumerate(hidden):
        layers += [nn.Linear(width, h), nn.ReLU()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout, seed=seed, layer_id=i))
        width = h
    layers.append(nn.Linear(width, num_classes, init=HEAD_INIT))
    return nn.Sequential(*layers)


def _conv_bn_relu(cin: int, cout: int, stride: int = 1):
    # no conv bias: the BN that follows subtracts the mean, so a bias would be a dead parameter.
    # The ReLU is fused into the BN (same values and gradients, two passes over the activations
    # fewer). Parameters, their order and their initialization are those of conv, BN, ReLU; the
    # Sequential positions after each pair shift down by one, and with them the parameter names.
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout, relu=True)]


def simple_cnn(in_ch: int = 1, num_classes: int = 10, image_size: int = 8, width: int = 32,
               dropout: float = 0.25, seed: int = 0):
    """conv-BN-ReLU, 2x2 max-pool, conv-BN-ReLU, pool, dropout, linear.

    For small images (<= 16 px) the second pool is a 2x2 max-pool and the classifier sees every
    remaining position (on 8x8 digits: 2x(2w) x 2 x 2 features); for larger images it is a global
    average pool so the classifier stays small."""
    if image_size < 4:
        raise ValueError(f"simple_cnn(image_size): expected >= 4 (two 2x2 pools), got {image_size}")
    layers = _conv_bn_relu(in_ch, width) + [nn.MaxPool2d(2)] + _conv_bn_relu(width, 2 * width)
    if image_size <= 16:
        side = image_size // 4
        layers += [nn.MaxPool2d(2), nn.Flatten()]
        features = 2 * width * side * side
    else:
        layers += [nn.GlobalAvgPool2d(), nn.Flatten()]
        features = 2 * width
    if dropout > 0:
        layers.append(nn.Dropout(dropout, seed=seed, layer_id=0))
    layers.append(nn.Linear(features, num_classes, init=HEAD_INIT))
    return nn.Sequential(*layers)


def convnet_classic(in_ch: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 32,
                    dropout: float = 0.5, seed: int = 0):
    """(conv w-BN-ReLU) x2, pool, (conv 2w-BN-ReLU) x2, pool, dropout, linear: the classic
    VGG-style CIFAR-10 baseline (Simonyan & Zisserman 2015, scaled down)."""
    if image_size % 4:
        raise ValueError(f"convnet_classic(image_size): expected a multiple of 4, got {image_size}")
    layers = (_conv_bn_relu(in_ch, width) + _conv_bn_relu(width, width) + [nn.MaxPool2d(2)]
              + _conv_bn_relu(width, 2 * width) + _conv_bn_relu(2 * width, 2 * width) + [nn.MaxPool2d(2)]
              + [nn.Flatten()])
    if dropout > 0:
        layers.append(nn.Dropout(dropout, seed=seed, layer_id=0))
    side = image_size // 4
    layers.append(nn.Linear(2 * width * side * side, num_classes, init=HEAD_INIT))
    return nn.Sequential(*layers)


def _basic_block(cin: int, cout: int, stride: int):
    """conv-BN-ReLU-conv-BN plus shortcut, then ReLU. When the shape changes the shortcut is a
    strided 1x1 conv + BN (the paper's option B)."""
    body = nn.Sequential(*_conv_bn_relu(cin, cout, stride), nn.Conv2d(cout, cout, 3, padding=1, bias=False),
                         nn.BatchNorm2d(cout))
    shortcut = None
    if stride != 1 or cin != cout:
        shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
    return nn.Residual(body, shortcut, post=nn.ReLU())


def resnet(depth: int = 20, in_ch: int = 3, num_classes: int = 10, width: int = 16):
    """CIFAR ResNet of depth 6n+2 (8, 20, 32, ...): a 3x3 stem, three stages of n basic blocks at
    widths w, 2w, 4w (stride 2 entering stages 2 and 3), global average pool, linear."""
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"resnet(depth): expected 6n+2 with n >= 1 (8, 20, 32, ...), got {depth}")
    n = (depth - 2) // 6
    layers = _conv_bn_relu(in_ch, width)
    cin = width
    for stage, cout in enumerate((width, 2 * width, 4 * width)):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(_basic_block(cin, cout, stride))
            cin = cout
    layers += [nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(cin, num_classes, init=HEAD_INIT)]
    return nn.Sequential(*layers)


# (output channels at width 1, stride of the depthwise conv) of each separable block: MobileNet v1's
# 13 blocks with the first stride-2 block made stride 1, the usual adaptation to 32x32 inputs
# (the ImageNet net's stride-2 stem and first block would leave a 8x8 map after two layers).
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                    (512, 1), (512, 1), (1024, 2), (1024, 1))


def _separable(cin: int, cout: int, stride: int):
    """3x3 depthwise conv (one filter per channel) - BN - ReLU, then a 1x1 pointwise conv that mixes
    the channels - BN - ReLU: 9 + cout multiplies per input value where a full 3x3 conv needs 9*cout."""
    return [nn.Conv2d(cin, cin, 3, stride=stride, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin, relu=True),
            nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout, relu=True)]


def mobilenet(in_ch: int = 3, num_classes: int = 10, width: float = 0.5, blocks=MOBILENET_BLOCKS):
    """MobileNet v1 for small images: a 3x3 conv-BN-ReLU stem of 32*width channels, the separable
    blocks (channels scaled by `width`, the paper's width multiplier alpha; 0.5 keeps a CPU step
    short), global average pool, linear."""
    if not width > 0:
        raise ValueError(f"mobilenet(width): expected a positive width multiplier, got {width!r}")
    ch = lambda c: max(8, int(round(c * width)))   # noqa: E731
    cin = ch(32)
    layers = _conv_bn_relu(in_ch, cin)
    for cout, stride in blocks:
        layers += _separable(cin, ch(cout), stride)
        cin = ch(cout)
    layers += [nn.GlobalAvgPool2d(), nn.Flatten(), nn.Linear(cin, num_classes, init=HEAD_INIT)]
    return nn.Sequential(*layers)


MODEL_NAMES = ("mlp", "simple_cnn", "convnet_classic", "resnet8", "resnet20", "mobilenet")


def build(name: str, input_shape: tuple, num_classes: int, dropout: float | None = None, seed: int = 0):
    """A model by name for inputs of shape (C, H, W)."""
    c, h = input_shape[0], input_shape[-1]
    kw = {"seed": seed} if dropout is None else {"dropout": dropout, "seed": seed}
    if name == "mlp":
        return mlp(math.prod(input_shape), num_classes, **kw)
    if name == "simple_cnn":
        return simple_cnn(c, num_classes, h, **kw)
    if name == "convnet_classic":
        return convnet_classic(c, num_classes, h, **kw)
    if name in ("resnet8", "resnet20"):
        return resnet(int(name[6:]), c, num_classes)
    if name == "mobilenet":
        return mobilenet(c, num_classes)
    raise ValueError(f"model: expected one of {list(MODEL_NAMES)}, got {name!r}")
