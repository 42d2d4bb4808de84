"""Metric networks of `ifmdm-eval video` and the loaders of their user-given weight files.

IResNet        ArcFace backbone (insightface arcface_torch iresnet names), for CSIM.
SyncNet        this project's SyncNet-style two-stream network (its own state-dict format);
SyncNetPython  the layout of syncnet_python's `syncnet_v2.model`: both defined in
               `ifmdm_data.faces.syncnet` (the data filter's sync check uses them too); `load_syncnet` here
               loads either.

No weights are shipped or downloaded: every loader reads a local state-dict file and raises
`VideoEvalError` naming the file when it is missing, unreadable or of another layout/shape.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ifmdm_data.faces import syncnet as _syncnet
from ifmdm_data.errors import IfmdmError


class VideoEvalError(IfmdmError):
    """The talking-head evaluation cannot run (bad clip, bad weights file)."""


# ------------------------------------------------------------------------------------------
# ArcFace (CSIM)
# ------------------------------------------------------------------------------------------

class IBasicBlock(nn.Module):
    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """ArcFace iresnet backbone (insightface arcface_torch names): 112 x 112 -> `emb` (512).
    layers: blocks per stage (iresnet50: (3, 4, 14, 3)); widths: (64, 128, 256, 512)."""

    def __init__(self, layers=(3, 4, 14, 3), widths=(64, 128, 256, 512), stem: int = 64,
                 emb: int = 512):
        super().__init__()
        self.conv1 = nn.Conv2d(3, stem, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem, eps=1e-05)
        self.prelu = nn.PReLU(stem)
        inplanes = stem
        for k, (n, w) in enumerate(zip(layers, widths), 1):
            down = nn.Sequential(nn.Conv2d(inplanes, w, 1, 2, bias=False), nn.BatchNorm2d(w, eps=1e-05))
            blocks = [IBasicBlock(inplanes, w, 2, down)] + [IBasicBlock(w, w) for _ in range(n - 1)]
            setattr(self, f"layer{k}", nn.Sequential(*blocks))
            inplanes = w
        self.bn2 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(inplanes * 7 * 7, emb)
        self.features = nn.BatchNorm1d(emb, eps=1e-05)

    def forward(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        layers, widths = [], []
        for k in range(1, 5):
            idx = {int(key.split(".")[1]) for key in sd if key.startswith(f"layer{k}.")}
            layers.append(len(idx))
            widths.append(int(sd[f"layer{k}.0.conv1.weight"].shape[0]))
        return {"layers": tuple(layers), "widths": tuple(widths),
                "stem": int(sd["conv1.weight"].shape[0]), "emb": int(sd["fc.weight"].shape[0])}


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

def _read_state_dict(path, what: str, prefixes=("module.",)) -> dict:
    return _syncnet.read_state_dict(path, what, prefixes, error=VideoEvalError)


def _load_net(path, what: str, build, device, prefixes=("module.",)) -> nn.Module:
    return _syncnet.load_net(path, what, build, device, prefixes, error=VideoEvalError)


def load_inception(path, device="cpu") -> nn.Module:
    from torchvision.models import inception_v3

    def build(sd):
        net = inception_v3(weights=None, aux_logits=True, init_weights=False)
        if "AuxLogits.fc.weight" not in sd:              # weights saved without the aux head
            net.AuxLogits = None
            net.aux_logits = False
        return net
    net = _load_net(path, "Inception-v3", build, device)
    net.fc = nn.Identity()                                # pool3 (2048-d) features
    return net


def load_arcface(path, device="cpu") -> IResNet:
    return _load_net(path, "ArcFace", lambda sd: IResNet(**IResNet.config_of(sd)), device)


def load_syncnet(path, device="cpu") -> nn.Module:
    """`ifmdm_data.faces.syncnet.load_syncnet` raising `VideoEvalError`: syncnet_python's layout ->
    `SyncNetPython`, this project's -> `SyncNet`; the network's `layout` tells
    `ifmdm_model.eval.lipsync.lse` which preprocessing to use."""
    return _syncnet.load_syncnet(path, device, error=VideoEvalError)
