"""What `cnnlab list` says about a torchvision architecture: a torchvision model YAML carries no description of
its own, so a copy of one with another `arch:` is described by that architecture. No torch here (listing stays
instant)."""

from __future__ import annotations

# arch -> description; parameter counts are for 32x32x3 inputs and 10 classes, as cnnlab adapts the network
ARCHITECTURES: dict[str, str] = {
    "alexnet": "AlexNet (torchvision): 57.0M params on 32x32x3, 10 classes",
    "densenet121": "DenseNet-121 (torchvision): 7.0M params on 32x32x3, 10 classes",
    "googlenet": "GoogLeNet (torchvision, no auxiliary classifiers): 5.6M params on 32x32x3, 10 classes",
    "mobilenet_v2": "MobileNetV2 (torchvision): 2.2M params on 32x32x3, 10 classes",
    "mobilenet_v3_large": "MobileNetV3-Large (torchvision): 4.2M params on 32x32x3, 10 classes; "
                          "arch=mobilenet_v3_small for the small one",
    "regnet_y_400mf": "RegNetY-400MF (torchvision): 3.9M params on 32x32x3, 10 classes",
    "resnet18": "ResNet-18 (torchvision): 11.2M params on 32x32x3, 10 classes",
    "resnet34": "ResNet-34 (torchvision): 21.3M params on 32x32x3, 10 classes",
    "resnet50": "ResNet-50 (torchvision): 23.5M params on 32x32x3, 10 classes",
    "resnext50_32x4d": "ResNeXt-50 32x4d (torchvision): 23.0M params on 32x32x3, 10 classes",
    "squeezenet1_1": "SqueezeNet 1.1 (torchvision): 0.7M params on 32x32x3, 10 classes",
    "vgg11": "VGG-11 (torchvision): 128.8M params on 32x32x3, 10 classes; batch_norm=true builds vgg11_bn",
    "vgg16": "VGG-16 (torchvision): 134.3M params on 32x32x3, 10 classes; batch_norm=true builds vgg16_bn",
}


def describe(arch: str) -> str:
    """The one-line description of a torchvision architecture, for any name torchvision knows."""
    return ARCHITECTURES.get(arch, f"{arch} (torchvision, adapted to the dataset's channels, classes and image size)")
