"""The released code's forward computations, written out literally, as an oracle for equivalence tests.

They run on the modules of our supernet (same parameters), so any difference comes from the computation."""
import torch
import torch.nn.functional as F


def released_channel_shuffle(x, groups):
    batchsize, num_channels, height, width = x.size()
    x = x.view(batchsize, groups, num_channels // groups, height, width)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(batchsize, -1, height, width)


def released_mixed_op(mixed_op, x, weights, permutation=None):
    dim_2 = x.shape[1]
    xtemp = x[:, :dim_2 // mixed_op.k, :, :]
    xtemp2 = x[:, dim_2 // mixed_op.k:, :, :]
    temp1 = sum(w * op(xtemp) for w, op in zip(weights, mixed_op._ops))
    if temp1.shape[2] == x.shape[2]:
        ans = torch.cat([temp1, xtemp2], dim=1)
    else:
        ans = torch.cat([temp1, mixed_op.mp(xtemp2)], dim=1)
    if permutation is not None:
        ans = ans[:, permutation]
    return released_channel_shuffle(ans, mixed_op.k)


def released_cell(cell, s0, s1, weights, weights2):
    s0 = cell.preprocess0(s0)
    s1 = cell.preprocess1(s1)
    states = [s0, s1]
    offset = 0
    for _ in range(cell._steps):
        s = sum(weights2[offset + j] * released_mixed_op(cell._ops[offset + j], h, weights[offset + j])
                for j, h in enumerate(states))
        offset += len(states)
        states.append(s)
    return torch.cat(states[-cell._multiplier:], dim=1)


def released_network(net, x):
    def edge_weights(betas):
        n, start, parts = 3, 2, [F.softmax(betas[0:2], dim=-1)]
        for _ in range(net._steps - 1):
            end = start + n
            parts.append(F.softmax(betas[start:end], dim=-1))
            start, n = end, n + 1
        return torch.cat(parts, dim=0)

    s0 = s1 = net.stem(x)
    for cell in net.cells:
        if cell.reduction:
            weights, weights2 = torch.sigmoid(net.alphas_reduce), edge_weights(net.betas_reduce)
        else:
            weights, weights2 = torch.sigmoid(net.alphas_normal), edge_weights(net.betas_normal)
        s0, s1 = s1, released_cell(cell, s0, s1, weights, weights2)
    out = net.global_pooling(s1)
    return net.classifier(out.view(out.size(0), -1))
