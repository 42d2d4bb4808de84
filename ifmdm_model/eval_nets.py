"""Metric networks of `ifmdm-eval --clips` and the loaders of their user-given weight files.

IResNet        ArcFace backbone (insightface arcface_torch iresnet names), for CSIM.
SyncNet        this project's SyncNet-style two-stream network (its own state-dict format).
SyncNetPython  the layout of syncnet_python's `syncnet_v2.model` (Chung & Zisserman, "Out of
               time: automated lip sync in the wild", ACCV 2016 workshops), the network
               behind the LSE-D / LSE-C numbers of Wav2Lip, LatentSync and the IF-MDM paper.

No weights are shipped or downloaded: every loader reads a local state-dict file and raises
`VideoEvalError` naming the file when it is missing, unreadable or of another layout/shape.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from ifmdm_data.errors import IfmdmError

SYNC_FRAMES = 5


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
# SyncNet (LSE-D / LSE-C)
# ------------------------------------------------------------------------------------------

class SyncNet(nn.Module):
    """SyncNet-style two-stream network, this project's layout ("ifmdm"). audio (B, 1, 13, 20)
    MFCC; video (B, 5, 48, 48) grayscale mouth crops in [0, 1] stacked as channels. Both ->
    `emb`-d embeddings compared by Euclidean distance (as SyncNet's contrastive training makes
    them comparable)."""

    layout = "ifmdm"

    def __init__(self, width: int = 64, emb: int = 512):
        super().__init__()
        w = width

        def block(cin, cout, pool):
            return [nn.Conv2d(cin, cout, 3, 1, 1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)] + (
                [nn.MaxPool2d(pool)] if pool else [])

        self.audio = nn.Sequential(*block(1, w, (1, 2)), *block(w, 2 * w, (2, 2)),
                                   *block(2 * w, 4 * w, None), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.audio_fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, emb))
        self.video = nn.Sequential(*block(SYNC_FRAMES, w, 2), *block(w, 2 * w, 2), *block(2 * w, 4 * w, 2),
                                   *block(4 * w, 4 * w, None), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.video_fc = nn.Sequential(nn.Linear(4 * w, 4 * w), nn.ReLU(inplace=True), nn.Linear(4 * w, emb))

    def forward_audio(self, x):
        return self.audio_fc(self.audio(x))

    def forward_video(self, x):
        return self.video_fc(self.video(x))

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        return {"width": int(sd["audio.0.weight"].shape[0]), "emb": int(sd["audio_fc.2.weight"].shape[0])}


def _conv_bn_relu(conv: nn.Module, bn: nn.Module) -> list:
    return [conv, bn, nn.ReLU(inplace=True)]


def _head(emb: int) -> nn.Sequential:
    """512 -> 512 (BatchNorm1d, ReLU) -> emb: the FC head of each syncnet_python stream."""
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(inplace=True), nn.Linear(512, emb))


class SyncNetPython(nn.Module):
    """The two-stream network of syncnet_python (layout "syncnet_python"), with the module
    names and shapes of its released `syncnet_v2.model` state dict, so that file loads as is.

    audio `netcnnaud` + `netfcaud`: 2-D convs over an MFCC patch (B, 1, 13, 20) (13 cepstra x
    20 frames at 100 Hz = 0.2 s). lip `netcnnlip` + `netfclip`: 3-D convs over five RGB face
    crops (B, 3, 5, 224, 224), channels in BGR order (as OpenCV reads frames), raw 0-255
    values; the first conv spans all 5 frames. Both end in `emb`-d (1024) embeddings,
    compared by Euclidean distance. The Sequential indices of the convs and BatchNorms (0, 1,
    4, 5, 8, 9, 11, 12, 14, 15, 18, 19) are part of the parameter names: ReLU and max-pool
    modules sit between them exactly as in the released network.
    """

    layout = "syncnet_python"

    def __init__(self, emb: int = 1024):
        super().__init__()
        c2, b2 = nn.Conv2d, nn.BatchNorm2d
        self.netcnnaud = nn.Sequential(                                           # (B, 1, 13, 20)
            *_conv_bn_relu(c2(1, 64, 3, 1, 1), b2(64)), nn.MaxPool2d(1, 1),         # (B, 64, 13, 20)
            *_conv_bn_relu(c2(64, 192, 3, 1, 1), b2(192)), nn.MaxPool2d(3, (1, 2)),  # (B, 192, 11, 9)
            *_conv_bn_relu(c2(192, 384, 3, 1, 1), b2(384)),
            *_conv_bn_relu(c2(384, 256, 3, 1, 1), b2(256)),
            *_conv_bn_relu(c2(256, 256, 3, 1, 1), b2(256)), nn.MaxPool2d(3, 2),    # (B, 256, 5, 4)
            *_conv_bn_relu(c2(256, 512, (5, 4), 1, 0), b2(512)),                    # (B, 512, 1, 1)
        )
        self.netfcaud = _head(emb)
        c3, b3 = nn.Conv3d, nn.BatchNorm3d
        self.netcnnlip = nn.Sequential(                                           # (B, 3, 5, 224, 224)
            *_conv_bn_relu(c3(3, 96, (5, 7, 7), (1, 2, 2), 0), b3(96)),             # (B, 96, 1, 109, 109)
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),                                     # (B, 96, 1, 54, 54)
            *_conv_bn_relu(c3(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)), b3(256)),  # (B, 256, 1, 26, 26)
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),                          # (B, 256, 1, 13, 13)
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            *_conv_bn_relu(c3(256, 256, (1, 3, 3), 1, (0, 1, 1)), b3(256)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2)),                                     # (B, 256, 1, 6, 6)
            *_conv_bn_relu(c3(256, 512, (1, 6, 6), 1, 0), b3(512)),                 # (B, 512, 1, 1, 1)
        )
        self.netfclip = _head(emb)

    def forward_audio(self, x):                                                   # (B, 1, 13, 20)
        return self.netfcaud(torch.flatten(self.netcnnaud(x), 1))                 # (B, emb)

    def forward_video(self, x):                                                   # (B, 3, 5, 224, 224)
        return self.netfclip(torch.flatten(self.netcnnlip(x), 1))                 # (B, emb)

    @classmethod
    def config_of(cls, sd: dict) -> dict:
        return {"emb": int(sd["netfcaud.3.weight"].shape[0])}


SYNCNET_LAYOUTS = {"syncnet_python": SyncNetPython, "ifmdm": SyncNet}


def syncnet_layout(sd: dict) -> Optional[str]:
    """Which SyncNet layout a state dict is: "syncnet_python" (netcnnaud.* ...), "ifmdm"
    (audio.* ...), or None."""
    if any(k.startswith("netcnnaud.") for k in sd):
        return "syncnet_python"
    if any(k.startswith("audio.") for k in sd):
        return "ifmdm"
    return None


# ------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------

def _read_state_dict(path, what: str, prefixes=("module.",)) -> dict:
    p = Path(path)
    if not p.is_file():
        raise VideoEvalError(f"{what} weights file {p} does not exist")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file
            sd = load_file(str(p))
        else:
            sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise VideoEvalError(f"cannot read {what} weights {p} ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise VideoEvalError(f"{what} weights {p} is not a state dict (a dict of tensors)")
    out = {}
    for k, v in sd.items():
        for pre in prefixes:
            if k.startswith(pre):
                k = k[len(pre):]
        out[k] = v
    return out


def _load_net(path, what: str, build, device, prefixes=("module.",)) -> nn.Module:
    sd = _read_state_dict(path, what, prefixes)
    try:
        net = build(sd)
        # files saved before PyTorch 0.4.1 (syncnet_v2.model among them) have no BatchNorm
        # `num_batches_tracked` counters; they are unused in eval mode. Every other key is strict.
        own = net.state_dict()
        sd = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in sd}, **sd}
        net.load_state_dict(sd, strict=True)
    except Exception as e:  # noqa: BLE001 - KeyError, size mismatch, missing keys
        msg = " ".join(str(e).split()) or type(e).__name__       # torch's header + the details
        raise VideoEvalError(f"{what} weights {path} do not fit the {what} network "
                             f"({type(e).__name__}: {msg[:300]})") from None
    return net.to(device).eval().requires_grad_(False)


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
    """SyncNet of either layout, chosen by the state-dict keys: syncnet_python's
    (`syncnet_v2.model`: netcnnaud.*, netfcaud.*, netcnnlip.*, netfclip.*) -> `SyncNetPython`;
    this project's (audio.*, audio_fc.*, video.*, video_fc.*) -> `SyncNet`. The returned
    network's `layout` tells `eval_video.lse` which preprocessing to use."""
    def build(sd):
        layout = syncnet_layout(sd)
        if layout is None:
            raise KeyError("neither the syncnet_python layout (netcnnaud.*, netfcaud.*, netcnnlip.*, "
                           "netfclip.*) nor ifmdm's SyncNet layout (audio.*, video.*)")
        cls = SYNCNET_LAYOUTS[layout]
        return cls(**cls.config_of(sd))
    # "__S__." : a syncnet_python SyncNetInstance's own state dict wraps the network under it
    return _load_net(path, "SyncNet", build, device, prefixes=("module.", "__S__."))
