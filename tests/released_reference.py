"""The reference supernets of the DARTS family written out literally, one module per edge, as oracles for
equivalence tests: the released GLA-FERNet code, PC-DARTS (the same code with softmax operation weights) and DARTS
(softmax over the operations on every channel, the edges into a node summed).

`released_twin(net)` builds the reference of one of our supernets' method with its configuration and loads that
supernet's state dict (DARTS names, one entry per edge), so any difference in the outputs comes from the
computation."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from genotypes import PRIMITIVES
from operations import OPS, FactorizedReduce, ReLUConvBN


def released_channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def candidate_ops(C, stride, primitives):
    ops = nn.ModuleList()
    for primitive in primitives:
        op = OPS[primitive](C, stride, False)
        if 'pool' in primitive:
            op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
        ops.append(op)
    return ops


class DartsMixedOp(nn.Module):
    """DARTS' mixed op: every channel through every candidate op, summed with the op weights."""

    def __init__(self, C, stride, primitives=PRIMITIVES):
        super().__init__()
        self._ops = candidate_ops(C, stride, primitives)

    def forward(self, x, weights):
        return sum(w * op(x) for w, op in zip(weights, self._ops))


class ReleasedMixedOp(nn.Module):
    """PC-DARTS' and the released code's mixed op: 1/k of the channels through the ops, then a channel shuffle."""

    def __init__(self, C, stride, k, primitives=PRIMITIVES):
        super().__init__()
        self.k = k
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = candidate_ops(C // k, stride, primitives)

    def forward(self, x, weights, permutation=None):
        dim_2 = x.shape[1]
        xtemp = x[:, :dim_2 // self.k, :, :]
        xtemp2 = x[:, dim_2 // self.k:, :, :]
        temp1 = sum(w * op(xtemp) for w, op in zip(weights, self._ops))
        if temp1.shape[2] == x.shape[2]:
            ans = torch.cat([temp1, xtemp2], dim=1)
        else:
            ans = torch.cat([temp1, self.mp(xtemp2)], dim=1)
        if permutation is not None:  # the random-sampling variant: ans[:, torch.randperm(dim_2)]
            ans = ans[:, permutation]
        return released_channel_shuffle(ans, self.k)


class ReleasedCell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, mixed_op):
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
                self._ops.append(mixed_op(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0, s1, weights, weights2, permutations):
        """weights2 None: DARTS, which sums the edges into a node."""
        s0 = self.preprocess0(s0)
        s1 = self.preprocess1(s1)
        states = [s0, s1]
        offset = 0
        for _ in range(self._steps):
            if weights2 is None:
                s = sum(self._ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
            else:
                s = sum(weights2[offset + j] * self._ops[offset + j](h, weights[offset + j],
                                                                     permutations.get(offset + j))
                        for j, h in enumerate(states))
            offset += len(states)
            states.append(s)
        return torch.cat(states[-self._multiplier:], dim=1)


class ReleasedNetwork(nn.Module):
    """method: 'released' (GLA-FERNet: sigmoid op weights), 'pc_darts' (softmax) or 'darts' (softmax, no edge
    weights, k = 1)."""

    def __init__(self, C, num_classes, layers, k, steps=4, multiplier=4, stem_multiplier=3, method='released',
                 primitives=PRIMITIVES):
        super().__init__()
        self.method = method
        self._steps = steps
        if method == 'darts':
            assert k == 1

            def mixed_op(C, stride):
                return DartsMixedOp(C, stride, primitives)
        else:
            def mixed_op(C, stride):
                return ReleasedMixedOp(C, stride, k, primitives)
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(3, C_curr, 3, padding=1, bias=False), nn.BatchNorm2d(C_curr))
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            if i in [layers // 3, 2 * layers // 3]:
                C_curr *= 2
                reduction = True
            else:
                reduction = False
            cell = ReleasedCell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, mixed_op)
            reduction_prev = reduction
            self.cells += [cell]
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

    def edge_weights(self, betas):
        n, start, parts = 3, 2, [F.softmax(betas[0:2], dim=-1)]
        for _ in range(self._steps - 1):
            end = start + n
            parts.append(F.softmax(betas[start:end], dim=-1))
            start, n = end, n + 1
        return torch.cat(parts, dim=0)

    def mixing_weights(self, alphas, betas):
        if self.method == 'darts':
            return F.softmax(alphas, dim=-1), None
        if self.method == 'pc_darts':
            return F.softmax(alphas, dim=-1), self.edge_weights(betas)
        return torch.sigmoid(alphas), self.edge_weights(betas)

    def forward(self, x, alphas_normal, alphas_reduce, betas_normal=None, betas_reduce=None, permutations=None):
        """permutations: optional {(cell, edge): channel permutation} for the random-sampling variant."""
        s0 = s1 = self.stem(x)
        for i, cell in enumerate(self.cells):
            if cell.reduction:
                weights, weights2 = self.mixing_weights(alphas_reduce, betas_reduce)
            else:
                weights, weights2 = self.mixing_weights(alphas_normal, betas_normal)
            cell_permutations = {edge: p for (c, edge), p in (permutations or {}).items() if c == i}
            s0, s1 = s1, cell(s0, s1, weights, weights2, cell_permutations)
        out = self.global_pooling(s1)
        return self.classifier(out.view(out.size(0), -1))


def reference_method(net):
    """The reference method our supernet's settings select."""
    if net.op_weight_function == 'sigmoid':
        assert net.has_edge_weights
        return 'released'
    if net.has_edge_weights:
        return 'pc_darts'
    assert net.k == 1
    return 'darts'


def released_twin(net):
    """A ReleasedNetwork of `net`'s method with its configuration and weights (architecture parameters are inputs
    there)."""
    twin = ReleasedNetwork(net._C, net._num_classes, net._layers, net.k, net._steps, net._multiplier,
                           net.stem[0].out_channels // net._C, reference_method(net), net.primitives)
    arch = set(net.arch_parameter_names)
    twin.load_state_dict({key: value for key, value in net.state_dict().items() if key not in arch})
    return twin.train(net.training)
