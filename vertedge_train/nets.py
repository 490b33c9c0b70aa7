"""2D U-Nets for DRR views and the SimSiam wrapper of their shared encoder design.

Both task nets (localization, identification) use the same `Encoder`, so the encoder weights that
SimSiam pretraining learns (Chen & He 2021; the paper's multi-view contrastive step, Sec. 2.1) load
into either. Shapes: images (B, 1, H, W) float32 with H, W multiples of 2**(levels-1).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _block(cin: int, cout: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


def channels(base: int, levels: int) -> list[int]:
    """Feature channels per level: base, 2*base, ... (capped at 16*base)."""
    return [base * min(2**i, 16) for i in range(levels)]


class Encoder(nn.Module):
    """U-Net encoder: `levels` stages of two 3x3 convs, 2x2 max-pool between stages.

    forward(x: (B, 1, H, W)) -> list of features, stage i at stride 2**i.
    """

    def __init__(self, base: int = 16, levels: int = 5, in_ch: int = 1) -> None:
        super().__init__()
        ch = channels(base, levels)
        self.out_channels: list[int] = ch
        self.stages = nn.ModuleList(
            [_block(in_ch if i == 0 else ch[i - 1], ch[i]) for i in range(levels)]
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, stage in enumerate(self.stages):
            if i > 0:
                x = F.max_pool2d(x, 2)
            x = stage(x)
            feats.append(x)
        return feats


class _Bottleneck(nn.Module):
    """ResNet bottleneck block (1x1, 3x3 (stride), 1x1 x4) with a projection shortcut when needed."""

    def __init__(self, cin: int, mid: int, stride: int = 1) -> None:
        super().__init__()
        cout = 4 * mid
        self.body = nn.Sequential(
            nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )
        self.short = (
            nn.Identity() if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.short(x))


class ResNetEncoder(nn.Module):
    """ResNet-50-like encoder for the paper setting (GPU): features at strides 1, 2, 4, 8, 16, 32.

    Stride 1: a light two-conv block (full-resolution skip for the decoder); stride 2: 7x7 stem
    conv, 64 channels; then bottleneck stages `blocks` (3, 4, 6, 3 = ResNet-50) at strides 4-32
    with 256, 512, 1024, 2048 channels (max-pool before the first, stride-2 convs after).
    """

    def __init__(self, blocks: tuple[int, ...] = (3, 4, 6, 3), width: int = 64, in_ch: int = 1) -> None:
        super().__init__()
        self.full = _block(in_ch, width // 2)
        self.stem = nn.Sequential(nn.Conv2d(in_ch, width, 7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(width), nn.ReLU(inplace=True))
        stages, cin = [], width
        for i, n in enumerate(blocks):
            mid = width * 2**i
            layers = [_Bottleneck(cin, mid, stride=1 if i == 0 else 2)]
            layers += [_Bottleneck(4 * mid, mid) for _ in range(n - 1)]
            stages.append(nn.Sequential(*layers))
            cin = 4 * mid
        self.stages = nn.ModuleList(stages)
        self.out_channels: list[int] = [width // 2, width] + [4 * width * 2**i for i in range(len(blocks))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = [self.full(x)]
        y = self.stem(x)
        feats.append(y)
        y = F.max_pool2d(y, 2)
        for stage in self.stages:
            y = stage(y)
            feats.append(y)
        return feats


def make_encoder(base: int = 16, levels: int = 5, kind: str = "unet") -> Encoder | ResNetEncoder:
    """The shared encoder: 'unet' (plain, `levels` stages from `base` channels) or 'resnet50'."""
    if kind == "unet":
        return Encoder(base, levels)
    if kind == "resnet50":
        return ResNetEncoder()
    raise ValueError(f"unknown encoder kind {kind!r}")


def _dec_channels(enc_channels: list[int], kind: str) -> list[int]:
    """Decoder output channels per level (the ResNet encoder's deep levels are narrowed)."""
    return enc_channels if kind == "unet" else [min(c, 256) for c in enc_channels]


class Decoder(nn.Module):
    """U-Net decoder: bilinear upsampling x2, concatenation with the skip, two 3x3 convs."""

    def __init__(self, enc_channels: list[int], out_channels: list[int] | None = None) -> None:
        super().__init__()
        ch = enc_channels
        dec = out_channels or ch
        # level i (from deep to shallow): input = decoder output of level i+1 (deepest: encoder) + skip i
        self.blocks = nn.ModuleList(
            [_block((ch[i + 1] if i == len(ch) - 2 else dec[i + 1]) + ch[i], dec[i])
             for i in reversed(range(len(ch) - 1))]
        )

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for block, skip in zip(self.blocks, reversed(feats[:-1])):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x


class RowContext(nn.Module):
    """Spine-long context at the deepest level: max over columns, dilated 1D convs along rows, added back.

    x (B, C, h, w) -> x + out(r) with r (B, C, h, 1) = the column-wise max refined by residual
    (3 x 1) convolutions of growing dilation (receptive field along S-I ~ 2 * sum(dilations) rows of
    the deepest level, i.e. the whole spine). Max, not mean, so that air columns (detector width
    differs between training crops and full views) do not change it. `out` starts at zero: an
    added RowContext leaves a trained net's output unchanged.
    """

    def __init__(self, ch: int, dilations: tuple[int, ...] = (1, 2, 4, 8)) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            [nn.Conv2d(ch, ch, (3, 1), padding=(d, 0), dilation=(d, 1)) for d in dilations]
        )
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        assert self.out.bias is not None  # Conv2d's default bias=True
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = x.amax(dim=3, keepdim=True)
        for conv in self.convs:
            r = r + F.relu(conv(r))
        return x + self.out(r)


class UNet(nn.Module):
    """Encoder + decoder + 1x1 head with `out_ch` channels.

    `softmax=True` applies a softmax over channels in forward (the identification net's `prob`);
    otherwise the output is linear (the localization net's `heatmap`). `forward_logits` always
    returns the pre-softmax output (for the loss).
    """

    def __init__(self, out_ch: int, base: int = 16, levels: int = 5, softmax: bool = False,
                 kind: str = "unet", context: tuple[int, ...] = ()) -> None:
        super().__init__()
        self.encoder = make_encoder(base, levels, kind)
        self.context = RowContext(self.encoder.out_channels[-1], tuple(context)) if context else None
        dec = _dec_channels(self.encoder.out_channels, kind)
        self.decoder = Decoder(self.encoder.out_channels, dec)
        self.head = nn.Conv2d(dec[0], out_ch, 1)
        self.softmax = softmax
        self.stride = 2 ** (len(self.encoder.out_channels) - 1)

    def forward_logits(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encoder(x)
        if self.context is not None:
            feats = feats[:-1] + [self.context(feats[-1])]
        return self.head(self.decoder(feats))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_logits(x)
        return torch.softmax(y, dim=1) if self.softmax else y


class SimSiam(nn.Module):
    """SimSiam on the shared encoder: global-pooled deepest features -> projector -> predictor.

    loss(x1, x2) = -(cos(p1, stopgrad(z2)) + cos(p2, stopgrad(z1))) / 2, in [-1, 1].
    """

    def __init__(self, base: int = 16, levels: int = 5, dim: int = 256, pred_dim: int = 64,
                 kind: str = "unet") -> None:
        super().__init__()
        self.encoder = make_encoder(base, levels, kind)
        c = self.encoder.out_channels[-1]
        self.projector = nn.Sequential(
            nn.Linear(c, dim, bias=False),
            nn.BatchNorm1d(dim),
            nn.ReLU(inplace=True),
            nn.Linear(dim, dim, bias=False),
            nn.BatchNorm1d(dim, affine=False),
        )
        self.predictor = nn.Sequential(
            nn.Linear(dim, pred_dim, bias=False),
            nn.BatchNorm1d(pred_dim),
            nn.ReLU(inplace=True),
            nn.Linear(pred_dim, dim),
        )

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        f = self.encoder(x)[-1]
        return self.projector(f.mean(dim=(2, 3)))

    def loss(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        z1, z2 = self.embed(x1), self.embed(x2)
        p1, p2 = self.predictor(z1), self.predictor(z2)
        cos = F.cosine_similarity
        return -(cos(p1, z2.detach(), dim=1).mean() + cos(p2, z1.detach(), dim=1).mean()) / 2


def n_params(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
