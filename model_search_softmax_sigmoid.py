"""Supernet with sequential partial-channel sampling, sigmoid op weights and softmax edge weights (paper Sec. 3.2-3.3)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from genotypes import PRIMITIVES, Genotype
from operations import OPS, FactorizedReduce, ReLUConvBN, check_image_size
from utils import UserError

NONE_INDEX = PRIMITIVES.index('none')
assert NONE_INDEX == 0, 'MixedOp skips the zero op by slicing the weights from index 1'


def channel_shuffle(x, groups):
    batch, channels, height, width = x.shape
    x = x.view(batch, groups, channels // groups, height, width).transpose(1, 2)
    return x.reshape(batch, channels, height, width)


def node_edge_slices(steps):
    """Slices of the edge axis that belong to each intermediate node: [0:2], [2:5], [5:9], [9:14] for 4 steps."""
    slices, start = [], 0
    for i in range(steps):
        slices.append(slice(start, start + 2 + i))
        start += 2 + i
    return slices


class MixedOp(nn.Module):
    """Partial-channel mixed op: 1/k of the channels go through every candidate op, the rest bypass it."""

    def __init__(self, C, stride, k=4):
        super().__init__()
        if C % k:
            raise UserError(f'channels per edge ({C}) must be divisible by the partial-channel ratio k={k}')
        self.k = k
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = nn.ModuleList()
        for primitive in PRIMITIVES:
            op = OPS[primitive](C // k, stride, False)
            if 'pool' in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // k, affine=False))
            self._ops.append(op)

    def forward(self, x, weights):
        processed = x[:, :x.shape[1] // self.k]
        # `none` outputs zeros, so its term is skipped; its weight gets the same (zero) gradient either way.
        outputs = [op(processed) for op in self._ops[1:]]
        mixed = weighted_sum(weights[1:], outputs)
        if self.k == 1:
            return mixed
        bypassed = x[:, x.shape[1] // self.k:]
        if mixed.shape[2] != x.shape[2]:
            bypassed = self.mp(bypassed)
        return self.join(mixed, bypassed)

    def join(self, processed, bypassed):
        """Concatenate processed and bypassed channels and interleave them, so the next edge samples new ones."""
        return channel_shuffle(torch.cat([processed, bypassed], dim=1), self.k)


def weighted_sum(weights, tensors):
    """sum_i weights[i] * tensors[i] as one stacked contraction instead of a chain of temporaries."""
    return torch.einsum('k,k...->...', weights.to(tensors[0].dtype), torch.stack(tensors))


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k, mixed_op):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self._ops = nn.ModuleList()
        for i in range(steps):
            for j in range(2 + i):
                stride = 2 if reduction and j < 2 else 1
                self._ops.append(mixed_op(C, stride, k))

    def forward(self, s0, s1, op_weights, edge_weights):
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        offset = 0
        for _ in range(self._steps):
            edges = [self._ops[offset + j](h, op_weights[offset + j]) for j, h in enumerate(states)]
            states.append(weighted_sum(edge_weights[offset:offset + len(states)], edges))
            offset += len(edges)
        return torch.cat(states[-self._multiplier:], dim=1)


class Network(nn.Module):
    mixed_op = MixedOp  # the random-sampling variant swaps this class only

    def __init__(self, C, num_classes, layers, k=4, steps=4, multiplier=4, stem_multiplier=3, image_size=48):
        super().__init__()
        check_image_size(image_size)
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._steps = steps
        self._multiplier = multiplier
        self.k = k

        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(3, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            cell = Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, k, self.mixed_op)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        num_edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(PRIMITIVES)))
        self.betas_normal = nn.Parameter(1e-3 * torch.randn(num_edges))
        self.betas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges))
        self._arch_names = ('alphas_normal', 'alphas_reduce', 'betas_normal', 'betas_reduce')

    def arch_parameters(self):
        return [self.alphas_normal, self.alphas_reduce, self.betas_normal, self.betas_reduce]

    def weight_parameters(self):
        """Every parameter except the architecture ones: what the weight optimizer updates."""
        return [p for name, p in self.named_parameters() if name not in self._arch_names]

    def edge_weights(self, betas):
        """Softmax of the edge parameters over each node's incoming edges."""
        return torch.cat([F.softmax(betas[s], dim=-1) for s in node_edge_slices(self._steps)])

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            check_image_size(tuple(x.shape[-2:]))
        op_normal, op_reduce = torch.sigmoid(self.alphas_normal), torch.sigmoid(self.alphas_reduce)
        edge_normal, edge_reduce = self.edge_weights(self.betas_normal), self.edge_weights(self.betas_reduce)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, op_reduce, edge_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, op_normal, edge_normal)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def genotype(self):
        def parse(alphas, betas):
            op_weights = torch.sigmoid(alphas.detach().float().cpu())
            edge_weights = self.edge_weights(betas.detach().float().cpu())
            gene = []
            for node in node_edge_slices(self._steps):
                W = op_weights[node] * edge_weights[node].unsqueeze(1)
                W[:, NONE_INDEX] = float('-inf')  # `none` is never selected
                strength, best_op = W.max(dim=1)
                # stable sort: stronger edge first, ties keep the lower input index (as the released code)
                edges = sorted(range(W.shape[0]), key=lambda j: -strength[j].item())[:2]
                gene.extend((PRIMITIVES[best_op[j].item()], j) for j in edges)
            return gene

        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse(self.alphas_normal, self.betas_normal), normal_concat=concat,
                        reduce=parse(self.alphas_reduce, self.betas_reduce), reduce_concat=concat)
