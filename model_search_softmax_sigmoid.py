"""The DARTS-family supernet: GLA-FERNet's (sequential partial-channel sampling, sigmoid op weights, softmax edge
weights; paper Sec. 3.2-3.3) and, by its settings, PC-DARTS', DARTS' and EmoNAS' (genotypes.METHODS).

The methods differ in four settings (Network's arguments): op weights, sigmoid or softmax of alpha over an edge's
candidate operations; edge weights, a softmax of beta over each node's incoming edges, or none (edges summed);
the partial-channel ratio k (1: every channel goes through the ops, no bypass and no shuffle, DARTS' mixed op); the
candidate operations (EmoNAS has no `none`). Everything else, including what follows, is shared.

How a cell runs its 14 edges (docs/method.md "Search cell and supernet"): as 4 edge groups, by the state the edges start from
(edge_groups): the 8 edges from the two cell inputs, then the 3, 2 and 1 edges from intermediate nodes 0, 1, 2.
All edges of a group have the same stride and their inputs are ready together, so a group is one MixedOp whose
candidate ops are `edges` copies side by side on the channel axis (1x1 convolutions are grouped convolutions;
depthwise convolutions and pools act per channel anyway). The numbers are those of one module per edge.

The contract, in tensor layouts (N batch, C channels per node, c = C // k processed channels per edge):
- MixedOp(sources, weights): `sources` holds the 1 or 2 states the group starts from, each (N, C, H, W); edge e
  reads sources[e % len(sources)]; `weights` is (edges, ops) in the group's edge order. It returns every edge's
  output, (N, edges, C, H', W'): per edge, its c processed channels then its C - c bypassed ones, channel-shuffled.
- Cell.forward completes nodes across groups: group g's edges target nodes g .. steps-1 in order (times the number
  of sources). Their weighted outputs are added to `pending` (N, nodes not yet complete, C, H, W); after each
  group the first pending node is complete, becomes a state and is the next group's source.
- Architecture parameters stay in DARTS' edge order (rows 0..13: node 0's edges, then node 1's, ...); per_group
  reorders them into the groups' order with `group_order`.
- State dicts keep DARTS' per-edge names: per_edge_state_dict splits each group tensor along dim 0 into its edges'
  tensors (cells.N._ops.<edge>.<name>) and grouped_state_dict concatenates them back in edge_groups order, which
  is the order of the channel blocks (edge e of a group owns block e of every op's channels).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from genotypes import OP_WEIGHTS, PRIMITIVES, Genotype, check_primitives
from operations import OPS, FactorizedReduce, ReLUConvBN, channel_shuffle, check_image_size, reduction_cells, stem
from errors import UserError

assert PRIMITIVES[0] == 'none', 'MixedOp skips the zero op by slicing the weights from index 1'


def node_edge_slices(steps):
    """Slices of the edge axis that belong to each intermediate node: [0:2], [2:5], [5:9], [9:14] for 4 steps."""
    slices, start = [], 0
    for i in range(steps):
        slices.append(slice(start, start + 2 + i))
        start += 2 + i
    return slices


def edge_groups(steps):
    """Edge indices grouped by the state the edges start from, in the order a cell runs them.

    Group 0 holds the edges from the two cell inputs, target node by target node ([0, 1, 2, 3, 5, 6, 9, 10] for
    4 steps; its edge e reads input e % 2); group i >= 1 holds the edges from intermediate node i - 1 ([4, 7, 11],
    [8, 12], [13]). All edges of a group have the same stride and their inputs are ready at the same time."""
    slices = node_edge_slices(steps)
    groups = [[node.start + j for node in slices for j in (0, 1)]]
    for source in range(2, steps + 1):
        groups.append([node.start + source for node in slices[source - 1:]])
    return groups


class MixedOp(nn.Module):
    """Partial-channel mixed op (paper Sec. 3.2) of `edges` edges with the same stride, run side by side.

    Per edge, the first 1/k of the input channels go through every candidate op (of `primitives`, in PRIMITIVES'
    order) and are summed with the op weights; the rest bypass the ops; both are concatenated and channel-shuffled
    (layouts: the module docstring). With k = 1 it is DARTS' mixed op: all channels, no bypass, no shuffle."""

    def __init__(self, C, stride, k=4, edges=1, primitives=PRIMITIVES):
        super().__init__()
        if C % k:
            raise UserError(f'channels per edge ({C}) must be divisible by the partial-channel ratio k={k}')
        self.k = k
        self.edges = edges
        # `none` outputs zeros, so its term is skipped: the ops (and weight columns) from `first` on are summed.
        self.first = 1 if primitives[0] == 'none' else 0
        assert 'none' not in primitives[self.first:], 'primitives must be in PRIMITIVES order (check_primitives)'
        self.mp = nn.MaxPool2d(2, 2)
        self._ops = nn.ModuleList()
        for primitive in primitives:
            op = OPS[primitive](C // k * edges, stride, False, edges)
            if 'pool' in primitive:
                op = nn.Sequential(op, nn.BatchNorm2d(C // k * edges, affine=False))
            self._ops.append(op)

    def forward(self, sources, weights):
        C = sources[0].shape[1]
        c = C // self.k
        per_source = self.edges // len(sources)
        processed = torch.cat([s[:, :c] for s in sources] * per_source, dim=1)
        # Skipping `none`'s term gives its weight the same (zero) gradient; a softmax still normalises over it.
        outputs = torch.stack([op(processed) for op in self._ops[self.first:]]).unflatten(2, (self.edges, c))
        op_weights = weights[:, self.first:].t().to(outputs.dtype)[:, None, :, None, None, None]
        mixed = (outputs * op_weights).sum(0)  # (N, edges, c, H, W)
        if self.k == 1:
            return mixed
        # (N, sources, C - c, H, W); a view when there is one source, as the cat below copies anyway
        if len(sources) == 1:
            bypassed = sources[0][:, None, c:]
        else:
            bypassed = torch.stack([s[:, c:] for s in sources], dim=1)
        if mixed.shape[-1] != sources[0].shape[-1]:  # stride 2
            bypassed = self.mp(bypassed.flatten(1, 2)).unflatten(1, (len(sources), -1))
        # (N, targets, sources, C, H, W): every edge's processed channels followed by its bypassed ones
        joined = torch.cat([mixed.unflatten(1, (per_source, len(sources))),
                            bypassed.unsqueeze(1).expand(-1, per_source, -1, -1, -1, -1)], dim=3)
        return self.mix_channels(joined).flatten(1, 2)

    def mix_channels(self, x):
        """Interleave each edge's processed and bypassed channels (dim -3), so the next edge samples new ones."""
        return channel_shuffle(x, self.k)


class Cell(nn.Module):
    def __init__(self, steps, multiplier, C_prev_prev, C_prev, C, reduction, reduction_prev, k, mixed_op, primitives):
        super().__init__()
        self.reduction = reduction
        if reduction_prev:
            self.preprocess0 = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self._steps = steps
        self._multiplier = multiplier
        self.edge_groups = edge_groups(steps)
        # in a reduction cell only the edges from the two inputs (group 0) have stride 2
        self.mixed_ops = nn.ModuleList(mixed_op(C, 2 if reduction and i == 0 else 1, k, len(edges), primitives)
                                       for i, edges in enumerate(self.edge_groups))
        self.register_state_dict_post_hook(per_edge_state_dict)
        self.register_load_state_dict_pre_hook(grouped_state_dict)

    def forward(self, s0, s1, op_weights, edge_weights):
        """op_weights, edge_weights: per edge group, the (edges, ops) and (edges,) weights in the group's order;
        edge_weights None: the edges into a node are summed (DARTS)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        pending = None  # weighted edge outputs summed so far into the nodes not yet complete, (N, nodes, C, H, W)
        for group, (mixed_op, group_op_weights) in enumerate(zip(self.mixed_ops, op_weights)):
            sources = states[:2] if pending is None else states[-1:]
            outputs = mixed_op(sources, group_op_weights).unflatten(1, (-1, len(sources)))
            if edge_weights is not None:
                outputs = outputs * edge_weights[group].to(outputs.dtype).view(-1, len(sources), 1, 1, 1)
            summed = outputs.sum(2)  # (N, target nodes, C, H, W)
            pending = summed if pending is None else pending[:, 1:] + summed
            states.append(pending[:, 0])
        return torch.cat(states[-self._multiplier:], dim=1)


def per_edge_state_dict(cell, state_dict, prefix, local_metadata):
    """Save each edge's tensors under its DARTS name (cells.N._ops.<edge>.<name>), so weights files keep the
    released code's layout: a group's tensors hold its edges' tensors stacked along dim 0."""
    for group, edges in enumerate(cell.edge_groups):
        group_prefix = f'{prefix}mixed_ops.{group}.'
        for key in [key for key in state_dict if key.startswith(group_prefix)]:
            value = state_dict.pop(key)
            parts = value.chunk(len(edges)) if value.dim() else [value] * len(edges)  # num_batches_tracked
            for edge, part in zip(edges, parts):
                state_dict[f'{prefix}_ops.{edge}.{key[len(group_prefix):]}'] = part


def grouped_state_dict(cell, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Load per-edge (DARTS) names into the edge groups; the inverse of per_edge_state_dict."""
    for group, edges in enumerate(cell.edge_groups):
        first = f'{prefix}_ops.{edges[0]}.'
        for key in [key for key in state_dict if key.startswith(first)]:
            name = key[len(first):]
            names = [f'{prefix}_ops.{edge}.{name}' for edge in edges]
            if all(n in state_dict for n in names):  # otherwise load_state_dict reports the missing key
                parts = [state_dict.pop(n) for n in names]
                state_dict[f'{prefix}mixed_ops.{group}.{name}'] = torch.cat(parts) if parts[0].dim() else parts[0]


class Network(nn.Module):
    """The supernet of a DARTS-family method (genotypes.METHODS), by its settings: `op_weights` 'sigmoid' (GLA-FERNet)
    or 'softmax' (PC-DARTS, DARTS, EmoNAS) of alpha over an edge's candidate operations; `edge_weights` True: a
    softmax of beta over each node's incoming edges (GLA-FERNet, PC-DARTS), False: no beta, edges summed (DARTS,
    EmoNAS); partial-channel ratio `k` (1: every channel, DARTS' mixed op); the candidate operations `primitives`."""
    mixed_op = MixedOp  # the random-sampling variant swaps this class only

    def __init__(self, C, num_classes, layers, k=4, op_weights='sigmoid', edge_weights=True, primitives=PRIMITIVES,
                 steps=4, multiplier=4, stem_multiplier=3, image_size=48):
        super().__init__()
        check_image_size(image_size)
        if op_weights not in OP_WEIGHTS:
            raise UserError(f"op_weights must be one of {', '.join(OP_WEIGHTS)}, got {op_weights!r}")
        self._C = C
        self._num_classes = num_classes
        self._layers = layers
        self._steps = steps
        self._multiplier = multiplier
        self.k = k
        self.op_weight_function = op_weights
        self.has_edge_weights = edge_weights
        self.primitives = check_primitives(primitives)

        C_curr = stem_multiplier * C
        self.stem = stem(C_curr)
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in reduction_cells(layers)
            if reduction:
                C_curr *= 2
            cell = Cell(steps, multiplier, C_prev_prev, C_prev, C_curr, reduction, reduction_prev, k, self.mixed_op,
                        self.primitives)
            reduction_prev = reduction
            self.cells.append(cell)
            C_prev_prev, C_prev = C_prev, multiplier * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        # edge e of the weights is row group_order[e] of the DARTS-ordered architecture parameters
        groups = edge_groups(steps)
        self.register_buffer('group_order', torch.tensor(sum(groups, [])), persistent=False)
        self._group_sizes = [len(edges) for edges in groups]
        num_edges = sum(2 + i for i in range(steps))
        self.alphas_normal = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges, len(self.primitives)))
        # in DARTS' order; DARTS and EmoNAS have no betas
        self.arch_parameter_names = ('alphas_normal', 'alphas_reduce')
        if edge_weights:
            self.betas_normal = nn.Parameter(1e-3 * torch.randn(num_edges))
            self.betas_reduce = nn.Parameter(1e-3 * torch.randn(num_edges))
            self.arch_parameter_names += ('betas_normal', 'betas_reduce')

    def arch_parameters(self):
        """The architecture parameters, what the architecture optimizer updates."""
        return [getattr(self, name) for name in self.arch_parameter_names]

    def named_weight_parameters(self):
        """(name, parameter) of every parameter except the architecture ones: what the weight optimizer updates.
        With arch_parameters() they are all the parameters, each once."""
        return [(name, p) for name, p in self.named_parameters() if name not in self.arch_parameter_names]

    def weight_parameters(self):
        return [p for _, p in self.named_weight_parameters()]

    def op_weights(self, alphas):
        """The weights of each edge's candidate operations: sigmoid (operations do not compete) or softmax."""
        return torch.sigmoid(alphas) if self.op_weight_function == 'sigmoid' else F.softmax(alphas, dim=-1)

    def edge_weights(self, betas):
        """Softmax of the edge parameters over each node's incoming edges."""
        return torch.cat([F.softmax(betas[s], dim=-1) for s in node_edge_slices(self._steps)])

    def cell_weights(self, cell):
        """(op weights (edges, ops), edge weights (edges,)) of cell type 'normal' or 'reduce', in DARTS' edge
        order, as functions of the architecture parameters; edge weights of 1 for a method without them."""
        op_weights = self.op_weights(getattr(self, f'alphas_{cell}'))
        if not self.has_edge_weights:
            return op_weights, torch.ones(op_weights.shape[0], device=op_weights.device)
        return op_weights, self.edge_weights(getattr(self, f'betas_{cell}'))

    def mixing_weights(self, cell):
        """cell_weights, detached, float32 on the CPU."""
        with torch.no_grad():
            return tuple(w.float().cpu() for w in self.cell_weights(cell))

    def per_group(self, weights):
        """Split per-edge weights (DARTS edge order) into the cells' edge groups."""
        return weights[self.group_order].split(self._group_sizes)

    def forward(self, x):
        if x.shape[-1] % 4 or x.shape[-2] % 4:
            check_image_size(tuple(x.shape[-2:]))
        op_normal = self.per_group(self.op_weights(self.alphas_normal))
        op_reduce = self.per_group(self.op_weights(self.alphas_reduce))
        edge_normal = edge_reduce = None
        if self.has_edge_weights:
            edge_normal = self.per_group(self.edge_weights(self.betas_normal))
            edge_reduce = self.per_group(self.edge_weights(self.betas_reduce))
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            if cell.reduction:
                s0, s1 = s1, cell(s0, s1, op_reduce, edge_reduce)
            else:
                s0, s1 = s1, cell(s0, s1, op_normal, edge_normal)
        out = self.global_pooling(s1)
        return self.classifier(out.flatten(1))

    def architecture_weights(self):
        """The weights the supernet mixes with, per cell type, in DARTS' edge order, as lists: 'ops' (edges x
        candidate ops: the method's sigmoid or softmax of alpha) and 'edges' (softmax of beta over each node's
        incoming edges; 1 where the method has none), with the candidate op names and how the weights are made
        ('op_weights': sigmoid or softmax, 'edge_weights': whether there are any). What reports plot epoch by epoch."""
        weights = {'primitives': list(self.primitives), 'op_weights': self.op_weight_function,
                   'edge_weights': self.has_edge_weights}
        for cell in ('normal', 'reduce'):
            op_weights, edge_weights = self.mixing_weights(cell)
            weights[cell] = {'ops': op_weights.tolist(), 'edges': edge_weights.tolist()}
        return weights

    def genotype(self):
        """Per node, the two incoming edges whose strongest operation other than `none` is strongest, with that
        operation (DARTS, PC-DARTS and the released code alike); strength = op weight times edge weight."""
        def parse(cell):
            op_weights, edge_weights = self.mixing_weights(cell)
            W = op_weights * edge_weights.unsqueeze(1)
            if 'none' in self.primitives:
                W[:, self.primitives.index('none')] = float('-inf')  # `none` is never selected
            strength, best_op = W.max(dim=1)
            gene = []
            for node in node_edge_slices(self._steps):
                # stable sort: stronger edge first, ties keep the lower input index (as the released code)
                edges = sorted(range(node.stop - node.start), key=lambda j: -strength[node.start + j].item())[:2]
                gene.extend((self.primitives[best_op[node.start + j].item()], j) for j in edges)
            return gene

        concat = range(2 + self._steps - self._multiplier, self._steps + 2)
        return Genotype(normal=parse('normal'), normal_concat=concat, reduce=parse('reduce'), reduce_concat=concat)
