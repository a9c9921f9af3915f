"""The networks train.py trains, built by one factory (timm's convention): create_model(name, num_classes, **options).

`gla_fernet` is the discrete DARTS-family network of a genotype (model.py, paper Sec. 3.4). The others are the
hand-designed FER networks GLA-FERNet is compared with, as docs/baselines.md describes them: FGW-FER (Dinh et al. 2023,
Sec. 3), ShuffleNetV2-1.0x (torchvision), RLR-CNet (Mou et al. 2023, Sec. 3.2-3.4) and CoRes-SE (Pourasghari Haghi
2025, its notebook); DDAMFN and EfficientFace, built as their official code builds them, are frontier.py's. They hold
no I/O: load_pretrained is the one function that reads weight files (and face_checkpoint_state the files of the face
networks' code).
"""
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

import model
import recipes
import run_folder
from model import linear_class_maps
from errors import UserError
from operations import StridedPointwise, channel_shuffle


def gla_fernet(num_classes, genotype, init_channels=36, layers=8, auxiliary=False, image_size=48, stem_stride=1,
               stem_multiplier=3):
    """The discrete network of a genotype (GLA-FERNet's released one by default in train.py)."""
    return model.Network(init_channels, num_classes, layers, auxiliary, genotype, stem_multiplier, image_size,
                         stem_stride)


# ==========================================================================================================
# FGW-FER (docs/baselines.md "FGW-FER"): mini-Xception layout with CBAM; 64,176 parameters for 7 classes

CBAM_REDUCTION = 8  # not stated in the paper; r = 8 with biases is what reproduces its 64,176 parameters
FGW_WIDTHS = (16, 32, 64, 128)


class ChannelAttention(nn.Module):
    """CBAM's channel attention: one MLP over the average- and the max-pooled descriptors, summed, sigmoid."""

    def __init__(self, channels, reduction=CBAM_REDUCTION):
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.mlp = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))

    def forward(self, x):
        gate = self.mlp(x.mean((2, 3))) + self.mlp(x.amax((2, 3)))
        return x * torch.sigmoid(gate)[:, :, None, None]


class SpatialAttention(nn.Module):
    """CBAM's spatial attention: a 7x7 convolution (no bias) over the channel-wise mean and max maps, sigmoid."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, 7, padding=3, bias=False)

    def forward(self, x):
        pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return x * torch.sigmoid(self.conv(pooled))


def cbam(channels):
    return nn.Sequential(ChannelAttention(channels), SpatialAttention())


def separable_conv(c_in, c_out):
    """Depthwise 3x3 then pointwise 1x1, both with biases (PyTorch's defaults, which the paper's count implies)."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, padding=1, groups=c_in), nn.Conv2d(c_in, c_out, 1))


class FGWBlock(nn.Module):
    """Residual block: conv -> BN -> ReLU -> conv -> BN -> max-pool -> CBAM, plus a strided 1x1 projection."""

    def __init__(self, c_in, c_out, all_conv=False):
        super().__init__()
        conv = (lambda i, o: nn.Conv2d(i, o, 3, padding=1)) if all_conv else separable_conv
        self.shortcut = nn.Sequential(StridedPointwise(c_in, c_out, 2), nn.BatchNorm2d(c_out))
        self.main = nn.Sequential(conv(c_in, c_out), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
                                  conv(c_out, c_out), nn.BatchNorm2d(c_out),
                                  nn.MaxPool2d(3, stride=2, padding=1), cbam(c_out))

    def forward(self, x):
        return self.main(x) + self.shortcut(x)


class FeaturesAndHead(nn.Module):
    """A network split as timm splits its models: forward(x) = forward_head(forward_features(x)), the features the last
    feature map (N x C x H x W) and the head its pooling and classifier. The noise-robust training methods and the
    class activation maps use the two halves."""

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class FGWFER(FeaturesAndHead):
    """FGW-FER: two 3x3 convolutions and CBAM, four residual blocks of widths 16-128, a 3x3 convolution to the
    classes and global average pooling. all_conv: the paper's ablation, each separable convolution a 3x3 one."""

    def __init__(self, num_classes, all_conv=False, dropout=0.5, stem_width=8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, stem_width, 3, padding=1), nn.BatchNorm2d(stem_width),
                                  nn.ReLU(inplace=True), nn.Conv2d(stem_width, stem_width, 3, padding=1),
                                  nn.BatchNorm2d(stem_width), nn.ReLU(inplace=True), cbam(stem_width))
        widths = (stem_width,) + FGW_WIDTHS
        self.blocks = nn.Sequential(*(FGWBlock(c_in, c_out, all_conv) for c_in, c_out in zip(widths, widths[1:])))
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Conv2d(widths[-1], num_classes, 3, padding=1))
        for m in self.modules():  # the paper's initialisation (Sec. 4.2)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity='relu')
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.05)
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward_features(self, x):
        return self.blocks(self.stem(x))

    def forward_head(self, features):
        return self.head(features).mean((2, 3))

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        """The head's 3x3 convolution to the classes, before its pooling, without its bias (CAM). mirrored: with the
        kernel mirrored left to right, so that the maps of a mirror image, flipped back, are the image's own maps
        wherever the features mirror too (EAC's consistency)."""
        conv = self.head[1]
        weight = conv.weight.detach() if detach_weights else conv.weight
        return F.conv2d(features, weight.flip(-1) if mirrored else weight, padding=conv.padding)


def fgw_fer(num_classes, all_conv=False, dropout=0.5):
    return FGWFER(num_classes, all_conv, dropout)


# ==========================================================================================================
# ShuffleNetV2-1.0x (torchvision), RLR-CNet's baseline: 1,260,779 parameters, 1,244,592 conv+FC weights

class TorchvisionNetwork(FeaturesAndHead):
    """A torchvision classification network with torchvision's module names (its ImageNet weights load as they are),
    split into features and head (pooling, then the Linear `fc`)."""

    def __init__(self, network):
        super().__init__()
        for name, module in network.named_children():
            self.add_module(name, module)

    def forward_head(self, features):
        return self.fc(features.mean((2, 3)))

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        return linear_class_maps(self.fc, features, detach_weights)  # a 1x1 map: its mirror is itself


class ShuffleNetV2(TorchvisionNetwork):
    def forward_features(self, x):
        return self.conv5(self.stage4(self.stage3(self.stage2(self.maxpool(self.conv1(x))))))


def shufflenet_v2(num_classes):
    import torchvision  # here, not at the top: importing it takes a second (it loads torch._dynamo)
    return ShuffleNetV2(torchvision.models.shufflenet_v2_x1_0(num_classes=num_classes))


# ==========================================================================================================
# ResNet-18 (torchvision), the backbone of the noisy-label FER methods (noise.py): 11,180,103 parameters for 7 classes

class ResNet(TorchvisionNetwork):
    def forward_features(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet18(num_classes):
    import torchvision  # see shufflenet_v2
    return ResNet(torchvision.models.resnet18(num_classes=num_classes))


# ==========================================================================================================
# RLR-CNet (docs/baselines.md "RLR-CNet"): Clip_K5 ShuffleNetV2 with beta-Mish, Shuffle Attention and two BBN branches

BETA_MISH_ALPHA, BETA_MISH_BETA = 7.0, 35.0  # RLR-CNet Eq. 5
SHUFFLE_ATTENTION_GROUPS = 2  # G must divide 116 / 2; SA-Net's usual 8 or 64 do not
SHUFFLENET_STAGES = ((116, 4), (232, 8), (464, 4))  # 1.0x: output channels and blocks per stage
SHUFFLENET_STEM, SHUFFLENET_LAST = 24, 1024


class BetaMish(nn.Module):
    """beta-Mish (RLR-CNet Eq. 5): x * tanh(softplus(alpha x / sqrt(beta + x^2))); no parameters."""

    def forward(self, x):
        return x * torch.tanh(F.softplus(BETA_MISH_ALPHA * x * torch.rsqrt(BETA_MISH_BETA + x * x)))


def conv_bn(c_in, c_out, kernel_size=1, stride=1, groups=1, activation=None):
    layers = [nn.Conv2d(c_in, c_out, kernel_size, stride, kernel_size // 2, groups=groups, bias=False),
              nn.BatchNorm2d(c_out)]
    return nn.Sequential(*layers, activation) if activation is not None else nn.Sequential(*layers)


class ClipK5Block(nn.Module):
    """A ShuffleNetV2 unit without the 1x1 convolution after the depthwise one, with 5x5 depthwise kernels.

    Stride 1: half of the channels pass, the other half go 1x1 -> BN -> beta-Mish -> 5x5 DW -> BN. Stride 2: both
    branches see the whole input (branch 1: 5x5 DW stride 2 -> BN -> 1x1 -> BN -> beta-Mish). Then channel shuffle."""

    def __init__(self, c_in, c_out, stride):
        super().__init__()
        half = c_out // 2
        self.stride = stride
        if stride > 1:
            self.branch1 = nn.Sequential(conv_bn(c_in, c_in, 5, stride, groups=c_in),
                                         conv_bn(c_in, half, activation=BetaMish()))
        branch_in = c_in if stride > 1 else half
        self.branch2 = nn.Sequential(conv_bn(branch_in, half, activation=BetaMish()),
                                     conv_bn(half, half, 5, stride, groups=half))

    def forward(self, x):
        if self.stride == 1:
            kept, processed = x.chunk(2, dim=1)
            out = torch.cat([kept, self.branch2(processed)], 1)
        else:
            out = torch.cat([self.branch1(x), self.branch2(x)], 1)
        return channel_shuffle(out, 2)


class ShuffleAttention(nn.Module):
    """SA-Net's Shuffle Attention: per group of channels, a channel gate on one half and a GroupNorm-based spatial
    gate on the other, then a 2-group channel shuffle. 3C/G parameters; the output has the input's shape."""

    def __init__(self, channels, groups=SHUFFLE_ATTENTION_GROUPS):
        super().__init__()
        if channels % (2 * groups):
            raise UserError(f'Shuffle Attention with {groups} groups needs a channel count divisible by '
                            f'{2 * groups}, got {channels}')
        self.groups = groups
        half = channels // (2 * groups)
        shape = (1, half, 1, 1)
        self.channel_weight = nn.Parameter(torch.zeros(shape))
        self.channel_bias = nn.Parameter(torch.ones(shape))
        self.spatial_weight = nn.Parameter(torch.zeros(shape))
        self.spatial_bias = nn.Parameter(torch.ones(shape))
        self.norm = nn.GroupNorm(half, half)

    def forward(self, x):
        b, c, h, w = x.shape
        channel_half, spatial_half = x.reshape(b * self.groups, c // self.groups, h, w).chunk(2, dim=1)
        channel_gate = self.channel_weight * channel_half.mean((2, 3), keepdim=True) + self.channel_bias
        spatial_gate = self.spatial_weight * self.norm(spatial_half) + self.spatial_bias
        out = torch.cat([channel_half * torch.sigmoid(channel_gate), spatial_half * torch.sigmoid(spatial_gate)], 1)
        return channel_shuffle(out.reshape(b, c, h, w), 2)


def shufflenet_stage(c_in, c_out, blocks):
    return [ClipK5Block(c_in, c_out, 2)] + [ClipK5Block(c_out, c_out, 1) for _ in range(blocks - 1)]


class RLRCNet(FeaturesAndHead):
    """RLR-CNet: a shared trunk, two branches and one linear layer over both branches' pooled features.

    split='bbn' (our reading, docs/baselines.md "RLR-CNet"; 1,027,457 parameters): the branches are two copies of Stage 4's
    last block, followed by one shared conv5. split='literal' (the paper's text, 1,746,849): each branch is a copy
    of all of Stage 4 and conv5. Training: forward(x, x_reversed, alpha) gives W [alpha f1(x); (1 - alpha)
    f2(x_reversed)] + b; inference: forward(x) computes the trunk once and gives W1 f1(x) + W2 f2(x) + b (BBN's
    rule: alpha = 1/2, doubled). mish='all' also replaces the ReLU of conv1 and conv5 (default: inside blocks only)."""

    def __init__(self, num_classes, split='bbn', mish='blocks'):
        super().__init__()
        activation = BetaMish if mish == 'all' else lambda: nn.ReLU(inplace=True)
        (c2, n2), (c3, n3), (c4, n4) = SHUFFLENET_STAGES
        stage4 = shufflenet_stage(c3, c4, n4)
        shared_stage4 = stage4[:-1] if split == 'bbn' else []
        self.trunk = nn.Sequential(
            conv_bn(3, SHUFFLENET_STEM, 3, 2, activation=activation()), nn.MaxPool2d(3, 2, 1),
            *shufflenet_stage(SHUFFLENET_STEM, c2, n2), ShuffleAttention(c2), *shufflenet_stage(c2, c3, n3),
            *shared_stage4)
        conv5 = lambda: conv_bn(c4, SHUFFLENET_LAST, activation=activation())
        if split == 'bbn':
            self.branch1, self.branch2 = stage4[-1], ClipK5Block(c4, c4, 1)
            self.conv5 = conv5()
        else:
            self.branch1 = nn.Sequential(*stage4, conv5())
            self.branch2 = nn.Sequential(*shufflenet_stage(c3, c4, n4), conv5())
            self.conv5 = nn.Identity()
        self.classifier = nn.Linear(2 * SHUFFLENET_LAST, num_classes)

    def branch_features(self, branch, trunk_output):
        return self.conv5(branch(trunk_output)).mean((2, 3))

    def forward_features(self, x):
        """Inference's features: both branches' maps on one trunk pass, concatenated (2048 channels)."""
        shared = self.trunk(x)
        return torch.cat([self.conv5(self.branch1(shared)), self.conv5(self.branch2(shared))], 1)

    def forward_head(self, features):
        return self.classifier(features.mean((2, 3)))

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        return linear_class_maps(self.classifier, features, detach_weights)  # a 1x1 map: its mirror is itself

    def forward(self, x, x_reversed=None, alpha=0.5):
        if x_reversed is None:
            return super().forward(x)
        f1 = self.branch_features(self.branch1, self.trunk(x))
        f2 = self.branch_features(self.branch2, self.trunk(x_reversed))
        return self.classifier(torch.cat([alpha * f1, (1 - alpha) * f2], 1))


def rlr_cnet(num_classes, split='bbn', mish='blocks'):
    return RLRCNet(num_classes, split, mish)


def cumulative_alpha(epoch, epochs):
    """BBN's cumulative-learning weight of the uniform branch, alpha = 1 - (T / T_max)^2 (RLR-CNet Eq. 8), for the
    0-based epoch T of T_max epochs: 1 at the start, 0.75 halfway, near 0 at the end."""
    return 1 - (epoch / epochs) ** 2


# ==========================================================================================================
# CoRes-SE (docs/baselines.md "CoRes-SE"): ImageNet ResNet-50 and ConvNeXt-Tiny features, an SE gate, an MLP head

CORES_SE_REDUCTION, CORES_SE_HIDDEN = 16, 512


class CoResSE(FeaturesAndHead):
    """Concatenated pooled features of ResNet-50 (2048) and ConvNeXt-Tiny (768, without its head's LayerNorm),
    gated by a squeeze-and-excitation MLP, then Linear 2816->512, ReLU, Dropout, Linear 512->classes.

    Its two backbones' last maps differ in size at most input sizes (7x7 both at 224 px only), so its features are the
    pooled 2816 channels, as a 1 x 1 map: no class activation map.

    gate='sample' (default) gates each image by its own features; gate='batch' is the notebook's gate, computed
    from the mean over the batch, so that an image's prediction depends on the other images of its batch."""

    def __init__(self, num_classes, gate='sample', dropout=0.5):
        super().__init__()
        import torchvision  # see shufflenet_v2
        self.resnet = torchvision.models.resnet50()
        self.resnet.fc = nn.Identity()
        self.convnext = torchvision.models.convnext_tiny()
        self.convnext.classifier = nn.Identity()  # leaves its average pooling: the notebook's spatial mean
        features = 2048 + 768
        self.gate = gate
        self.se = nn.Sequential(nn.Linear(features, features // CORES_SE_REDUCTION, bias=False), nn.ReLU(inplace=True),
                                nn.Linear(features // CORES_SE_REDUCTION, features, bias=False), nn.Sigmoid())
        self.classifier = nn.Sequential(nn.Linear(features, CORES_SE_HIDDEN), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(CORES_SE_HIDDEN, num_classes))

    def forward_features(self, x):
        return torch.cat([self.resnet(x), self.convnext(x).flatten(1)], 1)[:, :, None, None]

    def forward_head(self, features):
        features = features.flatten(1)
        squeezed = features.mean(0, keepdim=True) if self.gate == 'batch' else features
        return self.classifier(features * self.se(squeezed))


def cores_se(num_classes, gate='sample', dropout=0.5):
    return CoResSE(num_classes, gate, dropout)


# ==========================================================================================================
# The factory

def create_model(name, num_classes, **options):
    """The network `name` of recipes.MODELS for `num_classes` classes; options are its constructor's keyword
    arguments. The constructor is the function of the model's name in this module or in frontier.py (DDAMFN,
    EfficientFace)."""
    if name not in recipes.MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(recipes.MODELS)}")
    import frontier  # here, not at the top: it builds on this module's FeaturesAndHead
    constructor = globals()[name] if name in globals() else getattr(frontier, name)
    return constructor(num_classes, **options)


def uses_genotype(name):
    """Whether model `name` is built from a genotype (a searched cell), so that its genotype tells runs apart."""
    return name in recipes.MODELS and recipes.MODELS[name].genotype


def model_options(args, genotype=None):
    """create_model's options for a train.py run, from its arguments (args.json): how predict.py and benchmark.py
    rebuild the exact network a run trained (cli.resumed_args gives flags added since a run started their defaults)."""
    if args.model not in recipes.MODELS:
        raise UserError(f"unknown model {args.model!r}; choose one of {', '.join(recipes.MODELS)}")
    options = {option: getattr(args, flag) for option, flag in recipes.MODELS[args.model].options.items()}
    return {**options, 'genotype': genotype} if uses_genotype(args.model) else options


# ==========================================================================================================
# ImageNet weights of the backbones (never part of a run's checkpoint: that holds the trained network)

# The torchvision weights each model's backbones start from: (attribute of the model or '' for the model itself,
# weights); a folder given to --pretrained holds their files under torchvision's names.
def pretrained_weights(name):
    """[(attribute of the model or '' for the model itself, torchvision weights)] of model `name` (recipes.MODELS)."""
    import torchvision  # see shufflenet_v2
    result = []
    for attribute, weights in recipes.MODELS[name].pretrained:
        enum, member = weights.split('.')
        result.append((attribute, getattr(getattr(torchvision.models, enum), member)))
    return result

IMAGENET_HEADS = ('fc.', 'classifier.')  # ImageNet classifiers, which the FER networks replace


def pretrained_file_names(name):
    return [os.path.basename(weights.url) for _, weights in pretrained_weights(name)]


def mismatched(own, state):
    """The keys of a network's state dict `own` that the file's `state` lacks or holds in another shape. BatchNorm's
    num_batches_tracked may be missing: files saved before torch 0.4.1 (older torchvision and face-recognition
    weights) lack it, and torch's BatchNorm loads them as it does, counting from 0."""
    return [k for k in own if (k in state and state[k].shape != own[k].shape) or
            (k not in state and k.rsplit('.', 1)[-1] != 'num_batches_tracked')]


class PickledModule(nn.Module):
    """What a class of a network pickled whole becomes when its file is read (run_folder.load_file's stand_in): an
    inert holder of the module's parameters, buffers and submodules; none of the file's code runs."""

    def forward(self, *args):
        raise TypeError('a network read from a pickled file only holds its weights')


def face_checkpoint_state(network, path, context='--pretrained: '):
    """The state dict in a checkpoint file of the face networks' code: a state dict, or a dict holding one under
    'state_dict' or 'model_state_dict', or a network pickled whole (DDAMFN's MFN_msceleb.pth), whose classes are read
    as PickledModule where `network` names them (PICKLED_CLASSES) or they are torch.nn's; keys without the 'module.'
    prefix of DataParallel. context: the flag, which the messages name."""
    classes = getattr(network, 'PICKLED_CLASSES', ())
    stand_in = lambda name: PickledModule if name.startswith('torch.nn.modules.') or \
        name.rsplit('.', 1)[-1] in classes else None
    state = run_folder.load_file(path, context, stand_in if classes else None)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ('state_dict', 'model_state_dict'):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f'{context}{path} holds neither a state dict nor a dict with one under "state_dict" or '
                        f'"model_state_dict"' + (' nor a pickled network' if classes else ''))
    return {k.removeprefix('module.'): v for k, v in state.items()}  # saved from DataParallel


def load_face_checkpoint(network, name, path, log=print):
    """Load a face-recognition checkpoint file (MS-Celeb-1M) into `network`: the ResNet-18 of SCN, RUL, EAC and NLA
    (resnet18_msceleb.pth, torchvision's names), DDAMFN's MixedFeatureNet (MFN_msceleb.pth) or EfficientFace's
    (Pretrained_EfficientFace.tar). A network may name the file's keys in its own names (face_checkpoint_name: DDAMFN's
    backbone sits under features.N) and the parts of it that such a file does not hold (FACE_HEADS; default its
    classifier, fc. or classifier.), which start anew. Every other weight must be in the file; the file's keys that do
    not load are named in the log, its own classifier's excepted (SCN, RUL and EAC load with strict=False, which
    ignores them silently)."""
    state = face_checkpoint_state(network, path)
    rename = getattr(network, 'face_checkpoint_name', lambda key: key)
    heads = getattr(network, 'FACE_HEADS', IMAGENET_HEADS)
    own = {k: v for k, v in network.state_dict().items() if not k.startswith(heads)}
    ours = {k: rename(k) for k in state}  # the file's key -> ours (None: no place in the network)
    mapped = {ours[k]: v for k, v in state.items() if ours[k] is not None}
    wrong = mismatched(own, mapped)
    if wrong:
        raise UserError(f'--pretrained: {path} does not hold the weights of {name} ({len(wrong)} missing or of '
                        f'another shape, e.g. {wrong[0]}: a checkpoint of another network?)')
    loaded = {k: mapped[k] for k in own if k in mapped}
    unused = sorted(k for k in state if ours[k] not in loaded and not k.startswith(IMAGENET_HEADS))
    network.load_state_dict(loaded, strict=False)
    anew = 'its classifier is replaced' if heads == IMAGENET_HEADS else \
        f'its {", ".join(h.rstrip(".") for h in heads)} start anew'
    log(f'loaded {len(loaded)} tensors of {os.path.basename(path)} into {name}; {anew}' +
        (f'; not loaded: {", ".join(unused)}' if unused else ''))


def load_pretrained(network, name, source, log=print):
    """Load the ImageNet weights of `network`'s backbones (model `name`): source 'imagenet' downloads them with
    torchvision's weights API; a folder holds torchvision's weight files (pretrained_file_names); a file is a
    face-recognition checkpoint (load_face_checkpoint, models with face_checkpoint). The ImageNet classifiers are
    dropped; every other backbone weight must be present."""
    entry = recipes.MODELS[name]
    if source != 'imagenet' and os.path.isfile(source) and entry.face_checkpoint:
        return load_face_checkpoint(network, name, source, log)
    if not entry.pretrained:
        having = [n for n, m in recipes.MODELS.items() if m.pretrained]
        raise UserError(f'--pretrained: {name} has no ImageNet backbone (only {", ".join(having)} have)' +
                        (f'; give its face-recognition checkpoint file ({entry.face_checkpoint})'
                         if entry.face_checkpoint else ''))
    for attribute, weights in pretrained_weights(name):
        file_name = os.path.basename(weights.url)
        if source == 'imagenet':
            try:
                state = weights.get_state_dict(progress=False)
            except Exception as e:  # noqa: BLE001 -- no network, proxy, disk: all mean the same to the user
                raise UserError(f'--pretrained imagenet: could not download {weights.url} ({type(e).__name__}: '
                                f'{str(e).splitlines()[0][:200]}); download {", ".join(pretrained_file_names(name))} '
                                f'on a machine that can and give their folder (--pretrained FOLDER), or train from '
                                f'scratch with --pretrained none') from None
        else:
            path = os.path.join(source, file_name)
            if not os.path.isfile(path):
                raise UserError(f'--pretrained {source}: {path} does not exist; the folder must hold torchvision\'s '
                                f'ImageNet weight files {", ".join(pretrained_file_names(name))} (from '
                                f'{", ".join(w.url for _, w in pretrained_weights(name))})')
            state = run_folder.load_file(path, '--pretrained: ')
            if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
                raise UserError(f'--pretrained {source}: {path} holds no state dict (torchvision\'s weight files do)')
        backbone = getattr(network, attribute) if attribute else network
        state = {k: v for k, v in state.items() if not k.startswith(IMAGENET_HEADS)}
        own = {k: v for k, v in backbone.state_dict().items() if not k.startswith(IMAGENET_HEADS)}
        wrong = mismatched(own, state)
        if wrong:
            raise UserError(f'--pretrained: {file_name} does not hold the weights of {name}\'s '
                            f'{attribute or "network"} ({len(wrong)} missing or of another shape, e.g. {wrong[0]})')
        backbone.load_state_dict(state, strict=False)
        log(f'loaded ImageNet weights {file_name} into {name}' + (f'.{attribute}' if attribute else ''))
