"""The field's strongest lightweight FER networks, built as their official code builds them (docs/baselines.md "DDAMFN"
and "EfficientFace"): the same modules under the same attribute names, so that a state dict's keys are the official
ones and the published checkpoints load strictly. The code is ours; what each module computes is the official one's.

- DDAMFN (Zhang et al., "A Dual-Direction Attention Mixed Feature Network for Facial Expression Recognition",
  Electronics 2023; github.com/SainingZhang/DDAMFN): MixedFeatureNet, a MobileFaceNet whose depthwise convolutions mix
  kernel sizes and carry coordinate attention, then two dual-direction attention heads, a global depthwise 7x7
  convolution and a linear classifier. 112x112 inputs; training adds the heads' attention loss.
- EfficientFace (Zhao et al., "Robust Lightweight Facial Expression Recognition Network with Label Distribution
  Training", AAAI 2021; github.com/zengqunzhao/EfficientFace): ShuffleNetV2-1.0x stages (torchvision's blocks, whose
  names the official code shares) with a local-feature branch and a channel-spatial modulator beside Stage 2.
  224x224 inputs.

Both refuse any other input size: their layers are cut for one (DDAMFN's kernels span its 7x7 map exactly,
EfficientFace cuts fixed 28x28 patches); recipes.py holds those sizes. baselines.create_model builds them (it imports
this module when called: this module imports baselines.py's FeaturesAndHead).
"""
import itertools
import sys
from collections import OrderedDict
from functools import reduce

import torch
import torch.nn as nn
import torch.nn.functional as F

import recipes
from baselines import FeaturesAndHead
from errors import UserError
from model import linear_class_maps


def check_image_size(name, image_size):
    """Refuse an input size that network `name` cannot take (recipes.image_size_problem), naming the one it needs."""
    problem = recipes.image_size_problem(name, image_size)
    if problem:
        raise UserError(problem)


def check_input(name, x):
    """The same for a batch: its height and width (a wrong input fails clearly, not deep inside a layer)."""
    for side in x.shape[-2:]:
        check_image_size(name, side)


# ==========================================================================================================
# DDAMFN: MixedFeatureNet and the dual-direction attention heads (4,187,421 parameters for 7 classes, of which 81,422
# are never used by the official forward: see DDAMNet)

DDAMFN_CHANNELS = 512  # MixedFeatureNet's last map: 512 x 7 x 7 at 112 px
DDAMFN_MAP = 7
DDAMFN_ATTENTION_WEIGHT = 0.1  # rafdb_train.py, affectnet_train.py: loss = CE + 0.1 * attention loss
COORDINATE_REDUCTION = 32  # coordinate attention's hidden width: max(8, channels // 32)


def face_conv(c_in, c_out, kernel=1, stride=1, padding=0, groups=1, prelu=True):
    """MobileFaceNet's convolution block: a convolution without bias, BatchNorm, and a PReLU per channel (the official
    Conv_block); without the PReLU its 'linear' block (Linear_block). Keys: conv.*, bn.*, prelu.*."""
    layers = OrderedDict(conv=nn.Conv2d(c_in, c_out, kernel, stride, padding, groups=groups, bias=False),
                         bn=nn.BatchNorm2d(c_out))
    if prelu:
        layers['prelu'] = nn.PReLU(c_out)
    return nn.Sequential(layers)


class MixedDepthwiseConv(nn.Module):
    """MixConv: the channels split into groups, each convolved depthwise with its own kernel size (padding k // 2),
    then concatenated. `bn` and `prelu` belong to the official module but its forward never applies them: they are
    kept, untrained, so that the official checkpoints load strictly."""

    def __init__(self, splits, kernels, stride):
        super().__init__()
        self.splits = list(splits)
        self.mixed_depthwise_conv = nn.ModuleList(
            nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False) for c, k in zip(splits, kernels))
        self.bn = nn.BatchNorm2d(sum(splits))  # unused (see the class)
        self.prelu = nn.PReLU(sum(splits))  # unused

    def forward(self, x):
        parts = x.split(self.splits, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.mixed_depthwise_conv, parts)], dim=1)


class CoordinateAttention(nn.Module):
    """Coordinate attention (Hou et al., CVPR 2021): the map average-pooled along each axis; both profiles through one
    1x1 convolution, BatchNorm and h-swish; then a sigmoid gate per row (conv2) and per column (conv3), which scale
    the input."""

    def __init__(self, channels):
        super().__init__()
        self.add_gates(channels)

    def add_gates(self, channels):
        hidden = max(8, channels // COORDINATE_REDUCTION)
        self.conv1 = nn.Conv2d(channels, hidden, 1)
        self.bn1 = nn.BatchNorm2d(hidden)
        self.conv2 = nn.Conv2d(hidden, channels, 1)
        self.conv3 = nn.Conv2d(hidden, channels, 1)
        self.relu = nn.Hardswish()  # the official h_swish, x * ReLU6(x + 3) / 6

    def gates(self, rows, columns):
        """(row gate N x C x H x 1, column gate N x C x 1 x W) from the row profile (N x C x H x 1) and the column
        profile (N x C x 1 x W)."""
        height = rows.shape[2]
        mixed = self.relu(self.bn1(self.conv1(torch.cat([rows, columns.transpose(2, 3)], dim=2))))
        mixed_rows, mixed_columns = mixed.split([height, mixed.shape[2] - height], dim=2)
        return torch.sigmoid(self.conv2(mixed_rows)), torch.sigmoid(self.conv3(mixed_columns)).transpose(2, 3)

    def forward(self, x):
        row_gate, column_gate = self.gates(x.mean(3, keepdim=True), x.mean(2, keepdim=True))
        return x * column_gate * row_gate


class DirectionalAttention(CoordinateAttention):
    """DDAMFN's dual-direction attention (the official head's CoordAtt): coordinate attention whose profiles are
    learned depthwise convolutions spanning the whole 7x7 map (Linear_h, 1x7: one value per row; Linear_w, 7x1: one
    per column), and which returns the attention map itself, N x C x 7 x 7. `Linear`, a 7x7 depthwise block, belongs
    to the official module but its forward never uses it: kept, untrained, so that checkpoints load strictly."""

    def __init__(self, channels, size=DDAMFN_MAP):
        nn.Module.__init__(self)  # the official order of the modules: the profiles, the gates, the unused block
        self.Linear_h = face_conv(channels, channels, (1, size), groups=channels, prelu=False)
        self.Linear_w = face_conv(channels, channels, (size, 1), groups=channels, prelu=False)
        self.add_gates(channels)
        self.Linear = face_conv(channels, channels, size, groups=channels, prelu=False)  # unused

    def forward(self, x):
        row_gate, column_gate = self.gates(self.Linear_h(x), self.Linear_w(x))
        return column_gate * row_gate


class AttentionHead(nn.Module):
    """One attention head (the official CoordAttHead, whose attention is its attribute `CoordAtt`)."""

    def __init__(self, channels):
        super().__init__()
        self.CoordAtt = DirectionalAttention(channels)

    def forward(self, x):
        return self.CoordAtt(x)


class MixedBlock(nn.Module):
    """MixedFeatureNet's inverted bottleneck (Mix_Depth_Wise): a 1x1 expansion (conv, BN, PReLU), a mixed depthwise
    convolution (strided in a downsampling block), coordinate attention, a 1x1 projection (conv, BN); plus the input
    where the block keeps the shape (residual)."""

    def __init__(self, c_in, c_out, expanded, kernels, splits, stride=1, residual=False):
        super().__init__()
        self.conv = face_conv(c_in, expanded)
        self.conv_dw = MixedDepthwiseConv(splits, kernels, stride)
        self.CA = CoordinateAttention(expanded)
        self.project = face_conv(expanded, c_out, prelu=False)
        self.residual = residual

    def forward(self, x):
        out = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + out if self.residual else out


class MixedStage(nn.Module):
    """Residual mixed blocks at one width (Mix_Residual; its blocks are `model`)."""

    def __init__(self, channels, blocks, expanded, kernels, splits):
        super().__init__()
        self.model = nn.Sequential(*(MixedBlock(channels, channels, expanded, kernels, splits, residual=True)
                                     for _ in range(blocks)))

    def forward(self, x):
        return self.model(x)


# MixedFeatureNet's modules up to conv_6_sep, in order: what DDAMNet keeps of it as `features` (features.0 is conv1).
# Its face-recognition head (conv_6_dw, a 7x7 depthwise block; linear, to a 256-d embedding; bn) is not kept.
MIXED_FEATURE_NET = ('conv1', 'conv2_dw', 'conv_23', 'conv_3', 'conv_34', 'conv_4', 'conv_45', 'conv_5', 'conv_6_sep')
# The classes of the official module (networks/MixedFeatureNet.py): MFN_msceleb.pth pickles the network whole, and
# the loader rebuilds only these (and torch.nn's layers) from it, as inert holders of their weights.
MIXED_FEATURE_NET_CLASSES = frozenset({'MixedFeatureNet', 'Conv_block', 'Linear_block', 'Depth_Wise', 'Residual',
                                       'Mix_Depth_Wise', 'Mix_Residual', 'MDConv', 'CoordAtt', 'h_swish',
                                       'h_sigmoid', 'swish', 'Swish', 'Flatten'})


def mixed_feature_net():
    """MixedFeatureNet up to its last 1x1 convolution: 112 -> 56 (conv1) -> 28 (conv_23) -> 14 (conv_34) -> 7
    (conv_45), 512 channels. Each mixed block: (in, out, expanded width, kernel sizes, channels per kernel)."""
    return nn.Sequential(
        face_conv(3, 64, 3, 2, 1),
        face_conv(64, 64, 3, 1, 1, groups=64),
        MixedBlock(64, 64, 128, (3, 5, 7), (64, 32, 32), stride=2),
        MixedStage(64, 9, 128, (3, 5), (96, 32)),
        MixedBlock(64, 128, 256, (3, 5, 7), (128, 64, 64), stride=2),
        MixedStage(128, 16, 256, (3, 5), (192, 64)),
        MixedBlock(128, 256, 1024, (3, 5, 7, 9), (256, 256, 256, 256), stride=2),
        MixedStage(256, 6, 512, (3, 5, 7), (172, 170, 170)),
        face_conv(256, DDAMFN_CHANNELS))


def attention_loss(maps):
    """DDAMFN's attention loss: the number of pairs of heads over the sum of their maps' mean squared differences
    (plus machine epsilon, as the official AttentionLoss), large where the heads attend alike; 0 for one head."""
    pairs = list(itertools.combinations(maps, 2))
    if not pairs:
        return maps[0].new_zeros((), dtype=torch.float32)
    return len(pairs) / (sum(F.mse_loss(a.float(), b.float()) for a, b in pairs) + sys.float_info.epsilon)


class DDAMNet(FeaturesAndHead):
    """DDAMFN: MixedFeatureNet's features (512 x 7 x 7), weighted by the element-wise maximum of the heads' attention
    maps, pooled by a global depthwise 7x7 convolution with BatchNorm (`Linear`), then a linear classifier (`fc`).

    Training mode returns (logits, attention_weight x attention loss), a 0-dim loss term that noise.CrossEntropy adds
    to the cross-entropy; eval mode the logits. forward_head gives the logits alone (the label-noise methods add no
    attention loss).

    Three parts of the official network are never used by its forward, 81,422 parameters in all: the BatchNorm and
    PReLU of each mixed depthwise convolution (29,184), each head's 7x7 block (2 x 26,112) and the BatchNorm1d after
    the classifier (`bn`, 14 for 7 classes). They are kept so that the official checkpoints load strictly;
    unused_parameters() names them, and runs leave them out of their parameter counts (4,105,999 for 7 classes)."""
    # the keys of its own that a face-recognition checkpoint (MFN_msceleb.pth) cannot hold: they start anew
    FACE_HEADS = ('cat_head', 'Linear.', 'fc.', 'bn.')
    PICKLED_CLASSES = MIXED_FEATURE_NET_CLASSES

    def __init__(self, num_classes, num_head=2, attention_weight=DDAMFN_ATTENTION_WEIGHT):
        super().__init__()
        self.features = mixed_feature_net()
        self.num_head = num_head
        for i in range(num_head):
            setattr(self, f'cat_head{i}', AttentionHead(DDAMFN_CHANNELS))
        self.Linear = face_conv(DDAMFN_CHANNELS, DDAMFN_CHANNELS, DDAMFN_MAP, groups=DDAMFN_CHANNELS, prelu=False)
        self.fc = nn.Linear(DDAMFN_CHANNELS, num_classes)
        self.bn = nn.BatchNorm1d(num_classes)  # unused (see the class)
        self.attention_weight = attention_weight

    def forward_features(self, x):
        check_input('ddamfn', x)
        return self.features(x)

    def attention_maps(self, features):
        return [getattr(self, f'cat_head{i}')(features) for i in range(self.num_head)]

    def classify(self, features, maps):
        return self.fc(self.Linear(features * reduce(torch.maximum, maps)).flatten(1))

    def forward_head(self, features):
        return self.classify(features, self.attention_maps(features))

    def forward(self, x):
        features = self.forward_features(x)
        maps = self.attention_maps(features)
        logits = self.classify(features, maps)
        if not self.training:
            return logits
        return logits, self.attention_weight * attention_loss(maps)

    def unused_parameters(self):
        """The official parameters its forward never uses (see the class)."""
        unused = [self.bn.weight, self.bn.bias]
        for module in self.modules():
            if isinstance(module, MixedDepthwiseConv):
                unused += [*module.bn.parameters(), *module.prelu.parameters()]
            elif isinstance(module, DirectionalAttention):
                unused += list(module.Linear.parameters())
        return unused

    @staticmethod
    def face_checkpoint_name(key):
        """Our name of a key of a face-recognition checkpoint: MixedFeatureNet's modules (MFN_msceleb.pth) sit under
        features.N; a key already under features. (a DDAMFN state dict) is ours; any other has no place (None)."""
        module, _, rest = key.partition('.')
        if module in MIXED_FEATURE_NET:
            return f'features.{MIXED_FEATURE_NET.index(module)}.{rest}'
        return key if module == 'features' else None


def ddamfn(num_classes, image_size=recipes.MODELS['ddamfn'].fixed_image_size, num_head=2,
           attention_weight=DDAMFN_ATTENTION_WEIGHT):
    check_image_size('ddamfn', image_size)
    return DDAMNet(num_classes, num_head, attention_weight)


# ==========================================================================================================
# EfficientFace: 1,275,293 parameters for 7 classes

EFFICIENTFACE_WIDTHS = (29, 116, 232, 464, 1024)  # conv1, Stages 2-4, conv5 (the official efficient_face())
EFFICIENTFACE_REPEATS = (4, 8, 4)
LOCAL_PATCH = 28  # the local branch's patches of the 56x56 map after the stem
MODULATOR_REDUCTION, MODULATOR_DILATION = 16, 4


class LocalFeatures(nn.Module):
    """EfficientFace's local-feature extractor: the stem's 56x56 map cut into four 28x28 patches (top-left,
    bottom-left, top-right, bottom-right: branches 1 to 4), each through a strided depthwise 3x3 convolution (each
    input channel to 4 outputs), BN, ReLU, a depthwise 3x3 convolution, BN, ReLU; the four results put back in place
    (28x28, Stage 2's map)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        self.relu = nn.ReLU()
        for k in range(1, 5):
            setattr(self, f'conv{k}_1', nn.Conv2d(c_in, c_out, 3, 2, 1, groups=c_in, bias=False))
            setattr(self, f'bn{k}_1', nn.BatchNorm2d(c_out))
            setattr(self, f'conv{k}_2', nn.Conv2d(c_out, c_out, 3, 1, 1, groups=c_out, bias=False))
            setattr(self, f'bn{k}_2', nn.BatchNorm2d(c_out))

    def branch(self, k, patch):
        x = self.relu(getattr(self, f'bn{k}_1')(getattr(self, f'conv{k}_1')(patch)))
        return self.relu(getattr(self, f'bn{k}_2')(getattr(self, f'conv{k}_2')(x)))

    def forward(self, x):
        p = LOCAL_PATCH
        left = torch.cat([self.branch(1, x[:, :, :p, :p]), self.branch(2, x[:, :, p:2 * p, :p])], dim=2)
        right = torch.cat([self.branch(3, x[:, :, :p, p:2 * p]), self.branch(4, x[:, :, p:2 * p, p:2 * p])], dim=2)
        return torch.cat([left, right], dim=3)


class ChannelGate(nn.Module):
    """BAM's channel attention: the pooled channels through Linear, BatchNorm1d, ReLU, Linear (reduction 16)."""

    def __init__(self, channels, reduction=MODULATOR_REDUCTION):
        super().__init__()
        hidden = channels // reduction
        self.gate_c = nn.Sequential(OrderedDict(
            gate_c_fc_0=nn.Linear(channels, hidden), gate_c_bn_1=nn.BatchNorm1d(hidden), gate_c_relu_1=nn.ReLU(),
            gate_c_fc_final=nn.Linear(hidden, channels)))

    def forward(self, x):
        return self.gate_c(x.mean((2, 3)))[:, :, None, None]


class SpatialGate(nn.Module):
    """BAM's spatial attention: 1x1 reduction, two dilated 3x3 convolutions (dilation 4), each with BN and ReLU,
    then a 1x1 convolution to one map."""

    def __init__(self, channels, reduction=MODULATOR_REDUCTION, dilation=MODULATOR_DILATION, convolutions=2):
        super().__init__()
        hidden = channels // reduction
        layers = OrderedDict(gate_s_conv_reduce0=nn.Conv2d(channels, hidden, 1),
                             gate_s_bn_reduce0=nn.BatchNorm2d(hidden), gate_s_relu_reduce0=nn.ReLU())
        for i in range(convolutions):
            layers[f'gate_s_conv_di_{i}'] = nn.Conv2d(hidden, hidden, 3, padding=dilation, dilation=dilation)
            layers[f'gate_s_bn_di_{i}'] = nn.BatchNorm2d(hidden)
            layers[f'gate_s_relu_di_{i}'] = nn.ReLU()
        layers['gate_s_conv_final'] = nn.Conv2d(hidden, 1, 1)
        self.gate_s = nn.Sequential(layers)

    def forward(self, x):
        return self.gate_s(x)


class Modulator(nn.Module):
    """EfficientFace's modulator: the input scaled by sigmoid(channel gate x spatial gate) (BAM's two gates, combined
    by a product where BAM adds them)."""

    def __init__(self, channels):
        super().__init__()
        self.channel_att = ChannelGate(channels)
        self.spatial_att = SpatialGate(channels)

    def forward(self, x):
        return torch.sigmoid(self.channel_att(x) * self.spatial_att(x)) * x


class EfficientFace(FeaturesAndHead):
    """EfficientFace: a 3x3 stride-2 stem of 29 channels and max-pooling (56x56 at 224 px); Stage 2's output, scaled
    by the modulator, plus the local branch on the stem's map; Stages 3 and 4; a 1x1 convolution to 1024 channels
    (the features, 7x7); global average pooling and a linear classifier. The stages are torchvision's ShuffleNetV2
    blocks, which have the official module names."""

    def __init__(self, num_classes):
        super().__init__()
        from torchvision.models.shufflenetv2 import InvertedResidual  # here: importing torchvision takes a second
        stem, *stages, last = EFFICIENTFACE_WIDTHS
        self.conv1 = nn.Sequential(nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True))
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        for i, (c_in, c_out, repeats) in enumerate(zip((stem, *stages), stages, EFFICIENTFACE_REPEATS)):
            setattr(self, f'stage{i + 2}', nn.Sequential(
                InvertedResidual(c_in, c_out, 2), *(InvertedResidual(c_out, c_out, 1) for _ in range(repeats - 1))))
        self.local = LocalFeatures(stem, stages[0])
        self.modulator = Modulator(stages[0])
        self.conv5 = nn.Sequential(nn.Conv2d(stages[-1], last, 1, bias=False), nn.BatchNorm2d(last),
                                   nn.ReLU(inplace=True))
        self.fc = nn.Linear(last, num_classes)

    def forward_features(self, x):
        check_input('efficientface', x)
        x = self.maxpool(self.conv1(x))
        x = self.modulator(self.stage2(x)) + self.local(x)
        return self.conv5(self.stage4(self.stage3(x)))

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        return linear_class_maps(self.fc, features, detach_weights)  # one weight per channel: its mirror is itself


def efficientface(num_classes, image_size=recipes.MODELS['efficientface'].fixed_image_size):
    check_image_size('efficientface', image_size)
    return EfficientFace(num_classes)


# ==========================================================================================================
# EfficientFace's label distribution generator (LDG): its training's teacher

# The input statistics of EfficientFace's code (main.py, test&vis/test.py), which its teacher saw; RAF-DB's elsewhere.
EFFICIENTFACE_STATISTICS = {'rafdb': ((0.57535914, 0.44928582, 0.40079932), (0.20735591, 0.18981615, 0.18132027)),
                            'affectnet': ((0.55391484, 0.43522123, 0.3821877), (0.24837189, 0.21625527, 0.20221159))}
RESNETS = {('BasicBlock', (2, 2, 2, 2)): 'resnet18', ('BasicBlock', (3, 4, 6, 3)): 'resnet34',
           ('Bottleneck', (3, 4, 6, 3)): 'resnet50', ('Bottleneck', (3, 4, 23, 3)): 'resnet101'}


def resnet_of(state, path):
    """The torchvision ResNet whose state dict `state` is (its depth read from its keys), with its classifier."""
    import torchvision  # here: importing it takes a second
    blocks = tuple(len({k.split('.')[1] for k in state if k.startswith(f'layer{i}.')}) for i in range(1, 5))
    kind = 'Bottleneck' if 'layer1.0.conv3.weight' in state else 'BasicBlock'
    if (kind, blocks) not in RESNETS or 'fc.weight' not in state:
        raise UserError(f'--efficientface_teacher: {path} holds no torchvision ResNet-18/34/50/101 with its '
                        f'classifier (the label distribution generator is a ResNet-50: Pretrained_LDG.tar)')
    return getattr(torchvision.models, RESNETS[(kind, blocks)])(num_classes=state['fc.weight'].shape[0])


class LabelDistributionGenerator:
    """EfficientFace's label distribution generator: a frozen ResNet (a ResNet-50 fine-tuned on the FER dataset,
    Pretrained_LDG.tar) whose softmax over each training image, as augmented, is the image's target; the loss is
    the official cross_entropy, the mean over the batch and the classes of -p log q (so the cross-entropy with p
    divided by the number of classes), and the hard labels are not used. It sees the images renormalised to the
    statistics of EfficientFace's code (EFFICIENTFACE_STATISTICS), as its main.py fed it.

    It takes the place of Mixup/CutMix in noise.CrossEntropy (the `mixer`: called with a batch, it gives the batch and
    its targets), outside the step that --compile compiles; its weights are no part of the run's network."""

    def __init__(self, path, num_classes, dataset, device):
        import baselines
        import data_loader
        state = baselines.face_checkpoint_state(None, path, '--efficientface_teacher: ')
        self.network = resnet_of(state, path)
        self.network.load_state_dict(state)
        if self.network.fc.out_features != num_classes:
            raise UserError(f'--efficientface_teacher: {path} classifies {self.network.fc.out_features} classes and '
                            f'the dataset has {num_classes}: give the generator fine-tuned on this dataset')
        self.network.eval().requires_grad_(False).to(device)
        self.num_classes, self.path = num_classes, path
        mean, std = EFFICIENTFACE_STATISTICS.get(dataset, EFFICIENTFACE_STATISTICS['rafdb'])
        ours_mean, ours_std = torch.tensor(data_loader.IMAGENET_MEAN), torch.tensor(data_loader.IMAGENET_STD)
        # x (ImageNet statistics) -> x * scale + shift (the official ones)
        self.scale = (ours_std / torch.tensor(std)).view(1, 3, 1, 1).to(device)
        self.shift = ((ours_mean - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1).to(device)

    def describe(self):
        return (f'label distribution generator: {type(self.network).__name__} {self.path} '
                f'({sum(p.numel() for p in self.network.parameters()):,} parameters, frozen)')

    def set_epoch(self, epoch, rank=0):
        pass

    def __call__(self, x, y):
        with torch.no_grad():
            probabilities = torch.softmax(self.network(x * self.scale + self.shift).float(), dim=1)
        return x, probabilities / self.num_classes
