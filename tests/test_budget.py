"""A search for a budget: the expected cost of architecture weights against the exact cost of the network train.py
builds, the penalty, latency tables, and a budgeted search end to end (resume included)."""
import argparse
import json
import os
import random
import re
import subprocess
import sys

import pytest
import torch

import baselines
import budget
import cli
import genotypes
import run_folder
import train
import train_search
import utils
from architect import Architect
from conftest import make_run
from errors import UserError
from model_search_softmax_sigmoid import node_edge_slices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPERNET = dict(init_channels=8, layers=3, image_size=16)
TINY_TARGET = ['--target_channels', '8', '--target_layers', '3']
SEARCH = ['--epochs', '3', '--warmup_epochs', '1', '--init_channels', '8', '--layers', '3', *TINY_TARGET]


def random_genotype(primitives, rng):
    """A random genotype of the operations a search may derive: per node two distinct edges, lower input first (the
    order the supernet's derivation gives two equally strong edges)."""
    def gene():
        result = []
        for node in node_edge_slices(budget.STEPS):
            for j in sorted(rng.sample(range(node.stop - node.start), 2)):
                result.append((rng.choice([p for p in primitives if p != 'none']), j))
        return result
    return genotypes.Genotype(gene(), range(2, 6), gene(), range(2, 6))


def selected_weights(genotype, primitives, rng):
    """Weights that select `genotype` exactly: every edge's op weights one-hot (an edge that is not chosen on a random
    op), edge weights 1/2 on each node's two chosen edges and 0 elsewhere."""
    weights = {}
    for cell in ('normal', 'reduce'):
        op_weights, edge_weights = torch.zeros(budget.NUM_EDGES, len(primitives)), torch.zeros(budget.NUM_EDGES)
        op_weights[torch.arange(budget.NUM_EDGES), torch.randint(len(primitives), (budget.NUM_EDGES,))] = 1
        for i, (name, j) in enumerate(getattr(genotype, cell)):
            e = node_edge_slices(budget.STEPS)[i // 2].start + j
            op_weights[e] = 0
            op_weights[e, primitives.index(name)] = 1
            edge_weights[e] = 0.5
        weights[cell] = (op_weights, edge_weights)
    return weights


def select(supernet, genotype):
    """Set a supernet's architecture parameters so that its own weights select `genotype` (to float precision):
    logits of +-30. A method without edge weights drops an edge through `none` (DARTS); EmoNAS, which has neither,
    cannot drop one (returns False)."""
    primitives = supernet.primitives
    for cell in ('normal', 'reduce'):
        alphas = torch.full((budget.NUM_EDGES, len(primitives)), -30.)
        betas = torch.full((budget.NUM_EDGES,), -30.)
        if not supernet.has_edge_weights:
            if 'none' not in primitives:
                return False
            alphas[:, primitives.index('none')] = 30.
        for i, (name, j) in enumerate(getattr(genotype, cell)):
            e = node_edge_slices(budget.STEPS)[i // 2].start + j
            alphas[e] = -30.
            alphas[e, primitives.index(name)] = 30.
            betas[e] = 30.
        with torch.no_grad():
            getattr(supernet, f'alphas_{cell}').copy_(alphas)
            if supernet.has_edge_weights:
                getattr(supernet, f'betas_{cell}').copy_(betas)
    return True


@pytest.mark.parametrize('sampling', ['sequential', 'random'])
@pytest.mark.parametrize('method', list(genotypes.METHODS))
def test_the_expected_cost_of_weights_that_select_a_genotype_is_its_networks_exact_cost(method, sampling):
    settings = genotypes.METHODS[method]['supernet']
    if sampling == 'random' and settings['k'] == 1:
        pytest.skip('random sampling needs k above 1')
    supernet = train_search.SUPERNETS[sampling](SUPERNET['init_channels'], 7, SUPERNET['layers'],
                                                image_size=SUPERNET['image_size'],
                                                **genotypes.supernet_settings(settings))
    primitives = supernet.primitives
    rng = random.Random(f'{method}-{sampling}')
    torch.manual_seed(0)
    targets = [budget.Target(36, genotypes.METHODS[method]['train'].get('layers', 8), 48),
               budget.Target(16, 4, 32, stem_stride=2, stem_multiplier=2, num_classes=8)]
    for target in targets:
        expected = budget.ExpectedCost(target, primitives)
        for _ in range(6):
            genotype = random_genotype(primitives, rng)
            exact = budget.genotype_cost(target, genotype)
            costs = expected(selected_weights(genotype, primitives, rng))
            assert {m: float(v) for m, v in costs.items()} == exact
            if select(supernet, genotype):  # through the method's own sigmoid / softmax weights
                assert supernet.genotype().normal == genotype.normal
                assert supernet.genotype().reduce == genotype.reduce
                with torch.no_grad():
                    costs = expected(budget.network_weights(supernet))
                assert {m: round(float(v)) for m, v in costs.items()} == exact
    # the counter the budget uses is train.py's and benchmark.py's (utils.count_flops)
    network = targets[1].network(genotype)
    assert exact['macs'] == utils.count_flops(network, 32) // 2 and exact['params'] == utils.count_parameters(network)


@pytest.mark.parametrize('method', list(genotypes.METHODS))
def test_the_derived_cost_is_the_cost_of_the_genotype_the_supernet_derives(method):
    settings = genotypes.supernet_settings(genotypes.METHODS[method]['supernet'])
    target = budget.Target(16, 4, 32, num_classes=7)
    torch.manual_seed(0)
    for _ in range(4):
        supernet = train_search.SUPERNETS['sequential'](8, 7, 3, image_size=16, **settings)
        with torch.no_grad():
            for parameter in supernet.arch_parameters():
                parameter.normal_()
        expected = budget.ExpectedCost(target, supernet.primitives)
        with torch.no_grad():
            derived = expected(budget.network_weights(supernet), derived=True)
        assert {m: round(float(v)) for m, v in derived.items()} == budget.genotype_cost(target, supernet.genotype())


def test_the_fixed_part_and_the_least_cost_bound_what_operations_can_reach():
    target = budget.Target(36, 8, 48)
    released = budget.genotype_cost(target, genotypes.GLA_FERNet)
    assert released == {'params': 1376899, 'macs': 523588032}  # docs/budget.md, docs/performance.md
    assert budget.fixed_cost(target) == {'params': 493459, 'macs': 224699328}
    strided = budget.Target(36, 8, 48, stem_stride=2)
    assert budget.genotype_cost(strided, genotypes.GLA_FERNet)['macs'] == 130900032
    expected = budget.ExpectedCost(target, genotypes.PRIMITIVES)
    assert expected.least('macs') == 224699328  # pools and skips: no multiply-adds


@pytest.mark.parametrize('of_genotype', [True, False])
def test_the_penalty_lowers_the_expected_cost_and_the_unconstrained_search_does_not(of_genotype):
    def run(penalised):
        torch.manual_seed(0)
        supernet = train_search.SUPERNETS['sequential'](8, 7, 3, image_size=16)
        costs = budget.SearchBudget(budget.Target(8, 3, 16), supernet.primitives, {}, 1.0)
        start = float(costs.expected(budget.network_weights(supernet))['macs'].detach())
        # below what any genotype costs: the penalty pulls in every step, in both forms
        penalty = budget.BudgetPenalty(costs.expected, {'macs': 0.1 * start}, 1.0, of_genotype) if penalised else None
        optimizer = torch.optim.SGD(supernet.weight_parameters(), 0.1)
        architect = Architect(supernet, optimizer, 3e-2, 1e-3, penalty=penalty)
        generator = torch.Generator().manual_seed(1)
        for _ in range(10):
            x, y = torch.randn(8, 3, 16, 16, generator=generator), torch.randint(0, 7, (8,), generator=generator)
            architect.step((x, y), (x, y), unrolled=False)
        return float(costs.expected(budget.network_weights(supernet))['macs'].detach()) / start
    assert run(True) < 0.95  # 0.943 measured: 5.7% less in 10 steps
    assert abs(run(False) - 1) < 0.005  # 0.998


def test_budget_flags_parse_counts_with_suffixes_and_refuse_a_latency_budget_without_a_table():
    assert cli.quantity('300k') == 3e5 and cli.quantity('1.5M') == 1.5e6 and cli.quantity('2e8') == 2e8
    for bad in ('abc', '-3k', '0'):
        with pytest.raises(argparse.ArgumentTypeError):
            cli.quantity(bad)
    with pytest.raises(SystemExit):
        cli.parse(train_search.parser, train_search.check_args, train_search.recipe, ['--budget_latency_ms', '5'])
    args = cli.parse(train_search.parser, train_search.check_args, train_search.recipe, ['--method', 'emonas'])
    assert (args.target_channels, args.target_layers, args.target_image_size) == (36, 5, 48)  # its train.py recipe


def fake_timer():
    """A deterministic timer: runs the call once and returns 0.5, 1.0, 1.5... ms, so that a table's values are known."""
    calls = []

    def time_ms(fn):
        fn()
        calls.append(0.5 * (len(calls) + 1))
        return calls[-1]
    return time_ms


def test_a_latency_table_round_trips_and_is_refused_for_another_network(tmp_path):
    target = budget.Target(8, 3, 16)
    table = budget.measure_latency_table(target, genotypes.PRIMITIVES, torch.device('cpu'), fake_timer())
    path = str(tmp_path / 'latency.json')
    run_folder.write_json(path, table)
    latency = budget.LatencyTable.read(path)
    latency.check(target, genotypes.PRIMITIVES)
    genotype = genotypes.GLA_FERNet
    edges = list(budget.chosen_edges(target, genotype))
    assert len(edges) == 3 * 8
    by_shape = {(r['op'], r['channels'], r['stride'], r['size']): r['ms'] for r in table['operations']}
    assert latency.genotype_ms(genotype) == pytest.approx(table['fixed_ms'] + sum(by_shape[e] for e in edges))
    # the latency E[cost] of selected weights is the table's prediction for the genotype
    expected = budget.ExpectedCost(target, genotypes.PRIMITIVES, ('latency_ms',), latency)
    selected = selected_weights(genotype, genotypes.PRIMITIVES, random.Random(0))
    assert float(expected(selected)['latency_ms']) == pytest.approx(latency.genotype_ms(genotype))
    with pytest.raises(UserError, match=r'measured for another network \(channels: table 8, search 16'):
        latency.check(budget.Target(16, 3, 16), genotypes.PRIMITIVES)
    with pytest.raises(UserError, match='has no latency of sep_conv_7x7'):
        latency.check(target, genotypes.PRIMITIVES + ['sep_conv_7x7'])
    (tmp_path / 'other.json').write_text(json.dumps({'operations': []}))
    with pytest.raises(UserError, match='is not a latency table'):
        budget.LatencyTable.read(str(tmp_path / 'other.json'))


def test_a_latency_budget_steers_a_search_and_an_unreachable_budget_is_said_at_the_start_and_the_end(
        dataset, tmp_path, capsys):
    target = budget.Target(8, 3, 16)
    table = budget.measure_latency_table(target, genotypes.PRIMITIVES, torch.device('cpu'), fake_timer())
    run_folder.write_json(str(tmp_path / 'latency.json'), table)
    folder = make_run(train_search, ['--data', dataset, *SEARCH, '--latency_table', str(tmp_path / 'latency.json'),
                                     '--budget_latency_ms', '1000', '--budget_params', '1k'], tmp_path)
    out = capsys.readouterr().out
    assert 'WARNING: the params budget 0.001M is below the least any genotype costs at the target' in out
    assert 'WARNING: the searched genotype is over budget: params by' in out
    latency = budget.LatencyTable(table)
    records = json.load(open(os.path.join(folder, run_folder.COSTS)))
    weights = json.load(open(os.path.join(folder, run_folder.ARCHITECTURE_WEIGHTS)))
    assert [r['epoch'] for r in records] == [0, 1, 2]
    text = open(os.path.join(folder, run_folder.GENOTYPE)).read().strip()
    best = next(r for r in records if r['genotype'] == text and r['epoch'] >= 1)
    genotype = genotypes.parse_genotype(text)
    assert best['exact'] == {**budget.genotype_cost(target, genotype), 'latency_ms': latency.genotype_ms(genotype)}
    assert set(best['over']) == {'params'} and len(weights) == 3
    method = json.load(open(os.path.join(folder, run_folder.METHOD)))
    assert method['target'] == {'channels': 8, 'layers': 3, 'image_size': 16, 'stem_stride': 1,
                                'stem_multiplier': 3, 'num_classes': 7}
    assert method['budgets'] == {'params': 1000.0, 'latency_ms': 1000.0}
    assert method['genotype_epoch'] == best['epoch'] and method['genotype_cost']['over'] == best['over']
    # train.py --genotype_file builds the target network the costs are for
    args = cli.parse(train.parser, train.check_args, train.recipe, ['--genotype_file', folder])
    assert (args.init_channels, args.layers, args.image_size, args.stem_stride) == (8, 3, 16, 1)


def test_a_budgeted_search_resumes_exactly(dataset, tmp_path, monkeypatch):
    flags = ['--data', dataset, *SEARCH, '--budget_macs', '1.2M', '--budget_weight', '5']
    full = make_run(train_search, [*flags, '--save', 'FULL'], tmp_path)
    killed = make_run(train_search, [*flags, '--save', 'KILL'], tmp_path, interrupt_after=1)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, 'argv', ['train_search.py', '--resume', killed])  # the resume rule reads the command line
    args = cli.parse(train_search.parser, train_search.check_args, train_search.recipe, ['--resume', killed])
    train_search.main(args, utils.Log())
    for name in (run_folder.GENOTYPE, run_folder.COSTS):
        assert open(os.path.join(full, name)).read() == open(os.path.join(killed, name)).read()
    a, b = (torch.load(os.path.join(f, run_folder.WEIGHTS), weights_only=True) for f in (full, killed))
    assert all(torch.equal(a[k], b[k]) for k in a)
    log = open(os.path.join(full, run_folder.LOG)).read()
    assert 'budgets: macs 1.200M, penalty weight 5.0' in log and 'cost: params E' in log


def test_a_stem_stride_the_image_size_does_not_allow_is_refused(capsys):
    with pytest.raises(UserError, match='multiples of 8 and at least 16, because the stem divides them by 2'):
        budget.Target(36, 8, 44, stem_stride=2)
    for script, flags in ((train, ['--stem_stride', '2', '--image_size', '44']),
                          (train_search, ['--target_stem_stride', '2', '--image_size', '44'])):
        with pytest.raises(SystemExit):
            cli.parse(script.parser, script.check_args, script.recipe, flags)
        assert 'image size 44 is not supported with stem stride 2' in capsys.readouterr().err


def test_benchmark_writes_a_latency_table_a_search_reads(tmp_path):
    path = tmp_path / 'cpu.json'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'benchmark.py'), '--latency_table', str(path),
                             '--eval_channels', '8', '--layers', '3', '--image_size', '16', '--steps', '1',
                             '--repeats', '1', '--device', 'cpu'], capture_output=True, text=True, timeout=120,
                            env={**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONPATH': ROOT})
    assert result.returncode == 0, result.stderr[-2000:]
    assert re.search(r'GLA_FERNet: the table predicts [\d.]+ ms, measured [\d.]+ ms', result.stdout)
    latency = budget.LatencyTable.read(str(path))
    latency.check(budget.Target(8, 3, 16), genotypes.PRIMITIVES)
    assert len(latency.ms) == 7 * 5 and all(ms > 0 for ms in latency.ms.values())  # 7 ops at 5 (shape, stride)
    assert latency.content['device'] and latency.content['torch'] == torch.__version__


def test_train_builds_the_stem_its_flags_give_and_counts_a_quarter_of_the_multiply_adds():
    args = cli.parse(train.parser, train.check_args, train.recipe, ['--stem_stride', '2', '--stem_multiplier', '2'])
    network = baselines.create_model('gla_fernet', 7, **baselines.model_options(args, genotypes.GLA_FERNet))
    assert network.stem[0].stride == (2, 2) and network.stem[0].out_channels == 2 * args.init_channels
    target = budget.Target(args.init_channels, args.layers, args.image_size, 2, 2)
    assert budget.genotype_cost(target, genotypes.GLA_FERNet)['macs'] == utils.count_flops(network, 48) // 2


def test_a_genotype_within_budget_beats_a_more_accurate_one_over_it_and_the_nearest_miss_beats_the_rest():
    def epoch(accuracy, **over):
        return {'epoch': 0, 'accuracy': accuracy, 'genotype': 'G', 'cost': {'over': over}}
    none_yet = {'epoch': -1, 'accuracy': -1.0, 'genotype': None}
    assert train_search.better(epoch(10.0, macs=0.5), none_yet)
    assert train_search.better(epoch(10.0), epoch(90.0, macs=0.01))
    assert not train_search.better(epoch(90.0, macs=0.01), epoch(10.0))
    assert train_search.better(epoch(10.0, macs=0.02, params=0.01), epoch(90.0, macs=0.03))
    assert train_search.better(epoch(60.0), epoch(50.0)) and not train_search.better(epoch(50.0), epoch(60.0))
    assert train_search.better(epoch(60.0), {'epoch': 3, 'accuracy': 50.0, 'genotype': 'G'})  # an older checkpoint


def test_costs_draw_nothing_from_the_runs_random_stream():
    budget.operation_cost.cache_clear()
    budget.fixed_cost.cache_clear()
    torch.manual_seed(0)
    before = torch.get_rng_state()
    budget.SearchBudget(budget.Target(8, 3, 16), genotypes.PRIMITIVES, {'macs': 1e6}, 1.0)
    budget.genotype_cost(budget.Target(8, 3, 16), genotypes.GLA_FERNet)
    assert torch.equal(torch.get_rng_state(), before)  # a run's draws do not depend on what was cached before it
