"""Model factory: the small built-in CNN, and any timm or torchvision architecture by name.

``create_model("small_cnn", ...)`` builds the default CNN; ``"tv:<name>"`` builds a torchvision
model; every other name goes to ``timm.create_model`` with random initialisation (nothing is
downloaded). All models take float images in [0, 1] of shape ``[B, in_chans, img_size, img_size]``.
"""

from __future__ import annotations

import torch
from torch import nn

from .errors import ConfigError, UnknownNameError

__all__ = ["SmallCNN", "create_model", "is_known_model"]


class SmallCNN(nn.Module):
    """Four Conv-BN-ReLU blocks, each halving the resolution, global pooling and a linear head.

    About 240k parameters and 13 MMACs per 32x32 image at the default widths: small enough to train
    and mask on a laptop CPU in seconds, deep enough to carry transferable features.

    Args:
        num_classes: size of the output layer.
        in_chans: input channels.
        widths: output channels of the four blocks.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (32, 64, 128, 128)):
        super().__init__()
        layers, c_in = [], in_chans
        for c_out in widths:
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = c_in
        self.num_classes = num_classes
        self.fc = nn.Linear(c_in, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def _timm_has(name: str) -> bool:
    import timm

    return bool(timm.list_models(name))


def is_known_model(name: str) -> bool:
    """True if ``create_model`` can build ``name`` (without building it)."""
    if name == "small_cnn":
        return True
    if name.startswith("tv:"):
        import torchvision

        return name[3:] in torchvision.models.list_models()
    return _timm_has(name)


def create_model(name: str = "small_cnn", num_classes: int = 10, in_chans: int = 3, img_size: int = 32) -> nn.Module:
    """Build a randomly initialised classifier.

    Args:
        name: ``"small_cnn"``, a timm architecture (``"resnet18"``, ``"test_vit"``, ...) or
            ``"tv:<torchvision name>"`` (``"tv:mobilenet_v3_small"``).
        num_classes: number of classes.
        in_chans: input channels (torchvision models accept only 3).
        img_size: input resolution; passed to timm architectures that take it (ViTs).

    Returns:
        The model, in train mode, on the CPU.

    Raises:
        TypeError: ``name`` is not a string.
        UnknownNameError: no architecture has that name.
        ConfigError: a size argument is not a positive integer.

    Example:
        >>> model = create_model("resnet18", num_classes=10)
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__}")
    for arg, value in (("num_classes", num_classes), ("in_chans", in_chans), ("img_size", img_size)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ConfigError(f"{arg}={value!r} must be a positive integer")
    if not is_known_model(name):
        raise UnknownNameError(
            f"model={name!r} is not an architecture: expected 'small_cnn', a timm name "
            "(see timm.list_models()) or 'tv:<torchvision name>'"
        )
    if name == "small_cnn":
        return SmallCNN(num_classes=num_classes, in_chans=in_chans)
    if name.startswith("tv:"):
        import torchvision

        if in_chans != 3:
            raise ConfigError(f"torchvision models take in_chans=3, got in_chans={in_chans}")
        return torchvision.models.get_model(name[3:], weights=None, num_classes=num_classes)
    import timm

    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "pretrained": False}
    try:  # transformers need the resolution at construction; convnets reject the argument
        return timm.create_model(name, img_size=img_size, **kwargs)
    except TypeError:
        return timm.create_model(name, **kwargs)
