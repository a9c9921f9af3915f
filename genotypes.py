"""Search-space vocabulary, the DARTS-family search methods as presets, named architectures and a safe genotype
parser (paper Sec. 3; docs/method.md "Deriving the genotype"; docs/darts_family.md for EmoNAS).

Data only, without torch: the scripts read it before they import torch. operations.py builds the operations named here.
"""
import argparse
import ast
from collections import namedtuple

from errors import UserError

Genotype = namedtuple('Genotype', 'normal normal_concat reduce reduce_concat')

# Order matters: it is the column order of the architecture parameters.
PRIMITIVES = [
    'none',
    'max_pool_3x3',
    'avg_pool_3x3',
    'skip_connect',
    'sep_conv_3x3',
    'sep_conv_5x5',
    'dil_conv_3x3',
    'dil_conv_5x5',
]
# Every operation a genotype may name: the candidates but `none` (never selected), and two more of published cells.
OPERATIONS = PRIMITIVES[1:] + ['sep_conv_7x7', 'conv_7x1_1x7']
# EmoNAS's 7 candidate operations (docs/darts_family.md: its list names DARTS' ops with `identity` for skip_connect).
EMONAS_PRIMITIVES = PRIMITIVES[1:]

OP_WEIGHTS = ('sigmoid', 'softmax')  # how a supernet weighs an edge's candidate operations

# The search methods of the DARTS family, each a preset of the one supernet (model_search_softmax_sigmoid.Network)
# and of the two scripts' recipes. 'supernet': how the supernet mixes (op weights: sigmoid or softmax of alpha; edge
# weights: a softmax of beta over each node's incoming edges, or none; partial-channel ratio k, 1 = every channel;
# the candidate operations; the cells). 'search': train_search.py's recipe. 'train': train.py's recipe for the
# discrete network of a genotype the method found. Every item is a flag of its script, so any can be overridden; the
# settings no method changes (SGD momentum 0.9, weight decay 3e-4, clip 5; Adam betas (0.5, 0.999), weight decay
# 1e-3, 50/50 split of the training set) are the flags' defaults.
PC_DARTS_SEARCH = dict(init_channels=16, batch_size=64, learning_rate=0.1, learning_rate_min=0.0, epochs=50,
                       warmup_epochs=15, arch_learning_rate=6e-4)  # released code: as PC-DARTS' (docs/method.md)
DARTS_SEARCH = dict(init_channels=16, batch_size=64, learning_rate=0.025, learning_rate_min=0.001, epochs=50,
                    warmup_epochs=0, arch_learning_rate=3e-4)  # DARTS' train_search.py
METHODS = {
    # the paper: PC-DARTS with sigmoid operation weights (docs/method.md)
    'gla_fernet': dict(supernet=dict(op_weights='sigmoid', edge_weights=True, k=4, primitives=PRIMITIVES, layers=8),
                       search=PC_DARTS_SEARCH, train={}),
    # PC-DARTS (Xu et al. 2020): softmax operation weights, edge normalisation, partial channels
    'pc_darts': dict(supernet=dict(op_weights='softmax', edge_weights=True, k=4, primitives=PRIMITIVES, layers=8),
                     search=PC_DARTS_SEARCH, train={}),
    # DARTS (Liu et al. 2019): softmax over the 8 operations on every channel, edges summed
    'darts': dict(supernet=dict(op_weights='softmax', edge_weights=False, k=1, primitives=PRIMITIVES, layers=8),
                  search=DARTS_SEARCH, train={}),
    # EmoNAS (Verma et al. 2023; docs/darts_family.md): DARTS on 7 operations and a 5-cell network, its own recipe;
    # the discrete network as DARTS' train.py (no auxiliary head, drop-path 0.2, cosine to 0) with EmoNAS's figures
    'emonas': dict(
        supernet=dict(op_weights='softmax', edge_weights=False, k=1, primitives=EMONAS_PRIMITIVES, layers=5),
        search={**DARTS_SEARCH, 'batch_size': 16, 'learning_rate': 0.007},
        train=dict(layers=5, init_channels=36, batch_size=16, learning_rate=0.007, learning_rate_min=0.0, epochs=70,
                   auxiliary=False, drop_path_prob=0.2)),
}
# The discrete network of train.py (the released code's): 36 channels, 8 cells, a stride-1 stem of 3 x 36 channels.
# The stem's stride and width are flags too (train.py --stem_stride, --stem_multiplier; docs/budget.md).
DISCRETE_NETWORK = dict(init_channels=36, layers=8, stem_stride=1, stem_multiplier=3)
SUPERNET_FLAGS = ('k', 'op_weights', 'edge_weights', 'primitives')  # the Network arguments that make a supernet


def check_image_size(image_size, stem_stride=1):
    """Refuse sizes the stem and the two reduction cells cannot divide into equal-sized branches."""
    sizes = image_size if isinstance(image_size, (tuple, list)) else (image_size, image_size)
    factor = 4 * stem_stride
    for size in sizes:
        if not isinstance(size, int) or size < 2 * factor or size % factor:
            if stem_stride == 1:
                raise UserError(f'image size {image_size} is not supported: height and width must be multiples of 4 '
                                 f'and at least 8 (e.g. 48, 64, 100, 112), because the two reduction cells halve them '
                                 f'twice')
            raise UserError(f'image size {image_size} is not supported with stem stride {stem_stride}: height and '
                             f'width must be multiples of {factor} and at least {2 * factor}, because the stem divides '
                             f'them by {stem_stride} and the two reduction cells halve them twice')



def supernet_settings(settings):
    """The supernet's Network arguments among a method's settings (a dict) or a run's (its args)."""
    return {name: settings[name] if isinstance(settings, dict) else getattr(settings, name) for name in SUPERNET_FLAGS}

# Published architectures, for comparison (DARTS, Liu et al. 2019; PC-DARTS, Xu et al. 2020).
NASNet = Genotype(
    normal=[('sep_conv_5x5', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 0), ('sep_conv_3x3', 0),
            ('avg_pool_3x3', 1), ('skip_connect', 0), ('avg_pool_3x3', 0), ('avg_pool_3x3', 0),
            ('sep_conv_3x3', 1), ('skip_connect', 1)],
    normal_concat=[2, 3, 4, 5, 6],
    reduce=[('sep_conv_5x5', 1), ('sep_conv_7x7', 0), ('max_pool_3x3', 1), ('sep_conv_7x7', 0),
            ('avg_pool_3x3', 1), ('sep_conv_5x5', 0), ('skip_connect', 3), ('avg_pool_3x3', 2),
            ('sep_conv_3x3', 2), ('max_pool_3x3', 1)],
    reduce_concat=[4, 5, 6])

AmoebaNet = Genotype(
    normal=[('avg_pool_3x3', 0), ('max_pool_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 0), ('avg_pool_3x3', 3), ('sep_conv_3x3', 1), ('skip_connect', 1),
            ('skip_connect', 0), ('avg_pool_3x3', 1)],
    normal_concat=[4, 5, 6],
    reduce=[('avg_pool_3x3', 0), ('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('sep_conv_7x7', 2),
            ('sep_conv_7x7', 0), ('avg_pool_3x3', 1), ('max_pool_3x3', 0), ('max_pool_3x3', 1),
            ('conv_7x1_1x7', 0), ('sep_conv_3x3', 5)],
    reduce_concat=[3, 4, 6])

DARTS_V2 = Genotype(
    normal=[('sep_conv_3x3', 0), ('sep_conv_3x3', 1), ('sep_conv_3x3', 0), ('sep_conv_3x3', 1),
            ('sep_conv_3x3', 1), ('skip_connect', 0), ('skip_connect', 0), ('dil_conv_3x3', 2)],
    normal_concat=[2, 3, 4, 5],
    reduce=[('max_pool_3x3', 0), ('max_pool_3x3', 1), ('skip_connect', 2), ('max_pool_3x3', 1),
            ('max_pool_3x3', 0), ('skip_connect', 2), ('skip_connect', 2), ('max_pool_3x3', 1)],
    reduce_concat=[2, 3, 4, 5])
DARTS = DARTS_V2

PC_DARTS_cifar = Genotype(
    normal=[('sep_conv_3x3', 1), ('skip_connect', 0), ('sep_conv_3x3', 0), ('dil_conv_3x3', 1),
            ('sep_conv_5x5', 0), ('sep_conv_3x3', 1), ('avg_pool_3x3', 0), ('dil_conv_3x3', 1)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_5x5', 1), ('max_pool_3x3', 0), ('sep_conv_5x5', 1), ('sep_conv_5x5', 2),
            ('sep_conv_3x3', 0), ('sep_conv_3x3', 3), ('sep_conv_3x3', 1), ('sep_conv_3x3', 2)],
    reduce_concat=range(2, 6))

# The architecture searched on RAF-DB and released by the authors (named ARC there).
GLA_FERNet = Genotype(
    normal=[('sep_conv_5x5', 0), ('avg_pool_3x3', 1), ('dil_conv_5x5', 0), ('sep_conv_5x5', 1),
            ('sep_conv_5x5', 0), ('sep_conv_5x5', 1), ('skip_connect', 3), ('dil_conv_5x5', 0)],
    normal_concat=range(2, 6),
    reduce=[('sep_conv_3x3', 1), ('max_pool_3x3', 0), ('avg_pool_3x3', 1), ('skip_connect', 0),
            ('max_pool_3x3', 1), ('sep_conv_3x3', 2), ('max_pool_3x3', 1), ('sep_conv_5x5', 0)],
    reduce_concat=range(2, 6))
ARC = GLA_FERNet
PCDARTS = GLA_FERNet  # the released train.py's default --arch

# Paste searched genotypes below (NAME = Genotype(...)) and train them with --arch NAME.


def check_primitives(names):
    """The candidate operations `names` in PRIMITIVES' order (the column order of the architecture parameters);
    refuses unknown or repeated names and a list without an operation other than `none`."""
    unknown = [name for name in names if name not in PRIMITIVES]
    if unknown:
        raise UserError(f"unknown candidate operation(s) {', '.join(map(repr, unknown))}; "
                        f"choose among {', '.join(PRIMITIVES)}")
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise UserError(f"candidate operation(s) given twice: {', '.join(repeated)}")
    if not set(names) - {'none'}:
        raise UserError('the candidate operations need at least one besides none (none is never selected)')
    return [name for name in PRIMITIVES if name in names]


def primitives_flag(text):
    """--primitives: comma-separated operation names, or `all` for the 8 of PRIMITIVES."""
    names = PRIMITIVES if text == 'all' else [name.strip() for name in text.split(',') if name.strip()]
    try:
        return check_primitives(names)
    except UserError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def named_genotypes():
    """All Genotype objects defined in this module, by name (aliases included)."""
    return {name: value for name, value in globals().items()
            if isinstance(value, Genotype) and not name.startswith('_')}


def genotype_by_name(name):
    genotypes = named_genotypes()
    if name not in genotypes:
        raise UserError(f"unknown architecture name '{name}'; genotypes.py defines: {', '.join(sorted(genotypes))}")
    return genotypes[name]


def genotype_name(genotype):
    """The name this module gives `genotype` (the first one, before its aliases), or None."""
    canonical = lambda g: [[tuple(pair) for pair in g.normal], list(g.normal_concat),
                           [tuple(pair) for pair in g.reduce], list(g.reduce_concat)]
    return next((name for name, known in named_genotypes().items() if canonical(known) == canonical(genotype)), None)


def format_genotype(genotype):
    """The one-line text search logs print and parse_genotype reads."""
    return repr(genotype)


def _literal(node, what):
    try:
        return ast.literal_eval(node)
    except ValueError:
        raise UserError(f'{what} must be a literal, got: {ast.unparse(node)}') from None


def _parse_concat(node, field):
    # range(a, b) is what namedtuple's repr prints for the default concat; evaluate only that call.
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == 'range' \
            and not node.keywords and 1 <= len(node.args) <= 2:
        bounds = [_literal(arg, field) for arg in node.args]
        if all(isinstance(b, int) for b in bounds):
            return range(*bounds)
    value = _literal(node, field)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, int) for v in value):
        raise UserError(f'{field} must be a list of node indices or range(a, b), got: {ast.unparse(node)}')
    return list(value)


def _check_cell(ops, concat, field):
    valid = sorted(OPERATIONS)
    if not isinstance(ops, (list, tuple)) or len(ops) == 0 or len(ops) % 2:
        raise UserError(f'{field} must list an even number of (op, input) pairs, two per node; got {len(ops) if isinstance(ops, (list, tuple)) else ops!r}')
    for position, entry in enumerate(ops):
        if not (isinstance(entry, (list, tuple)) and len(entry) == 2
                and isinstance(entry[0], str) and isinstance(entry[1], int)):
            raise UserError(f"{field}[{position}] must be ('op_name', input_index), got {entry!r}")
        name, index = entry
        if name not in OPERATIONS:
            raise UserError(f"{field}[{position}]: unknown operation '{name}'; valid names: {', '.join(valid)}")
        node = position // 2
        if not 0 <= index < 2 + node:
            raise UserError(f'{field}[{position}]: input index {index} out of range for node {node} '
                            f'(it may read states 0..{node + 1})')
    steps = len(ops) // 2
    for index in concat:
        if not 2 <= index < 2 + steps:
            raise UserError(f'{field}_concat: node index {index} out of range 2..{steps + 1}')


def parse_genotype(text):
    """Parse `Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...)` without eval.

    A leading `genotype = ` (as search logs print it) is accepted; anything else is refused with a message.
    """
    text = text.strip()
    if text.startswith('genotype') and '=' in text.split('(', 1)[0]:
        text = text.split('=', 1)[1].strip()
    try:
        tree = ast.parse(text, mode='eval').body
    except SyntaxError as e:
        raise UserError(f'cannot parse genotype text ({e.msg}): {text[:120]}') from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name) and tree.func.id == 'Genotype'):
        raise UserError(f'expected Genotype(normal=[...], normal_concat=..., reduce=[...], reduce_concat=...), got: {text[:120]}')
    fields = {}
    if len(tree.args) > len(Genotype._fields):
        raise UserError(f'Genotype takes {len(Genotype._fields)} fields, got {len(tree.args)}')
    for name, node in zip(Genotype._fields, tree.args):
        fields[name] = node
    for keyword in tree.keywords:
        if keyword.arg not in Genotype._fields or keyword.arg in fields:
            raise UserError(f'unexpected or repeated Genotype field {keyword.arg!r}; fields are {", ".join(Genotype._fields)}')
        fields[keyword.arg] = keyword.value
    missing = [f for f in Genotype._fields if f not in fields]
    if missing:
        raise UserError(f'genotype is missing field(s): {", ".join(missing)}')
    normal = [tuple(e) if isinstance(e, (list, tuple)) else e for e in _literal(fields['normal'], 'normal')]
    reduce = [tuple(e) if isinstance(e, (list, tuple)) else e for e in _literal(fields['reduce'], 'reduce')]
    normal_concat = _parse_concat(fields['normal_concat'], 'normal_concat')
    reduce_concat = _parse_concat(fields['reduce_concat'], 'reduce_concat')
    _check_cell(normal, normal_concat, 'normal')
    _check_cell(reduce, reduce_concat, 'reduce')
    return Genotype(normal=normal, normal_concat=normal_concat, reduce=reduce, reduce_concat=reduce_concat)
