"""The cost of the discrete network a search derives, as a differentiable function of the supernet's architecture
weights, and the budget penalty of the architecture loss (docs/budget.md).

A budget is the cost of the network train.py builds from the genotype (model.Network at the target configuration),
not of the supernet. That network's cost is a fixed part (stem, each cell's two preprocessing convolutions, the
classifier: no operation choice changes them) plus, per cell, the cost of the operation on each of its 8 chosen edges,
which depends on the cell's channels, resolution and the edge's stride only. So per cell type the cost is a table
(edges x candidate operations), summed over the cells of that type, and the expected cost of architecture weights is

    fixed + sum over edges e of  P(e chosen) * sum over ops o of  P(o | e) * cost[e, o]

with the method's own weights: P(o | e) the edge's op weights (sigmoid for GLA-FERNet, softmax for the others) over
the operations a genotype may take (not `none`), renormalised; P(e chosen) the probability that e is one of its
node's two edges when two are drawn without replacement in proportion to each edge's strength, the quantity the
genotype ranks edges by (strongest op weight times edge weight). When the weights select one genotype exactly (one-hot
op weights, edge weights on the two chosen edges) this is that genotype's exact cost.

Parameters and multiply-adds are counted on the operations as operations.py builds them (utils.count_flops, the
figure benchmark.py and train.py print); latency comes from a latency table measured by benchmark.py --latency_table.
"""
import dataclasses
import functools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

import genotypes
import model
import run_folder
import utils
from errors import UserError
from model_search_softmax_sigmoid import node_edge_slices
from operations import OPS, check_image_size, reduction_cells

METRICS = ('params', 'macs', 'latency_ms')
UNITS = {'params': 'parameters', 'macs': 'multiply-adds', 'latency_ms': 'ms'}
LATENCY_TABLE_FORMAT = 'gla-fernet latency table'
STEPS = 4  # intermediate nodes of a cell, as the supernets and genotypes have
NUM_EDGES = sum(2 + i for i in range(STEPS))


@dataclass(frozen=True)
class Target:
    """The discrete network a budget is for: train.py's --init_channels, --layers, --image_size, --stem_stride,
    --stem_multiplier, and the dataset's classes."""
    channels: int
    layers: int
    image_size: int
    stem_stride: int = 1
    stem_multiplier: int = 3
    num_classes: int = 7

    def __post_init__(self):
        check_image_size(self.image_size, self.stem_stride)

    def cells(self):
        """(reduction, channels per node, input height = width) of each cell, in order."""
        cells, channels, size = [], self.channels, self.image_size // self.stem_stride
        for i in range(self.layers):
            reduction = i in reduction_cells(self.layers)
            channels *= 2 if reduction else 1
            cells.append((reduction, channels, size))
            size //= 2 if reduction else 1
        return cells

    def network(self, genotype):
        return model.Network(self.channels, self.num_classes, self.layers, False, genotype,
                             stem_multiplier=self.stem_multiplier, image_size=self.image_size,
                             stem_stride=self.stem_stride)

    def describe(self):
        return (f'{self.layers} cells of {self.channels} channels, {self.image_size} px, stem stride '
                f'{self.stem_stride}, stem multiplier {self.stem_multiplier}, {self.num_classes} classes')


def edges(reduction, channels, size):
    """(stride, input size) of each edge of a cell in DARTS' edge order: in a reduction cell the edges from the two
    cell inputs have stride 2 and the others run at half the size."""
    result = []
    for node in node_edge_slices(STEPS):
        for j in range(node.stop - node.start):
            from_input = j < 2
            result.append((2 if reduction and from_input else 1, size if from_input or not reduction else size // 2))
    return result


@functools.lru_cache(maxsize=None)
def operation_cost(name, channels, stride, size):
    """(parameters, multiply-adds) of candidate operation `name` of the discrete network (affine BatchNorm) on a
    channels x size x size input."""
    if name == 'none':
        return 0, 0
    with torch.random.fork_rng(devices=[]):  # a cost is not a draw: the run's random stream stays as it was
        op = OPS[name](channels, stride, True)
    return utils.count_parameters(op), count_macs(op, (1, channels, size, size))


def count_macs(module, shape):
    """Multiply-adds of one forward of `module` on zeros of `shape` (batch 1): those of its convolutions and linear
    layers, as utils.count_flops counts them (a test holds the two equal), without the second it takes to import
    torch.compile's machinery that FlopCounterMode needs."""
    macs = []

    def count(layer, inputs, output):
        per_output = layer.in_features if isinstance(layer, torch.nn.Linear) else (
            layer.in_channels // layer.groups * layer.kernel_size[0] * layer.kernel_size[1])
        macs.append(output.numel() * per_output)

    layers = [m for m in module.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [layer.register_forward_hook(count) for layer in layers]
    was_training = module.training
    try:
        with torch.no_grad():
            module.eval()(torch.zeros(shape))
    finally:
        module.train(was_training)
        for handle in handles:
            handle.remove()
    return sum(macs)


def genotype_cost(target, genotype, latency=None):
    """The exact cost of the network train.py builds from `genotype` at `target`: {'params', 'macs'} (the auxiliary
    head, which inference does not run, left out), and 'latency_ms' as the latency table `latency` predicts it."""
    with torch.random.fork_rng(devices=[]):  # the initialisation draws nothing from the run's random stream
        network = target.network(genotype)
    cost = {'params': utils.count_parameters(network),
            'macs': count_macs(network, (1, 3, target.image_size, target.image_size))}
    if latency is not None:
        cost['latency_ms'] = latency.genotype_ms(genotype)
    return cost


def released_cost(target, latency=None):
    """What a budget of 1x is: the cost of the released GLA-FERNet genotype with the released stem (stride 1, 3 x the
    channels) at the target's channels, cells, image size and classes, so that 0.25x is the same budget whatever
    stem the target has; its latency as the table of the target predicts it, with the target's stem."""
    released = dataclasses.replace(target, stem_stride=1, stem_multiplier=3)
    cost = genotype_cost(released, genotypes.GLA_FERNet)
    if latency is not None:
        cost['latency_ms'] = latency.genotype_ms(genotypes.GLA_FERNet)
    return cost


@functools.lru_cache(maxsize=None)
def fixed_cost(target):
    """The cost no operation choice changes: a genotype of 3x3 max-pools has no parameters and no multiply-adds in
    its operations, so its network's cost is the fixed part."""
    return genotype_cost(target, pooling_genotype())


def pooling_genotype():
    gene = [('max_pool_3x3', j) for i in range(STEPS) for j in (0, 1)]
    return genotypes.Genotype(normal=gene, normal_concat=range(2, 2 + STEPS), reduce=gene,
                              reduce_concat=range(2, 2 + STEPS))


class ExpectedCost:
    """The expected cost of a supernet's architecture weights (module docstring), per metric of `metrics`, at
    `target`; latency_ms needs `latency`, a LatencyTable of that target. Float64 throughout: the cost of a selected
    genotype comes out exact to the multiply-add."""

    def __init__(self, target, primitives, metrics=('params', 'macs'), latency=None):
        self.target, self.primitives, self.metrics = target, list(primitives), tuple(metrics)
        # the columns a genotype may take: every candidate but `none`, which derivation never selects
        self.first = 1 if self.primitives[0] == 'none' else 0
        fixed = fixed_cost(target)
        self.fixed, self.tables = {}, {}
        for metric in self.metrics:
            if metric == 'latency_ms':
                if latency is None:
                    raise UserError('a latency budget needs a latency table (--latency_table FILE)')
                latency.check(target, primitives)
            self.fixed[metric] = latency.fixed_ms if metric == 'latency_ms' else float(fixed[metric])
            self.tables[metric] = {cell: torch.zeros(NUM_EDGES, len(self.primitives), dtype=torch.float64)
                                   for cell in ('normal', 'reduce')}
        for reduction, channels, size in target.cells():
            for e, (stride, edge_size) in enumerate(edges(reduction, channels, size)):
                for o, name in enumerate(self.primitives):
                    params, macs = operation_cost(name, channels, stride, edge_size)
                    values = {'params': params, 'macs': macs}
                    for metric in self.metrics:
                        value = (latency.operation_ms(name, channels, stride, edge_size) if metric == 'latency_ms'
                                 else values[metric])
                        self.tables[metric]['reduce' if reduction else 'normal'][e, o] += value

    def to(self, device):
        self.tables = {metric: {cell: t.to(device) for cell, t in tables.items()} for metric, tables in self.tables.items()}
        return self

    def least(self, metric):
        """The least cost of any genotype: per node, the two edges whose cheapest operation is cheapest."""
        total = self.fixed[metric]
        for table in self.tables[metric].values():
            cheapest = table[:, self.first:].amin(1)
            total += sum(float(cheapest[node].sort().values[:2].sum()) for node in node_edge_slices(STEPS))
        return total

    def __call__(self, weights, derived=False):
        """{metric: 0-dim float64 tensor} from weights = {'normal': (op weights, edge weights), 'reduce': (...)},
        each (edges, candidate ops) and (edges,) in DARTS' edge order (Network.cell_weights). derived: the exact cost
        of the genotype the weights derive (no gradient), computed on the device from the same tables."""
        select = self.derived if derived else self.probabilities
        probabilities = {cell: select(*weights[cell]) for cell in ('normal', 'reduce')}
        costs = {}
        for metric in self.metrics:
            total = self.fixed[metric]  # a Python number: no tensor made (and copied to the device) per step
            for cell, (chosen, p) in probabilities.items():
                table = self.tables[metric][cell][:, self.first:]
                total = total + (chosen * (p * table).sum(1)).sum()
            costs[metric] = total
        return costs

    def probabilities(self, op_weights, edge_weights):
        """(P(edge chosen) (edges,), P(op | edge) (edges, ops a genotype may take)) of one cell type."""
        w = op_weights[:, self.first:].double()
        p = w / w.sum(1, keepdim=True).clamp_min(TINY)
        strength = w.amax(1) * edge_weights.double()
        chosen = torch.cat([two_of(strength[node]) for node in node_edge_slices(STEPS)])
        return chosen, p


    def derived(self, op_weights, edge_weights):
        """probabilities() of the genotype the weights derive (Network.genotype): per node its two strongest edges
        (ties are practically impossible with real-valued weights), each with its strongest operation; 0 or 1."""
        with torch.no_grad():
            w = op_weights[:, self.first:].double()
            p = F.one_hot(w.argmax(1), w.shape[1]).double()
            strength = w.amax(1) * edge_weights.double()
            chosen = torch.cat([F.one_hot(strength[node].topk(2).indices, node.stop - node.start).sum(0)
                                for node in node_edge_slices(STEPS)]).double()
        return chosen, p


TINY = 1e-12


def two_of(strength):
    """P(an item is drawn) when 2 items are drawn without replacement, each draw in proportion to `strength`:
    q_e + sum over f != e of q_f q_e / (1 - q_f), with q the normalised strengths. Exactly 1 for both of two items,
    and 1, 1, 0... where the strength is on two items alone."""
    q = strength / strength.sum().clamp_min(TINY)
    odds = q / (1 - q).clamp_min(TINY)
    return q + q * (odds.sum() - odds)


class BudgetPenalty:
    """The budget term of the architecture loss, per budget weight * max(0, cost / budget - 1), summed (docs/budget.md
    "The penalty"). Zero inside the budget, so a search that meets it is the unconstrained search; above it, a pull
    whose scale does not depend on the metric's unit, so one weight serves parameters, multiply-adds and ms alike.

    of_genotype=False: the cost is E[cost], and so is the gradient. of_genotype=True (train_search.py's default): the
    penalty's value is that of the exact cost of the genotype the weights derive now, and its gradient weight / budget
    times the gradient of E[cost] while that genotype is over budget (a straight-through estimate): the pull stops
    when the genotype meets the budget, not when the near-uniform weights' average does, which can be much later."""

    def __init__(self, expected, budgets, weight, of_genotype=True):
        self.expected, self.budgets, self.weight, self.of_genotype = expected, dict(budgets), weight, of_genotype

    def __call__(self, network):
        weights = network_weights(network)
        expected = self.expected(weights)
        derived = self.expected(weights, derived=True) if self.of_genotype else None
        terms = []
        for metric, budget in self.budgets.items():
            if derived is None:
                terms.append(F.relu(expected[metric] / budget - 1))
            else:
                over = (derived[metric] > budget).double()
                terms.append(F.relu(derived[metric] / budget - 1) + over * (expected[metric] - expected[metric].detach()) / budget)
        return (self.weight * sum(terms)).float()


def network_weights(network):
    return {cell: network.cell_weights(cell) for cell in ('normal', 'reduce')}


class SearchBudget:
    """What a search knows of costs: its target network, its budgets ({metric: value}, maybe none), the penalty of the
    architecture loss (None without budgets), and each epoch's expected and exact costs."""

    def __init__(self, target, primitives, budgets, weight, latency=None, device='cpu', of_genotype=True):
        self.target, self.budgets, self.latency = target, dict(budgets), latency
        metrics = ('params', 'macs') + (('latency_ms',) if latency is not None else ())
        self.expected = ExpectedCost(target, primitives, metrics, latency).to(device)
        self.penalty = BudgetPenalty(self.expected, self.budgets, weight, of_genotype) if self.budgets else None

    @classmethod
    def from_args(cls, args, num_classes, device):
        target = Target(args.target_channels, args.target_layers, args.target_image_size, args.target_stem_stride,
                        args.target_stem_multiplier, num_classes)
        latency = LatencyTable.read(args.latency_table) if args.latency_table else None
        budgets = {metric: getattr(args, f'budget_{metric}') for metric in METRICS
                   if getattr(args, f'budget_{metric}') is not None}
        if any(isinstance(value, str) for value in budgets.values()):  # 0.25x: of the released network's cost
            released = released_cost(target, latency)
            budgets = {metric: float(value[:-1]) * released[metric] if isinstance(value, str) else value
                       for metric, value in budgets.items()}
        return cls(target, args.primitives, budgets, args.budget_weight, latency, device,
                   of_genotype=getattr(args, 'budget_penalty', 'expected') == 'genotype')

    def costs(self, network, genotype):
        """{'expected': E[cost] of the network's architecture weights, 'exact': the exact cost of `genotype`,
        'over': {metric: relative excess} of the budgets the genotype misses}, each {metric: number}."""
        with torch.no_grad():
            expected = {m: float(v) for m, v in self.expected(network_weights(network)).items()}
        exact = genotype_cost(self.target, genotype, self.latency)
        return {'expected': expected, 'exact': exact, 'over': self.over(exact)}

    def over(self, cost):
        return {m: cost[m] / budget - 1 for m, budget in self.budgets.items() if cost[m] > budget}

    def unreachable(self):
        """[(metric, budget, least cost)] of the budgets no genotype meets at this target."""
        return [(m, b, self.expected.least(m)) for m, b in self.budgets.items() if self.expected.least(m) > b]

    def describe(self, costs):
        """One log line: per metric E[cost], the genotype's cost, and its budget."""
        parts = []
        for metric in self.expected.metrics:
            budget = self.budgets.get(metric)
            over = costs['over'].get(metric)
            parts.append(f'{metric} E {format_cost(metric, costs["expected"][metric])}, genotype '
                         f'{format_cost(metric, costs["exact"][metric])}' +
                         (f' (budget {format_cost(metric, budget)}' + (f', OVER by {100 * over:.1f}%)' if over else
                                                                       ', met)') if budget else ''))
        return '; '.join(parts)


def format_cost(metric, value):
    return f'{value:.3f} ms' if metric == 'latency_ms' else f'{value / 1e6:.3f}M'


class LatencyTable:
    """Milliseconds of each candidate operation at each cell's shape, and of the fixed part, on the device that
    measured them (benchmark.py --latency_table); the latency of a network is predicted as their sum."""

    def __init__(self, content, path='latency table'):
        self.path = path
        if not isinstance(content, dict) or content.get('format') != LATENCY_TABLE_FORMAT:
            raise UserError(f'{path} is not a latency table (write one with python benchmark.py --latency_table FILE)')
        try:
            self.target = Target(**content['target'])
            self.fixed_ms = float(content['fixed_ms'])
            self.ms = {(row['op'], row['channels'], row['stride'], row['size']): float(row['ms'])
                       for row in content['operations']}
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f'{path}: malformed latency table ({type(e).__name__}: {e}); write it anew with '
                            f'python benchmark.py --latency_table FILE') from None
        self.device, self.content = content.get('device', '?'), content

    @classmethod
    def read(cls, path):
        return cls(run_folder.read_json(path, 'latency table'), path)

    def check(self, target, primitives):
        """Refuse a table measured for another network, or without one of the search's candidate operations."""
        if self.target != target:
            differ = [f'{k}: table {v}, search {getattr(target, k)}' for k, v in asdict(self.target).items()
                      if v != getattr(target, k)]
            raise UserError(f'{self.path} was measured for another network ({"; ".join(differ)}); measure one for '
                            f'this target with python benchmark.py --latency_table FILE and the same target flags')
        ops = {op for op, *_ in self.ms}
        missing = [p for p in primitives if p != 'none' and p not in ops]
        if missing:
            raise UserError(f'{self.path} has no latency of {", ".join(missing)}, a candidate operation of this search')

    def operation_ms(self, name, channels, stride, size):
        if name == 'none':
            return 0.0
        try:
            return self.ms[(name, channels, stride, size)]
        except KeyError:
            raise UserError(f'{self.path} has no latency of {name} at {channels} channels, {size} px, stride '
                            f'{stride}; measure the table with every operation of the genotype') from None

    def genotype_ms(self, genotype):
        return self.fixed_ms + sum(self.operation_ms(*edge) for edge in chosen_edges(self.target, genotype))


def chosen_edges(target, genotype):
    """(operation, channels, stride, input size) of every edge of the network train.py builds from `genotype`."""
    for reduction, channels, size in target.cells():
        shapes = edges(reduction, channels, size)
        for i, (name, j) in enumerate(genotype.reduce if reduction else genotype.normal):
            yield (name, channels, *shapes[node_edge_slices(STEPS)[i // 2].start + j])


def measure_latency_table(target, primitives, device, time_ms):
    """The latency table of `target` on `device`: time_ms(fn) is the milliseconds of one call of fn (median of
    repeats, benchmark.py's timer). Batch 1, evaluation mode, no gradients: inference latency. The fixed part is the
    pooling genotype's network less its pools."""
    rows, seen = [], set()
    with torch.no_grad():
        for reduction, channels, size in target.cells():
            for stride, edge_size in edges(reduction, channels, size):
                for name in primitives:
                    key = (name, channels, stride, edge_size)
                    if name == 'none' or key in seen:
                        continue
                    seen.add(key)
                    op = OPS[name](channels, stride, True).to(device).eval()
                    x = torch.randn(1, channels, edge_size, edge_size, device=device)
                    rows.append(dict(op=name, channels=channels, stride=stride, size=edge_size,
                                     ms=time_ms(lambda: op(x))))
        table = {(r['op'], r['channels'], r['stride'], r['size']): r['ms'] for r in rows}
        pools = pooling_genotype()
        network = target.network(pools).to(device).eval()
        image = torch.randn(1, 3, target.image_size, target.image_size, device=device)
        network_ms = time_ms(lambda: network(image))
        ops_ms = sum(table[edge] for edge in chosen_edges(target, pools))
    return {'format': LATENCY_TABLE_FORMAT, 'target': asdict(target), 'batch_size': 1,
            'fixed_ms': max(network_ms - ops_ms, 0.0), 'operations': rows}
