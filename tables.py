"""The published tables reproduce.py runs, as data: each row a setting (train.py's flags, and train_search.py's for a
row that searches first), its seeds, and the number its paper reported with the source and the paper's selection
rule (docs/reproduce.md). Imports nothing of torch; adding a table is adding an entry to TABLES.

Flags are {flag: value} without the dashes; True is a bare switch. reproduce.py adds what depends on where a table
runs: --data (from its --rafdb / --affectnet), --save, --seed, the search's genotype (--genotype_file) and the
placeholders below."""
from dataclasses import dataclass, field

MSCELEB = '{msceleb}'  # reproduce.py --msceleb: the MS-Celeb-1M ResNet-18 of SCN, RUL, EAC and NLA
MFN_MSCELEB = '{mfn_msceleb}'  # reproduce.py --mfn_msceleb: DDAMFN's MS-Celeb-1M MixedFeatureNet
EFFICIENTFACE_MSCELEB = '{efficientface_msceleb}'  # reproduce.py --efficientface_msceleb
EFFICIENTFACE_LDG = '{efficientface_ldg}'  # reproduce.py --efficientface_ldg: EfficientFace's teacher, a ResNet-50
# The placeholders of weight files in a row's flags (--pretrained, --efficientface_teacher): the reproduce.py flag that
# gives each, and what it is.
WEIGHT_FILES = {MSCELEB: ('msceleb', 'the MS-Celeb-1M ResNet-18 checkpoint (docs/noise.md)'),
                MFN_MSCELEB: ('mfn_msceleb', "DDAMFN's MS-Celeb-1M MixedFeatureNet (docs/baselines.md \"DDAMFN\")"),
                EFFICIENTFACE_MSCELEB: ('efficientface_msceleb', "EfficientFace's MS-Celeb-1M weights "
                                                                 '(docs/baselines.md "EfficientFace")'),
                EFFICIENTFACE_LDG: ('efficientface_ldg', "EfficientFace's label distribution generator "
                                                         '(docs/baselines.md "EfficientFace")')}
SEEDS = (0, 1, 2)

# How a paper chose the epoch of its number, and how ours is chosen to match (metrics.json's record; report.SELECTIONS).
SELECTIONS = {
    'test_best': 'test_selected',   # the best epoch on the test set (optimistic)
    'last5_mean': 'last5_mean',     # the mean of the last 5 epochs' test figures
    'val_selected': 'val_selected',  # the best epoch on a validation split
    'unstated': 'last',             # the paper says nothing: we report the last epoch, which selects nothing
}


@dataclass(frozen=True)
class Source:
    """Where a reported number is printed."""
    paper: str
    table: str
    row: str
    column: str

    def __str__(self):
        return f'{self.paper}, {self.table}, row "{self.row}", column "{self.column}"'


@dataclass(frozen=True)
class Row:
    """One setting of a table. `label` and `column` place it in the paper's layout (`group`: a block of rows, such as
    a noise level); `reported` is the paper's number (None where our sources give none)."""
    name: str  # unique in its table; names the runs' folders <name>-s<seed>
    train: dict
    search: dict = None  # train_search.py's flags: the search runs first and train.py trains its genotype
    seeds: tuple = SEEDS
    reported: float = None
    source: Source = None
    selection: str = 'unstated'  # a key of SELECTIONS: the paper's rule (or the one of the code it ran)
    label: str = ''
    column: str = ''
    group: str = ''
    note: str = ''


@dataclass(frozen=True)
class Table:
    name: str
    title: str
    rows: tuple
    note: str = ''
    columns: tuple = field(default=())  # the order of the paper's columns (default: as the rows name them)


# ---------------------------------------------------------------- noise_rafdb
# LA-Net (Wu & Cui, ICCV 2023), Table 1 ("Evaluation (%) on synthetic noisy datasets"), column RAF-DB: ResNet-18
# pre-trained on MS-Celeb-1M. How each number's epoch was chosen comes from the code behind it: LA-Net's train.py
# (its baseline) and SCN's and RUL's code evaluate on the test set every epoch and keep the best; EAC reports the
# mean of the last 5 epochs (EAC's issue 2). NLA (AAAI 2025) is later than LA-Net: no number in that table.
LA_NET = {  # noise -> method -> (row of Table 1, reported, selection)
    10: {'none': ('Baseline', 81.01, 'test_best'), 'scn': ('SCN', 82.18, 'test_best'),
         'rul': ('RUL', 86.17, 'test_best'), 'eac': ('EAC', 88.02, 'last5_mean')},
    20: {'none': ('Baseline', 77.98, 'test_best'), 'scn': ('SCN', 80.10, 'test_best'),
         'rul': ('RUL', 84.32, 'test_best'), 'eac': ('EAC', 86.05, 'last5_mean')},
    30: {'none': ('Baseline', 75.50, 'test_best'), 'scn': ('SCN', 77.46, 'test_best'),
         'rul': ('RUL', 82.06, 'test_best'), 'eac': ('EAC', 84.42, 'last5_mean')},
}
NOISE_METHOD_LABELS = {'none': 'Baseline (cross-entropy)', 'scn': 'SCN', 'rul': 'RUL', 'eac': 'EAC', 'nla': 'NLA'}
NOISE_RAFDB = Table(
    'noise_rafdb', 'RAF-DB under symmetric label noise: ResNet-18 (MS-Celeb-1M) with each noise-robust method',
    tuple(Row(f'n{noise}-{method}',
              train={'dataset': 'rafdb', 'noise': noise, 'model': 'resnet18', 'pretrained': MSCELEB,
                     'noise_method': method},
              reported=LA_NET[noise].get(method, (None, None))[1],
              source=Source('LA-Net (ICCV 2023)', 'Table 1', f'{noise}% / {LA_NET[noise][method][0]}', 'RAF-DB')
              if method in LA_NET[noise] else None,
              selection=LA_NET[noise][method][2] if method in LA_NET[noise] else 'test_best',
              label=NOISE_METHOD_LABELS[method], group=f'{noise}% noise', column='RAF-DB',
              note='' if method in LA_NET[noise] else 'not in LA-Net\'s table (NLA is later); NLA\'s code keeps '
                                                       'the best test epoch')
          for noise in (10, 20, 30) for method in ('none', 'scn', 'rul', 'eac', 'nla')),
    note='Our noisy labels are RAF-DB\'s EmoLabel/new_N_noise.txt (train.py --noise N); each method trains with its '
         'own paper\'s recipe (docs/noise.md).')

# ---------------------------------------------------------------- lightweight_rafdb
LIGHTWEIGHT_RAFDB = Table(
    'lightweight_rafdb', 'Lightweight FER networks on RAF-DB (clean labels), each with its paper\'s recipe', (
        Row('fgw_fer', {'dataset': 'rafdb', 'model': 'fgw_fer'}, reported=80.75,
            source=Source('FGW-FER (KSII TIIS 2023)', 'Table 1', 'FGW-FER', 'RAF-DB'), selection='val_selected',
            label='FGW-FER', column='RAF-DB',
            note='the paper re-split RAF-DB at random 7-1-2; ours is the official test set, with an eighth of the '
                 'training set for validation'),
        Row('shufflenet_v2', {'dataset': 'rafdb', 'model': 'shufflenet_v2'}, reported=84.31,
            source=Source('RLR-CNet (Appl. Sci. 2023)', 'Table 3', 'ShuffleNet', 'RAF-DB'), label='ShuffleNetV2',
            column='RAF-DB', note='RLR-CNet enlarged RAF-DB with masked copies and re-split it 70/30: not the '
                                  'official test set'),
        Row('rlr_cnet', {'dataset': 'rafdb', 'model': 'rlr_cnet'}, reported=87.93,
            source=Source('RLR-CNet (Appl. Sci. 2023)', 'Table 3', 'RLR-CNet (all)', 'RAF-DB'), label='RLR-CNet',
            column='RAF-DB', note='masked copies of a test image can sit in its training set (the 70/30 re-split): '
                                  'a leaky protocol, not a target'),
        Row('cores_se', {'dataset': 'rafdb', 'model': 'cores_se'}, reported=89.11,
            source=Source('CoRes-SE (GitHub notebook, 2025)', 'README results', 'RAF-DB',
                          'max validation accuracy (the best test epoch)'),
            selection='test_best', label='CoRes-SE', column='RAF-DB',
            note='its last epoch gave the same 89.11, its SWA weights 89.02'),
        # The two official scripts evaluate on the test set after every epoch and report the best epoch.
        Row('ddamfn', {'dataset': 'rafdb', 'model': 'ddamfn', 'pretrained': MFN_MSCELEB}, reported=91.35,
            source=Source('DDAMFN (Electronics 2023)', 'comparison with the state of the art on RAF-DB', 'DDAMFN',
                          'accuracy'),
            selection='test_best', label='DDAMFN', column='RAF-DB',
            note='from its MS-Celeb-1M MixedFeatureNet; the paper also reports 67.03 on AffectNet-7 and 64.25 on '
                 'AffectNet-8 (docs/baselines.md)'),
        Row('efficientface', {'dataset': 'rafdb', 'model': 'efficientface', 'pretrained': EFFICIENTFACE_MSCELEB,
                              'efficientface_teacher': EFFICIENTFACE_LDG},
            reported=88.36, source=Source('EfficientFace (AAAI 2021)', 'comparison on RAF-DB; its README and '
                                          'log/RAF-DB.txt', 'EfficientFace', 'accuracy'),
            selection='test_best', label='EfficientFace', column='RAF-DB',
            note='from its MS-Celeb-1M weights, trained on the soft labels of its ResNet-50 label distribution '
                 'generator as in the paper'),
        Row('gla_fernet', {'dataset': 'rafdb', 'arch': 'GLA_FERNet'}, selection='test_best', label='GLA-FERNet',
            column='RAF-DB', note='the released genotype; the paper\'s number is not in our sources (the released '
                                  'code reports the best test epoch, best_acc)'),
    ))

# ---------------------------------------------------------------- search_family_rafdb
FAMILY_NOISE = 10  # the noise of the released README's search example
SEARCH_FAMILY_RAFDB = Table(
    'search_family_rafdb', f'The DARTS family searched on RAF-DB with {FAMILY_NOISE}% label noise, each genotype '
                           f'trained with its method\'s recipe', (
        Row('gla_fernet_sequential', {'dataset': 'rafdb', 'noise': FAMILY_NOISE},
            search={'dataset': 'rafdb', 'noise': FAMILY_NOISE, 'sampling': 'sequential'}, selection='test_best',
            label='GLA-FERNet (sequential channels)', column='RAF-DB'),
        Row('gla_fernet_random', {'dataset': 'rafdb', 'noise': FAMILY_NOISE},
            search={'dataset': 'rafdb', 'noise': FAMILY_NOISE, 'sampling': 'random'}, selection='test_best',
            label='GLA-FERNet (random channels)', column='RAF-DB'),
        Row('pc_darts', {'dataset': 'rafdb', 'noise': FAMILY_NOISE},
            search={'dataset': 'rafdb', 'noise': FAMILY_NOISE, 'method': 'pc_darts'}, label='PC-DARTS',
            column='RAF-DB', note='PC-DARTS and DARTS published CIFAR and ImageNet numbers only'),
        Row('darts', {'dataset': 'rafdb', 'noise': FAMILY_NOISE},
            search={'dataset': 'rafdb', 'noise': FAMILY_NOISE, 'method': 'darts'}, label='DARTS', column='RAF-DB'),
        Row('emonas', {'dataset': 'rafdb', 'noise': FAMILY_NOISE},
            search={'dataset': 'rafdb', 'noise': FAMILY_NOISE, 'method': 'emonas'}, reported=87.28,
            source=Source('EmoNAS (arXiv 2303.13653)', 'Table 5', 'EmoNAS', 'RAF-DB overall'), label='EmoNAS',
            column='RAF-DB',
            note=f'EmoNAS searched and trained on clean RAF-DB, ours at {FAMILY_NOISE}% noise; its per-class '
                 f'accuracies in the same row imply 82.02% overall; it states no selection rule'),
    ), note='GLA-FERNet\'s rows follow the released code, which reports the best test epoch (best_acc).')

# ---------------------------------------------------------------- gla_fernet_noise
AFFECTNET = {7: {'dataset': 'affectnet', 'affectnet_classes': 7}, 8: {'dataset': 'affectnet', 'affectnet_classes': 8}}
GLA_FERNET_NOISE = Table(
    'gla_fernet_noise', 'GLA-FERNet searched and trained under label noise (RAF-DB) and on AffectNet',
    tuple(Row(f'rafdb-n{noise}', {'dataset': 'rafdb', 'noise': noise}, search={'dataset': 'rafdb', 'noise': noise},
              selection='test_best', label='GLA-FERNet', column=f'RAF-DB {noise}%')
          for noise in (0, 10, 20, 30)) +
    tuple(Row(f'affectnet{classes}', dict(flags), search=dict(flags), selection='test_best', label='GLA-FERNet',
              column=f'AffectNet-{classes}')
          for classes, flags in AFFECTNET.items()),
    note='The paper\'s own numbers are not in our sources: every row reports None, and the rows still run. The '
         'released code reports the best test epoch (best_acc).',
    columns=('RAF-DB 0%', 'RAF-DB 10%', 'RAF-DB 20%', 'RAF-DB 30%', 'AffectNet-7', 'AffectNet-8'))

# ---------------------------------------------------------------- noise_x_networks
NOISE_LEVEL = 30
# The networks a noise method is tried on, with the flags that make the pairing valid; train.py refuses RLR-CNet with
# any method (its two-branch loss would be replaced) and EAC on CoRes-SE (no class activation map).
NETWORKS = {'gla_fernet': ('GLA-FERNet', {'arch': 'GLA_FERNet'}), 'fgw_fer': ('FGW-FER', {'model': 'fgw_fer'}),
            'shufflenet_v2': ('ShuffleNetV2', {'model': 'shufflenet_v2'}),
            'cores_se': ('CoRes-SE', {'model': 'cores_se'}),
            'resnet18': ('ResNet-18', {'model': 'resnet18', 'pretrained': MSCELEB})}
# The methods take each image's hard label: CoRes-SE's Mixup, CutMix and label smoothing are switched off for them.
HARD_LABELS = {'mixup_alpha': 0, 'cutmix_alpha': 0, 'label_smoothing': 0}
NOISE_X_NETWORKS = Table(
    'noise_x_networks', f'Every noise method on every network it applies to, RAF-DB at {NOISE_LEVEL}% noise',
    tuple(Row(f'{network}-{method}',
              {'dataset': 'rafdb', 'noise': NOISE_LEVEL, **flags, 'noise_method': method,
               **(HARD_LABELS if network == 'cores_se' and method != 'none' else {})},
              selection='last5_mean', label=label, column=NOISE_METHOD_LABELS[method],
              note='Mixup, CutMix and label smoothing off' if network == 'cores_se' and method != 'none' else '')
          for network, (label, flags) in NETWORKS.items() for method in ('none', 'scn', 'rul', 'eac', 'nla')
          if not (network == 'cores_se' and method == 'eac')),
    note='No reported numbers: these pairings are ours. Left out, because train.py refuses them: RLR-CNet with any '
         'method (its two-branch loss is a loss of its own, which the method\'s would replace) and EAC on CoRes-SE '
         '(its features are pooled before the head: no class activation map). CoRes-SE trains the other methods '
         'with Mixup, CutMix and label smoothing off (each method needs every image\'s own hard label). Ours: the '
         'mean of the last 5 epochs, as the noisy-label papers report.',
    columns=tuple(NOISE_METHOD_LABELS.values()))

# ---------------------------------------------------------------- budget_rafdb
# A search for a budget (docs/budget.md): each method at 1/8, 1/4, 1/2 and 1x the multiply-adds and the parameters of
# the released GLA-FERNet network (523.6 M multiply-adds, 1.377 M parameters at 48 px), and unconstrained. With the
# released stride-1 stem, 43% of those multiply-adds are in parts no operation choice changes, so 1/8x and 1/4x are
# out of reach; the same two budgets again with a stride-2 stem (train.py --stem_stride 2) are within it.
BUDGET_FRACTIONS = ('0.125x', '0.25x', '0.5x', '1x')
BUDGET_METHODS = {'gla_fernet': 'GLA-FERNet', 'pc_darts': 'PC-DARTS', 'darts': 'DARTS', 'emonas': 'EmoNAS'}


def budget_row(method, metric=None, fraction=None, stem_stride=1):
    search = {'dataset': 'rafdb', 'method': method}
    if metric:
        search[f'budget_{metric}'] = fraction
    if stem_stride != 1:
        search['target_stem_stride'] = stem_stride
    name = f'{method}-{metric}-{fraction}' if metric else f'{method}-unconstrained'
    return Row(name + (f'-stem{stem_stride}' if stem_stride != 1 else ''), {'dataset': 'rafdb'}, search=search,
               selection='test_best', label=BUDGET_METHODS[method],
               column=(f'{metric} {fraction}' if metric else 'unconstrained') +
                      (f' (stem stride {stem_stride})' if stem_stride != 1 else ''))


BUDGET_RAFDB = Table(
    'budget_rafdb', 'The DARTS family searched for a budget on RAF-DB: multiply-adds and parameters at 1/8 to 1x '
                    'the released GLA-FERNet network\'s', tuple(
        [budget_row(method) for method in BUDGET_METHODS] +
        [budget_row(method, metric, fraction) for method in BUDGET_METHODS for metric in ('macs', 'params')
         for fraction in BUDGET_FRACTIONS] +
        [budget_row(method, 'macs', fraction, stem_stride=2) for method in BUDGET_METHODS
         for fraction in BUDGET_FRACTIONS[:2]]),
    note='No reported numbers: budgets are ours. Each genotype trains at its search\'s target network (train.py '
         '--genotype_file takes it); report.py on the table\'s runs draws accuracy against cost with the Pareto '
         'front and says which of its search\'s budgets each network meets.',
    columns=('unconstrained',) + tuple(f'{metric} {fraction}' for metric in ('macs', 'params')
                                       for fraction in BUDGET_FRACTIONS) +
            tuple(f'macs {fraction} (stem stride 2)' for fraction in BUDGET_FRACTIONS[:2]))

TABLES = {table.name: table for table in (NOISE_RAFDB, LIGHTWEIGHT_RAFDB, SEARCH_FAMILY_RAFDB, GLA_FERNET_NOISE,
                                          NOISE_X_NETWORKS, BUDGET_RAFDB)}
