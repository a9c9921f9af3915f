"""Candidate operations of the GLA-FERNet / DARTS search space (paper Sec. 3.1; docs/method.md "Search space")."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from genotypes import OPERATIONS, PRIMITIVES, check_image_size  # noqa: F401 (the networks import it from here)

# Every constructor takes (C, stride, affine, groups=1). With groups > 1 it builds `groups` independent copies of
# the op side by side on the channel axis (C channels in all, C // groups per copy; 1x1 convolutions become grouped
# convolutions): the supernet runs all edges that start from the same state as one such op.
OPS = {
    'none': lambda C, stride, affine, groups=1: Zero(stride),
    'avg_pool_3x3': lambda C, stride, affine, groups=1: nn.AvgPool2d(3, stride=stride, padding=1,
                                                                     count_include_pad=False),
    'max_pool_3x3': lambda C, stride, affine, groups=1: nn.MaxPool2d(3, stride=stride, padding=1),
    'skip_connect': lambda C, stride, affine, groups=1: (Identity() if stride == 1
                                                         else FactorizedReduce(C, C, affine, groups)),
    'sep_conv_3x3': lambda C, stride, affine, groups=1: SepConv(C, C, 3, stride, 1, affine, groups),
    'sep_conv_5x5': lambda C, stride, affine, groups=1: SepConv(C, C, 5, stride, 2, affine, groups),
    'sep_conv_7x7': lambda C, stride, affine, groups=1: SepConv(C, C, 7, stride, 3, affine, groups),
    'dil_conv_3x3': lambda C, stride, affine, groups=1: DilConv(C, C, 3, stride, 2, 2, affine, groups),
    'dil_conv_5x5': lambda C, stride, affine, groups=1: DilConv(C, C, 5, stride, 4, 2, affine, groups),
    'conv_7x1_1x7': lambda C, stride, affine, groups=1: nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(C, C, (1, 7), stride=(1, stride), padding=(0, 3), groups=groups, bias=False),
        nn.Conv2d(C, C, (7, 1), stride=(stride, 1), padding=(3, 0), groups=groups, bias=False),
        nn.BatchNorm2d(C, affine=affine)),
}


assert set(OPS) == set(PRIMITIVES) | set(OPERATIONS), 'an operation is named in genotypes.py but not built here'


class ReLUConvBN(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_out, kernel_size, stride=stride, padding=padding, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class DilConv(nn.Module):
    def __init__(self, C_in, C_out, kernel_size, stride, padding, dilation, affine=True, groups=1):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, dilation=dilation,
                      groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, groups=groups, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class SepConv(nn.Module):
    """Two stacked depthwise-separable convolutions (the first one carries the stride)."""

    def __init__(self, C_in, C_out, kernel_size, stride, padding, affine=True, groups=1):
        super().__init__()
        self.op = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=stride, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_in, 1, groups=groups, bias=False),
            nn.BatchNorm2d(C_in, affine=affine),
            nn.ReLU(inplace=False),
            nn.Conv2d(C_in, C_in, kernel_size, stride=1, padding=padding, groups=C_in, bias=False),
            nn.Conv2d(C_in, C_out, 1, groups=groups, bias=False),
            nn.BatchNorm2d(C_out, affine=affine))

    def forward(self, x):
        return self.op(x)


class Identity(nn.Module):
    def forward(self, x):
        return x


class Zero(nn.Module):
    """The `none` op: zeros with the output shape of a stride-`stride` op."""

    def __init__(self, stride):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        if self.stride == 1:
            return x.mul(0.)
        return x[:, :, ::self.stride, ::self.stride].mul(0.)


class StridedPointwise(nn.Conv2d):
    """A 1x1 convolution of stride s, computed as the 1x1 convolution of every s-th pixel: the same numbers and
    parameters. PyTorch 2.14's channels-last CPU backward of a strided 1x1 convolution with few input channels
    corrupts memory (oneDNN; a segmentation fault from 64x64 inputs with 8 channels), the sliced one does not."""

    def __init__(self, C_in, C_out, stride, groups=1, bias=False):
        super().__init__(C_in, C_out, 1, stride=stride, groups=groups, bias=bias)

    def forward(self, x):
        return F.conv2d(x[:, :, ::self.stride[0], ::self.stride[1]], self.weight, self.bias, groups=self.groups)


class FactorizedReduce(nn.Module):
    """Halves the resolution with two offset 1x1 stride-2 convolutions, so no pixel is skipped."""

    def __init__(self, C_in, C_out, affine=True, groups=1):
        super().__init__()
        assert C_out % (2 * groups) == 0
        self.relu = nn.ReLU(inplace=False)
        self.conv_1 = StridedPointwise(C_in, C_out // 2, 2, groups)
        self.conv_2 = StridedPointwise(C_in, C_out // 2, 2, groups)
        self.bn = nn.BatchNorm2d(C_out, affine=affine)

    def forward(self, x):
        x = self.relu(x)
        groups = self.conv_1.groups
        even, odd = self.conv_1(x), self.conv_2(x[:, :, 1:, 1:])  # the second one sees x shifted by one pixel
        if groups == 1:  # cat keeps the memory format (channels-last) of its inputs
            return self.bn(torch.cat([even, odd], dim=1))
        # each copy's output is its own even half followed by its odd half
        return self.bn(torch.stack([even.unflatten(1, (groups, -1)), odd.unflatten(1, (groups, -1))], dim=2)
                       .flatten(1, 3))


def stem(C_out, stride=1):
    """The DARTS networks' stem: a 3x3 convolution of the RGB image and BatchNorm. Stride 1 in the released code:
    the first third of the network then runs at the input's full resolution; stride 2 quarters its cost."""
    return nn.Sequential(nn.Conv2d(3, C_out, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(C_out))


def reduction_cells(layers):
    """Indices of the two reduction cells, at 1/3 and 2/3 of the network (both DARTS networks)."""
    return layers // 3, 2 * layers // 3


def channel_shuffle(x, groups):
    """Interleave the `groups` blocks of the channel axis (dim -3): view as (groups, C / groups), swap, flatten."""
    return x.unflatten(-3, (groups, -1)).transpose(-4, -3).flatten(-4, -3)
