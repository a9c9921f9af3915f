"""Discrete network built from a genotype, trained from scratch by train.py (paper Sec. 3.4; docs/method.md "Discrete network")."""
import torch
import torch.nn as nn

from operations import OPS, FactorizedReduce, Identity, ReLUConvBN, check_image_size, reduction_cells, stem


def drop_path(x, drop_prob):
    """Zero whole samples of a branch with probability drop_prob and rescale the rest by 1 / (1 - drop_prob)
    (DARTS drop-path). drop_prob is a 0-dim tensor; at 0 the branch is returned exactly."""
    keep_prob = 1. - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class Cell(nn.Module):
    def __init__(self, genotype, C_prev_prev, C_prev, C, reduction, reduction_prev):
        super().__init__()
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        ops, concat = (genotype.reduce, genotype.reduce_concat) if reduction else (genotype.normal, genotype.normal_concat)
        op_names, indices = zip(*ops)
        self.reduction = reduction
        self._steps = len(op_names) // 2
        self._concat = list(concat)
        self.multiplier = len(self._concat)
        self._indices = indices
        self._ops = nn.ModuleList(
            OPS[name](C, 2 if reduction and index < 2 else 1, True) for name, index in zip(op_names, indices))

    def forward(self, s0, s1, drop_prob):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for i in range(self._steps):
            branches = []
            for op, index in ((self._ops[2 * i], self._indices[2 * i]), (self._ops[2 * i + 1], self._indices[2 * i + 1])):
                h = op(states[index])
                if self.training and not isinstance(op, Identity):
                    h = drop_path(h, drop_prob)
                branches.append(h)
            states.append(branches[0] + branches[1])
        return torch.cat([states[i] for i in self._concat], dim=1)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on the last reduction cell's output.

    The released head (DARTS' CIFAR head) pools 5x5 with stride 3 and assumes an 8x8 map; an adaptive
    pool to 2x2 gives the same parameter shapes and names for any input size."""

    def __init__(self, C, num_classes):
        super().__init__()
        self.features = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=True),
            nn.Conv2d(128, 768, 2, bias=False),
            nn.BatchNorm2d(768),
            nn.ReLU(inplace=True))
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class Network(nn.Module):
    def __init__(self, C, num_classes, layers, auxiliary, genotype, stem_multiplier=3, image_size=48, stem_stride=1):
        super().__init__()
        check_image_size(image_size, stem_stride)
        self._layers = layers
        self.stem_stride = stem_stride
        self._auxiliary = auxiliary
        # A buffer, not a float: train.py raises it every epoch, and as a tensor it is an input of a compiled
        # graph rather than a constant that torch.compile would specialise on (one recompilation per epoch).
        self.register_buffer('drop_path_prob', torch.zeros(()), persistent=False)

        C_curr = stem_multiplier * C
        self.stem = stem(C_curr, stem_stride)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        C_to_auxiliary = None
        for i in range(layers):
            reduction = i in reduction_cells(layers)
            if reduction:
                C_curr *= 2
            cell = Cell(genotype, C_prev_prev, C_prev, C_curr, reduction, reduction_prev)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, cell.multiplier * C_curr
            if i == reduction_cells(layers)[1]:
                C_to_auxiliary = C_prev
        if auxiliary:
            self.auxiliary_head = AuxiliaryHead(C_to_auxiliary, num_classes)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def forward(self, x):
        features, logits_aux = self.cells_forward(x)
        return self.forward_head(features), logits_aux

    def forward_features(self, x):
        """The last cell's output, N x C x H x W (timm's convention; the auxiliary logits are forward's only)."""
        return self.cells_forward(x)[0]

    def forward_head(self, features):
        """Global average pooling and the linear classifier."""
        return self.classifier(self.global_pooling(features).flatten(1))

    def class_activation_maps(self, features, detach_weights=False, mirrored=False):
        """The classifier applied at every position (CAM): maps whose spatial mean is the logits less the bias. (A 1x1
        map: mirrored, for EAC's mirror image, is the same.)"""
        return linear_class_maps(self.classifier, features, detach_weights)

    def cells_forward(self, x):
        """(the last cell's output, the auxiliary head's logits in training with one, else None)."""
        if x.shape[-1] % (4 * self.stem_stride) or x.shape[-2] % (4 * self.stem_stride):
            check_image_size(tuple(x.shape[-2:]), self.stem_stride)
        logits_aux = None
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == reduction_cells(self._layers)[1] and self._auxiliary and self.training:
                logits_aux = self.auxiliary_head(s1)
        return s1, logits_aux


def linear_class_maps(linear, features, detach_weights=False):
    """A linear classifier applied at every position of a feature map, without its bias: N x classes x H x W.
    detach_weights: the maps give no gradient to the classifier (EAC's attention consistency)."""
    weight = linear.weight.detach() if detach_weights else linear.weight
    return torch.einsum('kc,nchw->nkhw', weight, features)
