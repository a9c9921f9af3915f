"""--compile's whole-step compilation (training_step.CompiledStep): one graph without a break, one compilation per step and
input shape, the eager step's numbers, nothing read back to the host, an exact resume.

The graphs are captured as on a GPU (Dynamo, then AOT autograd's forward-backward graph) but run by the 'aot_eager'
backend: inductor's code generation for even a tiny supernet takes many minutes on a CPU."""
import functools
import json
import os
import sys

import pytest
import torch
import torch._dynamo
from torch._dynamo.backends.common import aot_autograd
from torch._dynamo.utils import counters

import augment
import baselines
import cli
import genotypes
import model
import model_search_ran_softmax_sigmoid as random_search
import model_search_softmax_sigmoid as sequential_search
import noise
import train
import train_search
import training_step
import utils
from architect import Architect
from conftest import make_run

# Fewer candidate operations than the methods' 7 or 8 (a third of the graph to capture), of every kind: none,
# a pool (with its BatchNorm), the identity, a separable convolution.
FEW_OPS = ('none', 'max_pool_3x3', 'skip_connect', 'sep_conv_3x3')
# Every kind of supernet the methods make: sigmoid op weights, edge weights and partial channels (gla_fernet), softmax
# op weights over whole edges (darts), random sampling. pc_darts (softmax, edge weights, partial channels) and emonas
# (darts' supernet, fewer cells) combine the same parts: their graphs are not captured again (a minute of the suite).
METHOD_SUPERNETS = ([pytest.param(sequential_search.Network, method, id=f'sequential-{method}')
                     for method in ('gla_fernet', 'darts')]
                    + [pytest.param(random_search.Network, 'gla_fernet', id='random-gla_fernet')])


@pytest.fixture(autouse=True)
def fresh_compiler(monkeypatch):
    """Dynamo's caches and counters emptied, as in a new process; its settings restored afterwards."""
    monkeypatch.setattr(training_step, 'COMPILE_BACKEND', 'aot_eager')
    torch._dynamo.reset()
    counters.clear()
    with torch._dynamo.config.patch(trace_autograd_ops=False):  # CompiledStep turns it on
        yield
    torch._dynamo.reset()


def graphs():
    """(graphs compiled, graph breaks) since the last reset. A recompilation (a guard that failed) would be one
    graph more."""
    return counters['stats']['unique_graphs'], sum(counters['graph_break'].values())


def supernet(cls, method):
    torch.manual_seed(0)
    settings = {name: value for name, value in genotypes.METHODS[method]['supernet'].items() if name != 'layers'}
    settings['primitives'] = [p for p in settings['primitives'] if p in FEW_OPS]
    return cls(4, 7, 3, image_size=16, steps=2, multiplier=2, **settings)


def search_steps(cls, method, compiled, unrolled=False):
    """Two warm-up steps and two search steps from the same start on the same batches; the supernet and its
    optimizers after them."""
    net = supernet(cls, method)
    optimizer = torch.optim.SGD(net.weight_parameters(), 0.025, momentum=0.9, weight_decay=3e-4)
    update = training_step.WeightUpdate(net.weight_parameters(), optimizer, torch.amp.GradScaler('cpu', enabled=False), 5.0)
    architect = Architect(net, optimizer, 6e-4, 1e-3)
    warmup = functools.partial(train_search.weight_step, net, update)
    search = functools.partial(train_search.search_step, net, architect, update, unrolled=unrolled)
    if compiled:
        update.functional = True
        warmup, search = (training_step.CompiledStep(fn, [optimizer, architect.optimizer], torch.device('cpu'), print)
                          for fn in (warmup, search))
    generator = torch.Generator().manual_seed(1)
    batches = [(torch.randn(4, 3, 16, 16, generator=generator), torch.randint(0, 7, (4,), generator=generator))
               for _ in range(6)]
    torch.manual_seed(5)  # the same channel permutations in both
    for epoch, lr in enumerate([0.025, 0.02]):  # a schedule changes the learning rate: no recompilation
        for group in optimizer.param_groups:
            group['lr'] = lr
        warmup(batches[epoch])
        search(batches[2 + 2 * epoch], batches[3 + 2 * epoch])
    return net, optimizer, architect.optimizer


def capturing_backend(graphs):
    """'aot_eager' that also keeps the graphs AOT autograd hands to the compiler."""
    def keep(graph, example_inputs):
        graphs.append(graph)
        return graph
    return aot_autograd(fw_compiler=keep)


def assert_nothing_read_back(graph):
    """What a CUDA graph cannot hold: a value read by the host (.item(), or a Python branch on a tensor: both would
    break a fullgraph compilation anyway) or a shape made of the data (nonzero, a boolean mask)."""
    for node in graph.graph.nodes:
        if node.op != 'call_function' or not isinstance(node.target, torch._ops.OpOverload):
            continue
        assert node.target is not torch.ops.aten._local_scalar_dense.default, node
        assert torch.Tag.data_dependent_output not in node.target.tags, node
        value = node.meta.get('val')
        if isinstance(value, torch.Tensor):  # (aten.index could make a shape of the data; here it does not)
            assert all(isinstance(size, int) for size in value.shape), node


@pytest.mark.parametrize('cls, method, unrolled', [*[pytest.param(*p.values, False, id=p.id) for p in METHOD_SUPERNETS],
                                                   pytest.param(sequential_search.Network, 'gla_fernet', True,
                                                                id='sequential-gla_fernet-unrolled')])
def test_compiled_search_step_is_one_graph_and_computes_the_eager_step(cls, method, unrolled):
    captured = []
    training_step.COMPILE_BACKEND = capturing_backend(captured)  # undone by fresh_compiler
    net, optimizer, arch_optimizer = search_steps(cls, method, compiled=True, unrolled=unrolled)
    assert graphs() == (2, 0)  # the warm-up step and the search step, each compiled once, unbroken
    for graph in captured:
        assert_nothing_read_back(graph)
    if cls is random_search.Network:
        assert any('rand' in str(node.target) for node in captured[1].graph.nodes), \
            'the random channel permutations are drawn inside the graph'

    eager, eager_optimizer, eager_arch_optimizer = search_steps(cls, method, compiled=False, unrolled=unrolled)
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        assert (p - q).abs().max() <= 1e-5, name
    for p, q in zip(net.weight_parameters(), eager.weight_parameters()):
        assert (optimizer.state[p]['momentum_buffer'] - eager_optimizer.state[q]['momentum_buffer']).abs().max() <= 1e-5
    for p, q in zip(net.arch_parameters(), eager.arch_parameters()):
        assert arch_optimizer.state[p]['step'] == eager_arch_optimizer.state[q]['step'] == 2
    for buffer, eager_buffer in zip(net.buffers(), eager.buffers()):  # BatchNorm statistics
        assert (buffer.double() - eager_buffer.double()).abs().max() <= 1e-5


# (candidate operations without convolutions: a smaller graph to capture)
# A budget below what any genotype costs: the penalty (the derived genotype's cost, E[cost]'s gradient) pulls in every
# architecture step of the compiled graph.
SEARCH = ['--compile', '--epochs', '2', '--warmup_epochs', '0', '--init_channels', '8', '--layers', '3',
          '--sampling', 'random', '--primitives', 'none,max_pool_3x3,skip_connect', '--budget_macs', '0.1x',
          '--target_channels', '8', '--target_layers', '3']


def test_compiled_search_resumes_exactly_without_a_graph_break_or_recompilation(dataset, tmp_path, monkeypatch):
    # A search of 2 epochs, stopped after the first and resumed (its architecture optimizer's state restored). The
    # graphs: the search step, and the evaluation's forward for its two batch shapes (the 33 held-out images are
    # batches of 16, 16 and 1). (The warm-up step is compiled in test_compiled_search_step_is_one_graph_...)
    full = make_run(train_search, ['--data', dataset, *SEARCH, '--save', 'FULL'], tmp_path)
    assert graphs() == (3, 0)
    log = open(os.path.join(full, 'log.txt')).read()
    assert log.count('step compiled into one graph') == 1 and 'running it eagerly' not in log
    assert 'budgets: macs' in log and 'OVER by' in log  # the penalty is part of the compiled step, and pulls

    torch._dynamo.reset()
    counters.clear()
    stopped = make_run(train_search, ['--data', dataset, *SEARCH, '--save', 'STOP'], tmp_path, interrupt_after=0)
    torch._dynamo.reset()  # as a new process would
    counters.clear()
    monkeypatch.setattr(sys, 'argv', ['train_search.py', '--resume', stopped])  # the resume rule reads it
    train_search.main(cli.parse(train_search.parser, argv=['--resume', stopped]), utils.Log())
    assert graphs() == (3, 0)  # the search step and the evaluation's two shapes, once each

    expected = torch.load(os.path.join(full, 'weights.pt'), weights_only=True)
    resumed = torch.load(os.path.join(stopped, 'weights.pt'), weights_only=True)
    assert expected.keys() == resumed.keys()
    for key in expected:
        assert torch.equal(expected[key], resumed[key]), key
    records = json.load(open(os.path.join(stopped, 'architecture_weights.json')))
    assert records == json.load(open(os.path.join(full, 'architecture_weights.json')))


TRAINING_NETWORKS = {'gla_fernet': lambda: model.Network(4, 7, 3, True, genotypes.GLA_FERNet, image_size=16),
                     'fgw_fer': lambda: baselines.create_model('fgw_fer', 7)}


def training_steps(compiled, method='none', network='gla_fernet', optimizer_name='sgd', epochs=3, learning_rate=None):
    """A tiny network trained `epochs` epochs of 2 steps from the same start on the same batches: GLA-FERNet with its
    auxiliary head and drop-path (random, drawn inside the graph) and label smoothing, or FGW-FER under a label-noise
    method; a real schedule changes the learning rate after each epoch; the clipping engages (max norm 0.5). Returns
    the network, its optimizer and the first step's gradient norm before clipping."""
    torch.manual_seed(0)
    net = TRAINING_NETWORKS[network]()
    args = cli.parse(train.parser, train.check_args, argv=[
        '--epochs', str(epochs), '--image_size', '16', '--noise_method', method, '--optimizer', optimizer_name,
        '--learning_rate', str(learning_rate or (0.1 if method == 'none' else 0.01)),
        *(['--label_smoothing', '0.1'] if method == 'none' else []),
        *(['--scn_relabel_epoch', '0'] if method == 'scn' else []),
        *(['--model', network] if network != 'gla_fernet' else [])])
    net = noise.network_with_heads(net, args)
    if hasattr(net, 'drop_path_prob'):
        net.drop_path_prob.fill_(0.2)
    labels = torch.randint(0, 7, (16,), generator=torch.Generator().manual_seed(2))
    method = noise.method_class(method)(args, labels.clone(), labels.clone(), augment.Augmentation())
    optimizer = train.make_optimizer(method.parameter_groups(net), args)
    scheduler = train.make_scheduler(optimizer, args)
    update = training_step.WeightUpdate(list(net.parameters()), optimizer,
                                        torch.amp.GradScaler('cpu', enabled=False), 0.5)
    step = functools.partial(training_step.weight_step, noise.TrainingForward(net, method).train(), update,
                             loss=method.loss)
    if compiled:
        update.functional = True
        step = training_step.CompiledStep(step, [optimizer], torch.device('cpu'), print)
    generator = torch.Generator().manual_seed(1)
    torch.manual_seed(5)
    for epoch in range(epochs):
        method.set_epoch(epoch)
        for index in (torch.arange(8), torch.arange(8, 16)):
            x = torch.randn(8, 3, 16, 16, generator=generator)
            logits, _, score = step(*method.batch(x, labels[index]))
            method.after_step(logits, labels[index], score, index)
        scheduler.step()
    return net, optimizer


def assert_same_training_state(net, optimizer, eager, eager_optimizer, tolerance=1e-5):
    """Parameters, buffers (BatchNorm statistics) and optimizer state (momentum, Adam's moments) within tolerance."""
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        assert (p - q).abs().max() <= tolerance, name
    for (name, buffer), eager_buffer in zip(net.named_buffers(), eager.buffers()):
        assert (buffer.double() - eager_buffer.double()).abs().max() <= tolerance, name
    for p, q in zip(net.parameters(), eager.parameters()):
        for key, value in optimizer.state[p].items():  # made beforehand where eager makes none (no gradient): zeros
            expected = eager_optimizer.state[q].get(key, torch.zeros_like(value)).double()
            assert (value.double().cpu() - expected).abs().max() <= tolerance, key
    assert [g['lr'] for g in optimizer.param_groups] == [g['lr'] for g in eager_optimizer.param_groups]


def test_compiled_training_step_is_one_graph_and_computes_the_eager_step():
    captured = []
    training_step.COMPILE_BACKEND = capturing_backend(captured)
    net, optimizer = training_steps(compiled=True)
    assert graphs() == (1, 0)  # across three learning rates of the schedule
    assert_nothing_read_back(captured[0])
    eager, eager_optimizer = training_steps(compiled=False)
    assert_same_training_state(net, optimizer, eager, eager_optimizer)


def test_the_clipping_engages_in_the_compared_steps():
    torch.manual_seed(0)
    net = TRAINING_NETWORKS['gla_fernet']()
    x, y = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(1)), torch.arange(8) % 7
    logits, aux = net.train()(x)
    loss = torch.nn.functional.cross_entropy(logits, y) + 0.4 * torch.nn.functional.cross_entropy(aux, y)
    norm = torch.nn.utils.get_total_norm(torch.autograd.grad(loss, list(net.parameters()), allow_unused=True))
    assert norm > 2 * 0.5  # training_steps clips at 0.5: it scales these gradients


@pytest.mark.parametrize('method', ['scn', 'rul', 'eac', 'nla'])
def test_every_noise_method_compiles_its_step_into_one_graph_with_the_eager_numbers(method):
    # one epoch of 2 steps (the schedule across epochs: the test above); SCN relabels from the first step, after the
    # step and outside the graph, so that its changed labels are inputs of the next step, not a recompilation
    net, optimizer = training_steps(compiled=True, method=method, network='fgw_fer', epochs=1)
    assert graphs() == (1, 0)
    eager, eager_optimizer = training_steps(compiled=False, method=method, network='fgw_fer', epochs=1)
    assert_same_training_state(net, optimizer, eager, eager_optimizer)


def test_with_adam_only_parameters_of_rounding_level_gradients_differ():
    """Adam divides each gradient by its running RMS, so a parameter whose exact gradient is zero (a convolution's bias
    before a BatchNorm, which removes it) takes steps of up to the learning rate from rounding noise alone, in either
    direction, differently in a compiled and an eager run (SGD scales that noise by the learning rate instead). Every
    other parameter, and what the network computes, agree as with SGD."""
    compiled, _ = training_steps(compiled=True, network='fgw_fer', optimizer_name='adam', epochs=2, learning_rate=1e-3)
    eager, optimizer = training_steps(compiled=False, network='fgw_fer', optimizer_name='adam', epochs=2,
                                      learning_rate=1e-3)
    rounding_level = {id(q) for q in eager.parameters() if optimizer.state[q]['exp_avg_sq'].sqrt().max() <= 1e-6}
    assert {n.rsplit('.', 1)[1] for n, q in eager.named_parameters() if id(q) in rounding_level} == {'bias'}
    for (name, p), q in zip(compiled.named_parameters(), eager.parameters()):
        assert (p - q).abs().max() <= (4 * 1e-3 if id(q) in rounding_level else 1e-5), name
    x = torch.randn(8, 3, 16, 16)
    with torch.no_grad():
        assert (compiled.eval()(x) - eager.eval()(x)).abs().max() <= 1e-4


def test_a_compiled_schedule_computes_its_learning_rates_in_float64_as_eager():
    """Cosine and exponential schedules compute each epoch's rate from the previous one: the compiled step's float32
    tensor is filled from the float64 value, never fed back into the schedule."""
    results = []
    for compiled in (True, False):
        net = torch.nn.Linear(2, 1)
        optimizer = torch.optim.SGD(net.parameters(), 0.1, momentum=0.9)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, 300)
        update = training_step.WeightUpdate(list(net.parameters()), optimizer,
                                            torch.amp.GradScaler('cpu', enabled=False), 0.0, functional=compiled)
        step = functools.partial(training_step.weight_step, net, update,
                                 loss=lambda out, y: (((out - y) ** 2).mean(), out, None))
        if compiled:
            step = training_step.CompiledStep(step, [optimizer], torch.device('cpu'), print)
        rates = []
        for _ in range(300):
            step((torch.ones(1, 2),), (torch.zeros(1, 1),))
            scheduler.step()
            rates.append(optimizer.param_groups[0]['lr'])
        results.append(rates)
    assert all(isinstance(rate, float) for rate in results[0]) and results[0] == results[1]
    assert graphs() == (1, 0)


def test_train_py_compiles_its_step_once(dataset, tmp_path):
    folder = make_run(train, ['--data', dataset, '--compile', '--arch', 'GLA_FERNet', '--init_channels', '4',
                              '--layers', '3', '--epochs', '2', '--auxiliary', '--drop_path_prob', '0.2',
                              '--label_smoothing', '0.1'], tmp_path)
    # the training step, and the test set's forward for its two batch shapes (28 images: batches of 16 and 12)
    assert graphs() == (3, 0)
    log = open(os.path.join(folder, 'log.txt')).read()
    assert log.count('step compiled into one graph') == 1 and 'running it eagerly' not in log
    assert json.load(open(os.path.join(folder, 'metrics.json')))['complete']


def test_a_step_that_cannot_be_compiled_runs_eagerly_after_a_warning(monkeypatch):
    def step(x):
        return weight.add_(x)
    weight, messages = torch.zeros(2), []

    def failing_compile(fn, **options):
        def compiled(*args):
            raise RuntimeError('no compiler here\nmore lines')
        return compiled
    monkeypatch.setattr(torch, 'compile', failing_compile)
    compiled_step = training_step.CompiledStep(step, [], torch.device('cpu'), messages.append)
    compiled_step(torch.ones(2))
    compiled_step(torch.ones(2))
    assert weight.tolist() == [2.0, 2.0]  # the failed compilation changed nothing; each call ran once, eagerly
    assert messages == ['warning: compiling the step failed (RuntimeError: no compiler here); running it eagerly']

    monkeypatch.setattr(training_step, 'configure_compiler', lambda: False)  # a torch without trace_autograd_ops
    messages.clear()
    training_step.CompiledStep(step, [], torch.device('cpu'), messages.append)(torch.ones(2))
    assert weight.tolist() == [3.0, 3.0] and 'cannot trace a backward into a graph' in messages[0]
