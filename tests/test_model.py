"""Search space, supernets, discrete network and architect against the reference sizes of docs/method.md."""
import pathlib
import re

import pytest
import torch
import torch.nn.functional as F

import genotypes
import model
import model_search_ran_softmax_sigmoid as random_search
import model_search_softmax_sigmoid as sequential_search
import architect
from architect import Architect
from genotypes import PRIMITIVES, parse_genotype
from released_reference import ReleasedMixedOp, released_twin
from errors import UserError
from training_step import WeightUpdate, weight_step
from utils import count_parameters

SUPERNETS = [sequential_search.Network, random_search.Network]
METHODS = list(genotypes.METHODS)
# each method's supernet, and the random-sampling one (its sampling does not depend on the method's weights)
METHOD_SUPERNETS = ([pytest.param(sequential_search.Network, method, id=f'sequential-{method}') for method in METHODS]
                    + [pytest.param(random_search.Network, 'gla_fernet', id='random-gla_fernet')])
# Each named genotype once, under the name it is defined with: aliases (ARC, PCDARTS = GLA_FERNet; DARTS = DARTS_V2)
# are the same object, defined after it.
UNIQUE_GENOTYPES = sorted({id(g): name for name, g in reversed(genotypes.named_genotypes().items())}.values())


def preset(method):
    """The Network settings of a method's supernet (genotypes.METHODS), but its number of cells."""
    return {name: value for name, value in genotypes.METHODS[method]['supernet'].items() if name != 'layers'}


def tiny_supernet(cls=sequential_search.Network, method='gla_fernet', **kwargs):
    torch.manual_seed(0)
    return cls(8, 7, 3, **{**preset(method), **kwargs})


@pytest.mark.parametrize('method, C, num_classes, layers, expected', [
    ('darts', 16, 7, 8, 1_929_847), ('darts', 16, 10, 8, 1_930_618), ('pc_darts', 16, 7, 8, 298_807),
    ('emonas', 16, 7, 5, 1_275_063)])
def test_method_supernet_parameter_counts(method, C, num_classes, layers, expected):
    net = sequential_search.Network(C, num_classes, layers, **preset(method))
    assert count_parameters(net, exclude=net.arch_parameters()) == expected
    assert layers == genotypes.METHODS[method]['supernet']['layers']
    shapes = [tuple(p.shape) for p in net.arch_parameters()]
    ops = len(net.primitives)
    assert shapes == ([(14, ops)] * 2 + [(14,)] * 2 if genotypes.METHODS[method]['supernet']['edge_weights']
                      else [(14, ops)] * 2)
    assert ops == (7 if method == 'emonas' else 8)


@pytest.mark.parametrize('cls', SUPERNETS)
def test_supernet_parameter_count_matches_released(cls):
    net = cls(16, 7, 8, k=4)
    assert count_parameters(net, exclude=net.arch_parameters()) == 298_807


def test_discrete_parameter_count_and_cell_channels_match_released():
    net = model.Network(36, 7, 8, False, genotypes.GLA_FERNet)
    assert count_parameters(net) == 1_376_899
    channels = [(c.preprocess0.conv_1.in_channels if c.preprocess0.__class__.__name__ == 'FactorizedReduce'
                 else c.preprocess0.op[1].in_channels, c.preprocess1.op[1].in_channels,
                 c.preprocess1.op[1].out_channels) for c in net.cells]
    assert channels == [(108, 108, 36), (108, 144, 36), (144, 144, 72), (144, 288, 72),
                        (288, 288, 72), (288, 288, 144), (288, 576, 144), (576, 576, 144)]


def test_state_dict_uses_darts_names():
    keys = set(sequential_search.Network(16, 7, 8).state_dict())
    for key in ['stem.0.weight', 'stem.1.running_mean', 'cells.0.preprocess0.op.1.weight',
                'cells.3.preprocess0.conv_1.weight', 'cells.2._ops.0._ops.3.conv_2.weight',  # stride-2 skip
                'cells.0._ops.13._ops.1.1.running_var',  # pool followed by its BN
                'cells.0._ops.0._ops.4.op.6.weight', 'cells.0._ops.0._ops.7.op.2.weight',
                'classifier.weight', 'classifier.bias']:
        assert key in keys, key
    discrete = set(model.Network(36, 7, 8, True, genotypes.GLA_FERNet).state_dict())
    assert {'cells.0._ops.0.op.1.weight', 'cells.0._ops.0.op.3.weight', 'auxiliary_head.features.2.weight',
            'auxiliary_head.classifier.weight'} <= discrete


@pytest.mark.parametrize('method', METHODS)
def test_released_weights_load_and_ours_load_into_released_layout(method):
    net = sequential_search.Network(16, 7, 8 if method == 'gla_fernet' else 3, **preset(method))
    twin = released_twin(net)  # loads our state dict into one module per edge, strictly
    released_state = twin.state_dict()  # released: alphas not registered
    fresh = sequential_search.Network(16, 7, net._layers, **preset(method))
    result = fresh.load_state_dict(released_state, strict=False)
    assert result.unexpected_keys == [] and set(result.missing_keys) == set(net.arch_parameter_names)
    loaded = fresh.state_dict()
    assert loaded.keys() - set(net.arch_parameter_names) == released_state.keys()
    assert all(torch.equal(loaded[key], value) for key, value in released_state.items())


@pytest.mark.parametrize('k', [1, 2, 4, 8])
def test_partial_channel_ratio(k):
    net = sequential_search.Network(16, 7, 3, k=k, image_size=32)
    assert net.state_dict()['cells.0._ops.13._ops.4.op.1.weight'].shape == (16 // k, 1, 3, 3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_indivisible_channels_refused():
    with pytest.raises(ValueError, match='divisible'):
        sequential_search.Network(6, 7, 3, k=4)


def test_edge_groups_cover_every_edge_once_by_source():
    groups = sequential_search.edge_groups(4)
    assert groups == [[0, 1, 2, 3, 5, 6, 9, 10], [4, 7, 11], [8, 12], [13]]
    assert sorted(sum(sequential_search.edge_groups(5), [])) == list(range(20))


def test_k1_mixed_op_is_plain_darts_with_sigmoid_weights():
    torch.manual_seed(0)
    op = sequential_search.MixedOp(6, 1, k=1)
    x, alphas = torch.randn(2, 6, 8, 8), torch.randn(len(PRIMITIVES))
    weights = torch.sigmoid(alphas)
    expected = sum(w * o(x) for w, o in zip(weights, op._ops))
    torch.testing.assert_close(op([x], weights[None])[:, 0], expected, rtol=1e-5, atol=1e-6)


def per_edge_ops(op, C, stride, k):
    """One released mixed op per edge of a grouped mixed op, holding that edge's block of the parameters."""
    edges = []
    for e in range(op.edges):
        edge = ReleasedMixedOp(C, stride, k)
        edge.load_state_dict({name: value.chunk(op.edges)[e] if value.dim() else value
                              for name, value in op.state_dict().items()})
        edges.append(edge)
    return edges


@pytest.mark.parametrize('sources', [1, 2])
@pytest.mark.parametrize('stride', [1, 2])
def test_grouped_mixed_op_equals_released_per_edge(stride, sources):
    torch.manual_seed(0)
    op = sequential_search.MixedOp(8, stride, k=4, edges=6)
    inputs, weights = [torch.randn(2, 8, 8, 8) for _ in range(sources)], torch.rand(6, len(PRIMITIVES))
    reference = torch.stack([edge(inputs[e % sources], weights[e])
                             for e, edge in enumerate(per_edge_ops(op, 8, stride, 4))], dim=1)
    torch.testing.assert_close(op(inputs, weights), reference, rtol=1e-5, atol=1e-6)


def test_random_mixed_op_permutes_then_shuffles_like_released():
    torch.manual_seed(0)
    op = random_search.MixedOp(8, 1, k=4, edges=4)
    inputs, weights = [torch.randn(2, 8, 8, 8) for _ in range(2)], torch.rand(4, len(PRIMITIVES))
    torch.manual_seed(5)
    ours = op(inputs, weights)
    torch.manual_seed(5)
    permutations = op.permutations((2, 2, 8), 'cpu').flatten(0, 1)  # (targets, sources, C) -> per edge
    assert all(sorted(p.tolist()) == list(range(8)) for p in permutations)
    reference = torch.stack([edge(inputs[e % 2], weights[e], permutations[e])
                             for e, edge in enumerate(per_edge_ops(op, 8, 1, 4))], dim=1)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)


def recorded_permutations(monkeypatch, net):
    """Record the random variant's permutations; by_edge() returns those of the last forward as
    {(cell, edge): permutation}, in the released code's terms."""
    drawn = []
    draw = random_search.MixedOp.permutations
    monkeypatch.setattr(random_search.MixedOp, 'permutations',
                        staticmethod(lambda shape, device: drawn.append(draw(shape, device)) or drawn[-1]))
    groups = sequential_search.edge_groups(net._steps)

    def by_edge():
        calls = iter(drawn[-len(net.cells) * len(groups):])
        return {(cell, edge): p for cell in range(len(net.cells)) for group in groups
                for edge, p in zip(group, next(calls).flatten(0, 1))}
    return by_edge


@pytest.mark.parametrize('cls, method', METHOD_SUPERNETS)
def test_supernet_forward_gradients_and_statistics_equal_released(cls, method, monkeypatch):
    # the reference of each method (released_reference): GLA-FERNet's released code, PC-DARTS (softmax op weights,
    # per-node softmax edge weights, k=4, shuffle), DARTS and EmoNAS (softmax over every channel, edges summed)
    net = tiny_supernet(cls, method)
    set_arch(net, torch.randn(14, len(net.primitives)), torch.randn(14))
    twin = released_twin(net)
    permutations = recorded_permutations(monkeypatch, net) if cls is random_search.Network else dict
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 7, (4,))
    ours = net(x)
    reference = twin(x, *net.arch_parameters(), permutations=permutations())
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    names = [name for name, _ in net.named_weight_parameters()]
    grads = torch.autograd.grad(F.cross_entropy(ours, y), net.arch_parameters() + net.weight_parameters())
    reference_names, reference_weights = zip(*twin.named_parameters())
    reference_grads = torch.autograd.grad(F.cross_entropy(reference, y), net.arch_parameters() + list(reference_weights))
    arch = len(net.arch_parameters())
    for g, r in zip(grads[:arch], reference_grads[:arch]):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-7)
    weight_grads = dict(zip(names, grads[arch:]))
    for i, cell in enumerate(net.cells):  # our grouped gradients under per-edge names, as the state dict does
        sequential_search.per_edge_state_dict(cell, weight_grads, f'cells.{i}.', None)
    assert weight_grads.keys() == set(reference_names)
    for name, r in zip(reference_names, reference_grads[arch:]):
        torch.testing.assert_close(weight_grads[name], r, rtol=1e-4, atol=1e-6)
    # BatchNorm running statistics were updated alike, so evaluation mode agrees too
    ours_state, reference_state = net.state_dict(), twin.state_dict()
    for key, value in reference_state.items():
        torch.testing.assert_close(ours_state[key], value, rtol=1e-5, atol=1e-6)
    net.eval()
    twin.eval()
    with torch.no_grad():
        torch.testing.assert_close(net(x), twin(x, *net.arch_parameters(), permutations=permutations()), rtol=1e-5,
                                   atol=1e-6)


def test_sequential_is_deterministic_random_is_seeded_and_different():
    x = torch.randn(2, 3, 16, 16)
    sequential = tiny_supernet()
    randomised = tiny_supernet(random_search.Network)
    randomised.load_state_dict(sequential.state_dict())
    assert torch.equal(sequential(x), sequential(x))
    torch.manual_seed(1)
    first = randomised(x)
    second = randomised(x)
    torch.manual_seed(1)
    again = randomised(x)
    assert not torch.allclose(first, second)
    assert torch.equal(first, again)
    assert not torch.allclose(first, sequential(x))


def set_arch(net, alphas_normal, betas_normal):
    """The same architecture parameters for both cell types (betas only where the method has them)."""
    with torch.no_grad():
        net.alphas_normal.copy_(alphas_normal)
        net.alphas_reduce.copy_(alphas_normal)
        if net.has_edge_weights:
            net.betas_normal.copy_(betas_normal)
            net.betas_reduce.copy_(betas_normal)


def test_genotype_picks_edges_by_softmax_weighted_strength_and_never_none():
    net = tiny_supernet()
    alphas = torch.zeros(14, 8)
    betas = torch.zeros(14)
    none, sep3, sep5, maxp, skip = (PRIMITIVES.index(n) for n in
                                    ['none', 'sep_conv_3x3', 'sep_conv_5x5', 'max_pool_3x3', 'skip_connect'])
    # node 0 (edges 0, 1): `none` dominates edge 0 but must be ignored; sep_conv_5x5 is the best real op.
    alphas[0, none], alphas[0, sep5] = 10., 1.
    alphas[1, sep3] = 3.
    # node 1 (edges 2, 3, 4): edge 4 has the strongest op weight, but edge 2's larger edge weight wins.
    alphas[2, maxp], alphas[3, skip], alphas[4, sep3] = 2., 1., 2.5
    betas[2], betas[4] = 3., -3.
    set_arch(net, alphas, betas)
    genotype = net.genotype()
    assert genotype.normal[:2] == [('sep_conv_3x3', 1), ('sep_conv_5x5', 0)]  # stronger edge first
    assert genotype.normal[2:4] == [('max_pool_3x3', 0), ('skip_connect', 1)]  # inputs 0 and 1 of node 1
    assert all(name != 'none' for name, _ in genotype.normal + genotype.reduce)
    assert list(genotype.normal_concat) == [2, 3, 4, 5]
    assert genotype == parse_genotype(genotypes.format_genotype(genotype))


@pytest.mark.parametrize('method', METHODS)
def test_genotype_matches_reference_parse_on_random_weights(method):
    net = tiny_supernet(method=method)
    set_arch(net, torch.randn(14, len(net.primitives)), torch.randn(14))
    alphas = net.alphas_normal.detach()
    if method == 'gla_fernet':  # sigmoid op weights times per-node softmax edge weights
        weights = torch.sigmoid(alphas) * net.edge_weights(net.betas_normal).detach()[:, None]
    elif method == 'pc_darts':  # softmax op weights times per-node softmax edge weights
        weights = F.softmax(alphas, dim=-1) * net.edge_weights(net.betas_normal).detach()[:, None]
    else:  # DARTS, EmoNAS: softmax op weights
        weights = F.softmax(alphas, dim=-1)
    weights = weights.numpy()
    none = net.primitives.index('none') if 'none' in net.primitives else None  # EmoNAS has none
    expected, start, n = [], 0, 2
    for i in range(4):  # the references' _parse, verbatim in logic
        W = weights[start:start + n].copy()
        edges = sorted(range(i + 2), key=lambda x: -max(W[x][k] for k in range(len(W[x])) if k != none))[:2]
        for j in edges:
            k_best = None
            for k in range(len(W[j])):
                if k != none and (k_best is None or W[j][k] > W[j][k_best]):
                    k_best = k
            expected.append((net.primitives[k_best], j))
        start, n = start + n, n + 1
    assert net.genotype().normal == expected


@pytest.mark.parametrize('method, expected', [
    # sigmoid: edge 0's op is the strongest (sigmoid(2) > sigmoid(1.9)); node 1's edge weights favour edge 4
    ('gla_fernet', [('sep_conv_3x3', 0), ('sep_conv_5x5', 1), ('dil_conv_3x3', 2), ('max_pool_3x3', 0)]),
    # softmax: edge 1's op takes all its weight, edge 0's competes with 7 others; edge weights as above
    ('pc_darts', [('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('dil_conv_3x3', 2), ('max_pool_3x3', 0)]),
    # no edge weights: node 1 keeps its two strongest operations, edge 2's then edge 4's
    ('darts', [('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('max_pool_3x3', 0), ('dil_conv_3x3', 2)]),
    ('emonas', [('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('max_pool_3x3', 0), ('dil_conv_3x3', 2)]),
])
def test_genotype_derivation_follows_each_methods_weights(method, expected):
    net = tiny_supernet(method=method)
    alphas, betas = torch.zeros(14, len(net.primitives)), torch.zeros(14)

    def op(name):
        return net.primitives.index(name)
    alphas[0, op('sep_conv_3x3')] = 2.
    alphas[1] = -10.
    alphas[1, op('sep_conv_5x5')] = 1.9
    alphas[2, op('max_pool_3x3')], alphas[4, op('dil_conv_3x3')] = 3., 2.9
    alphas[3, op('skip_connect')] = 1.
    if 'none' in net.primitives:
        alphas[3, op('none')] = 10.  # `none` dominates edge 3 and is never selected
    betas[4] = 2.
    set_arch(net, alphas, betas)
    genotype = net.genotype()
    assert genotype.normal[:4] == expected
    assert all(name in net.primitives and name != 'none' for name, _ in genotype.normal + genotype.reduce)


@pytest.mark.parametrize('method', METHODS)
def test_first_order_architect_changes_only_architecture(method):
    net = tiny_supernet(method=method)
    optimizer = torch.optim.SGD(net.weight_parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
    arch_step = Architect(net, optimizer, 6e-4, 1e-3)
    weights_before = [p.detach().clone() for p in net.weight_parameters()]
    arch_before = [p.detach().clone() for p in net.arch_parameters()]
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 7, (4,))
    arch_step.step((x, y), (x, y), unrolled=False)
    assert all(torch.equal(a, b) for a, b in zip(weights_before, net.weight_parameters()))
    assert all(not torch.equal(a, b) for a, b in zip(arch_before, net.arch_parameters()))
    assert all(p.grad is None for p in net.weight_parameters())


@pytest.mark.parametrize('method', ['gla_fernet', 'darts'])
def test_unrolled_gradient_matches_autograd_through_virtual_step(monkeypatch, method):
    # A tiny finite-difference step in float64, so that no ReLU or max-pool kink is crossed.
    monkeypatch.setattr(architect, 'HESSIAN_EPSILON', 1e-6)
    torch.manual_seed(0)
    # 2 steps per cell (5 edges, not 14): the same derivation, a third of the work
    net = sequential_search.Network(4, 3, 3, image_size=8, steps=2, multiplier=2,
                                    **{**preset(method), 'k': min(preset(method)['k'], 2)})
    net = net.double()
    optimizer = torch.optim.SGD(net.weight_parameters(), 0.05, momentum=0.9, weight_decay=3e-4)
    x_train, y_train = torch.randn(4, 3, 8, 8, dtype=torch.double), torch.randint(0, 3, (4,))
    x_valid, y_valid = torch.randn(4, 3, 8, 8, dtype=torch.double), torch.randint(0, 3, (4,))
    F.cross_entropy(net(x_train), y_train).backward()  # give the optimizer a momentum buffer
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    eta = 0.05
    arch_step = Architect(net, optimizer, 6e-4, 1e-3)
    _, grads = arch_step.unrolled_gradients((x_train, y_train), (x_valid, y_valid))

    # Exact: differentiate the validation loss through the virtual step with create_graph.
    names, weights = zip(*net.named_weight_parameters())
    weight_grads = torch.autograd.grad(F.cross_entropy(net(x_train), y_train), weights, create_graph=True)
    unrolled = {n: w - eta * (optimizer.state[w]['momentum_buffer'] * 0.9 + g + 3e-4 * w)
                for n, w, g in zip(names, weights, weight_grads)}
    valid_loss = F.cross_entropy(torch.func.functional_call(net, unrolled, (x_valid,), strict=False), y_valid)
    exact = torch.autograd.grad(valid_loss, net.arch_parameters())
    for ours, reference in zip(grads, exact):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize('name', UNIQUE_GENOTYPES)
@pytest.mark.parametrize('auxiliary', [False, True])
def test_every_named_genotype_trains(name, auxiliary):
    torch.manual_seed(0)
    net = model.Network(8, 7, 5, auxiliary, genotypes.named_genotypes()[name])
    net.drop_path_prob.fill_(0.2)
    logits, logits_aux = net(torch.randn(2, 3, 48, 48))
    assert logits.shape == (2, 7) and (logits_aux is not None) == auxiliary
    loss = F.cross_entropy(logits, torch.tensor([0, 1]))
    if auxiliary:
        loss = loss + 0.4 * F.cross_entropy(logits_aux, torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    net.eval()
    assert net(torch.randn(1, 3, 48, 48))[1] is None


@pytest.mark.parametrize('size', [48, 64, 100, 112])
def test_image_sizes_divisible_by_four(size):
    x = torch.randn(2, 3, size, size)
    for cls in SUPERNETS:
        assert tiny_supernet(cls, image_size=size)(x).shape == (2, 7)
    net = model.Network(8, 7, 5, True, genotypes.GLA_FERNet, image_size=size)
    logits, logits_aux = net(x)
    assert logits.shape == logits_aux.shape == (2, 7)


@pytest.mark.parametrize('size', [50, 30, 47])
def test_other_image_sizes_refused_at_construction(size):
    for build in [lambda: sequential_search.Network(8, 7, 3, image_size=size),
                  lambda: random_search.Network(8, 7, 3, image_size=size),
                  lambda: model.Network(8, 7, 5, False, genotypes.GLA_FERNet, image_size=size)]:
        with pytest.raises(ValueError, match='multiples of 4'):
            build()
    with pytest.raises(ValueError, match='multiples of 4'):
        tiny_supernet()(torch.randn(1, 3, size, size))


def test_drop_path_zeroes_whole_samples_and_rescales_the_rest():
    torch.manual_seed(0)
    x = torch.ones(10000, 2, 3, 3)
    dropped = model.drop_path(x, torch.tensor(0.3))
    per_sample = dropped.flatten(1)
    assert (per_sample == per_sample[:, :1]).all()  # a sample is dropped or kept whole
    values = per_sample[:, 0].unique()
    assert len(values) == 2 and values[0] == 0 and values[1].item() == pytest.approx(1 / 0.7)
    assert abs(dropped.mean().item() - 1.) < 0.03


def test_drop_path_never_drops_identity_edges(monkeypatch):
    # A normal cell whose every edge is skip_connect (an identity at stride 1): drop-path must leave it alone, so
    # even a drop probability near 1 changes nothing in training mode.
    identity = genotypes.Genotype(normal=[('skip_connect', 0), ('skip_connect', 1)] * 4, normal_concat=range(2, 6),
                                  reduce=genotypes.GLA_FERNet.reduce, reduce_concat=range(2, 6))
    torch.manual_seed(0)
    cell = model.Cell(identity, 8, 8, 8, reduction=False, reduction_prev=False).train()
    s0, s1 = torch.randn(6, 8, 4, 4), torch.randn(6, 8, 4, 4)
    never, almost_always = torch.tensor(0.0), torch.tensor(0.99)
    torch.testing.assert_close(cell(s0, s1, almost_always), cell(s0, s1, never))
    drops = model.Cell(genotypes.GLA_FERNet, 8, 8, 8, reduction=False, reduction_prev=False).train()
    at_zero = drops(s0, s1, never)
    assert not torch.allclose(drops(s0, s1, almost_always), at_zero)  # the other ops do drop
    with monkeypatch.context() as patch:
        patch.setattr(model, 'drop_path', lambda h, p: h)
        assert torch.equal(drops(s0, s1, almost_always), at_zero)  # and probability 0 changes nothing


def test_no_unconditional_cuda_calls():
    root = pathlib.Path(__file__).resolve().parent.parent
    for path in root.glob('*.py'):
        assert not re.search(r'\.cuda\(', path.read_text()), path.name  # .cuda(), .cuda(0), .cuda(device)


@pytest.mark.parametrize('name', sorted(genotypes.named_genotypes()))
def test_parse_genotype_round_trips(name):
    genotype = genotypes.named_genotypes()[name]
    parsed = parse_genotype(genotypes.format_genotype(genotype))
    assert parsed.normal == list(genotype.normal) and list(parsed.normal_concat) == list(genotype.normal_concat)
    assert parsed.reduce == list(genotype.reduce) and list(parsed.reduce_concat) == list(genotype.reduce_concat)


def test_parse_genotype_accepts_log_line_and_lists():
    text = ("genotype = Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('sep_conv_3x3', 0), ('dil_conv_3x3', 2), "
            "('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 4)], normal_concat=[2, 3, 4, 5], "
            "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1), ('max_pool_3x3', 0), "
            "('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)], reduce_concat=range(2, 6))")
    genotype = parse_genotype(text)
    assert genotype.normal[3] == ('dil_conv_3x3', 2) and list(genotype.reduce_concat) == [2, 3, 4, 5]


@pytest.mark.parametrize('text, message', [
    ("Genotype(normal=[('sep_conv_9x9', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "unknown operation 'sep_conv_9x9'.*valid names:.*sep_conv_3x3"),
    ("Genotype(normal=[('none', 0), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", "unknown operation 'none'"),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 2)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", 'input index 2 out of range for node 0'),
    ("Genotype(normal=[('sep_conv_3x3', 0), ('skip_connect', 1), ('skip_connect', 1)], normal_concat=[2], "
     "reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1)], reduce_concat=[2])", 'even number'),
    ("__import__('os').system('echo owned')", 'expected Genotype'),
    ("Genotype(normal=[(__import__('os').system('echo owned'), 0)], normal_concat=[2], reduce=[], reduce_concat=[2])",
     'must be a literal'),
    ("Genotype(normal=[('sep_conv_3x3', 0)", 'cannot parse'),
])
def test_parse_genotype_rejects_bad_text(text, message):
    with pytest.raises(UserError, match=message):
        parse_genotype(text)


def test_unknown_architecture_name_lists_choices():
    with pytest.raises(UserError, match='GLA_FERNet'):
        genotypes.genotype_by_name('NOPE')
    assert genotypes.genotype_by_name('PCDARTS') is genotypes.GLA_FERNet is genotypes.ARC


@pytest.mark.parametrize('size', [8, 16])
def test_factorized_reduce_equals_strided_convolutions(size):
    from operations import FactorizedReduce
    torch.manual_seed(0)
    op = FactorizedReduce(4, 6)
    x = torch.randn(2, 4, size, size)
    y = F.relu(x)
    # DARTS' definition: two 1x1 convolutions of stride 2, the second of the input shifted by one pixel
    expected = op.bn(torch.cat([F.conv2d(y, op.conv_1.weight, stride=2),
                                F.conv2d(y[:, :, 1:, 1:], op.conv_2.weight, stride=2)], dim=1))
    torch.testing.assert_close(op(x), expected)


def test_channels_last_supernet_backward_on_cpu():
    net = tiny_supernet().to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    F.cross_entropy(net(x), torch.tensor([0, 1, 2, 3])).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.weight_parameters())


@pytest.mark.parametrize('name', UNIQUE_GENOTYPES)
def test_every_named_genotype_trains_channels_last(name):
    torch.manual_seed(0)
    net = model.Network(4, 7, 3, True, genotypes.named_genotypes()[name], image_size=16)
    net = net.to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 16, 16).contiguous(memory_format=torch.channels_last)
    logits, logits_aux = net(x)
    (F.cross_entropy(logits, torch.tensor([0, 1])) + F.cross_entropy(logits_aux, torch.tensor([0, 1]))).backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize('cls', SUPERNETS)
def test_search_step_under_bf16_autocast_stays_close_to_fp32(cls):
    from train_search import search_step
    x, y = torch.randn(8, 3, 16, 16), torch.randint(0, 7, (8,))
    results = {}
    for amp_dtype in (None, torch.bfloat16):
        net = tiny_supernet(cls)
        optimizer = torch.optim.SGD(net.weight_parameters(), 0.1, momentum=0.9, weight_decay=3e-4)
        update = WeightUpdate(net.weight_parameters(), optimizer, torch.amp.GradScaler('cpu', enabled=False), 5.0,
                              amp_dtype)
        torch.manual_seed(3)  # the same channel permutations for the random variant
        _, loss = search_step(net, Architect(net, optimizer, 6e-4, 1e-3), update, (x, y), (x, y), False)
        results[amp_dtype] = loss, [p.detach().clone() for p in net.arch_parameters()]
    (loss, arch), (amp_loss, amp_arch) = results[None], results[torch.bfloat16]
    assert torch.isfinite(amp_loss) and abs(amp_loss - loss) < 0.05 * loss
    # Adam's first step moves each architecture parameter by about lr along its gradient's sign: the two
    # precisions must agree on that sign almost everywhere (tiny gradients may flip).
    initial = torch.cat([p.detach().flatten() for p in tiny_supernet(cls).arch_parameters()])
    moved, amp_moved = (torch.cat([p.flatten() for p in a]) - initial for a in (arch, amp_arch))
    assert torch.isfinite(amp_moved).all()
    assert (moved.sign() == amp_moved.sign()).float().mean() > 0.9


def test_train_step_under_bf16_autocast_stays_close_to_fp32():
    import argparse
    from noise import CrossEntropy
    x, y = torch.randn(4, 3, 16, 16), torch.randint(0, 7, (4,))
    cross_entropy = CrossEntropy(argparse.Namespace(label_smoothing=0.0, auxiliary_weight=0.4), y, None, None).loss
    losses = []
    for amp_dtype in (None, torch.bfloat16):
        torch.manual_seed(0)
        net = model.Network(8, 7, 3, True, genotypes.GLA_FERNet, image_size=16)
        optimizer = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
        update = WeightUpdate(list(net.parameters()), optimizer, torch.amp.GradScaler('cpu', enabled=False), 5.0,
                              amp_dtype)
        _, loss, _ = weight_step(net, update, (x,), (y,), cross_entropy)
        assert all(torch.isfinite(p).all() for p in net.parameters())
        losses.append(loss)
    assert abs(losses[1] - losses[0]) < 0.05 * losses[0]
