"""Accuracy against cost: the Pareto front of networks (those no other network beats on both cost and accuracy), the
budgets each meets (given to report.py, or its search's), and report.md's section on them. Plain arithmetic on the
numbers runs hold, without torch, for report.py's tables and visualize.py's figures alike, so both name one front."""
import collections
import os

import run_folder

COSTS = ('params', 'macs', 'latency_ms')  # the costs a search can be budgeted for (budget.METRICS), in that order
NAMES = {'params': 'params', 'macs': 'MACs', 'latency_ms': 'latency'}  # short, for columns and legends
AXES = {'params': 'parameters', 'macs': 'multiply-adds (MACs) per image', 'latency_ms': 'CPU batch-1 latency (ms)'}
DASH = '-'  # a number not known: report.py's dash
YES, NO = 'yes', 'no'
# A latency budget of a search is for the device that measured its latency table (any device: a phone, a GPU), not
# for the CPU report.py times the networks on: the two are never compared.
ON_TABLE_DEVICE = 'table'
SEARCH_BUDGET_COLUMNS = ['search_budgets'] + [f'search_budget_{m}{met}' for m in COSTS for met in ('', '_met')] + [
    'at_search_target']
SEARCH_HEADER = ['search budgets', 'at search target']


# ---------------------------------------------------------------- the front

def dominates(a, b, cost, accuracy='accuracy'):
    """Whether point a beats point b: no costlier and no less accurate, and cheaper or more accurate."""
    return (a[cost] <= b[cost] and a[accuracy] >= b[accuracy] and
            (a[cost] < b[cost] or a[accuracy] > b[accuracy]))


def pareto_front(points, cost, accuracy='accuracy'):
    """The points that no other point beats (dominates), by increasing cost: of points of equal cost only the most
    accurate, of points of equal accuracy only the cheapest; two points equal in both are both on it (neither beats
    the other). `points`: dicts holding the number `cost` and the number `accuracy`."""
    front = [p for p in points if not any(dominates(q, p, cost, accuracy) for q in points)]
    return sorted(front, key=lambda p: (p[cost], -p[accuracy]))


def fronts(points, cost, accuracy='accuracy', panel='panel'):
    """{panel: its Pareto front} of the points that hold a number for `cost` and `accuracy` (others, missing one,
    are on no front): accuracies of different datasets or noise levels are never compared, so one front per panel."""
    known = [p for p in points if is_number(p.get(cost)) and is_number(p.get(accuracy))]
    return {name: pareto_front([p for p in known if p[panel] == name], cost, accuracy)
            for name in sorted({p[panel] for p in known}, key=str)}


def mark_pareto(groups, selection):
    """Each group's 'pareto': the costs on whose front it is ('params, macs'; 'none'), among the groups of its panel
    (dataset and noise level), for the accuracy of `selection` (report.py --selection), as the figures draw them.
    Returns the fronts: {cost: {panel: [groups, cheapest first]}}."""
    accuracy = f'{selection}_accuracy_mean'
    found = {cost: fronts(groups, cost, accuracy) for cost in COSTS}
    for group in groups:
        on = [cost for cost in COSTS if any(g is group for front in found[cost].values() for g in front)]
        group['pareto'] = ', '.join(on) or 'none'
    return found


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# ---------------------------------------------------------------- budgets

def meets(cost, budget):
    """'yes' where a cost is within its budget (equal to it included), else 'no'."""
    return YES if cost <= budget else NO


def short_cost(metric, value):
    """A cost in a few characters: 300k, 1.5M, 262M parameters or MACs; 4.5 ms."""
    if metric == 'latency_ms':
        return f'{value:.3g} ms'
    for factor, suffix in ((1e9, 'G'), (1e6, 'M'), (1e3, 'k')):
        if value >= factor:
            return f'{value / factor:.3g}{suffix}'
    return f'{value:.3g}'


def budget_label(metric, value):
    """'MACs ≤ 262M': a budget as a column header or a legend entry says it."""
    return f'{NAMES[metric]} ≤ {short_cost(metric, value)}'


def budgets_label(budgets):
    """The budgets {metric: value} of a search, in COSTS order: 'params ≤ 300k, MACs ≤ 150M'; '' for none."""
    return ', '.join(budget_label(m, budgets[m]) for m in COSTS if m in budgets)


def given_budgets(args):
    """{metric: budget} of report.py's --budget_* flags given."""
    return {m: getattr(args, f'budget_{m}') for m in COSTS if getattr(args, f'budget_{m}', None) is not None}


def mark_budgets(rows, budgets):
    """Each row's 'meets_<metric>': whether its network (a run's, or a group's: its mean latency) meets that given
    budget; a dash where the cost is unknown."""
    for row in rows:
        for metric, budget in budgets.items():
            row[f'meets_{metric}'] = DASH if row[metric] == DASH else meets(row[metric], budget)


def search_budgets(genotype_file):
    """({metric: budget}, {train.py flag: its value in the target network}) of the budgeted search that wrote
    genotype_file, as its method file holds them; ({}, {}) for a search without budgets (or from before them), one
    that is not here, or a damaged method file (that search's own line of the report says so)."""
    if not genotype_file:
        return {}, {}
    content, _ = run_folder.read_optional_json(os.path.join(os.path.dirname(genotype_file), run_folder.METHOD))
    budgets = (content or {}).get('budgets')
    if not isinstance(budgets, dict):
        return {}, {}
    budgets = {m: v for m, v in budgets.items() if m in COSTS and is_number(v)}
    return budgets, run_folder.search_target(genotype_file) if budgets else {}


def search_budget_columns(args, row):
    """For a network trained from a budgeted search's genotype: the search's budgets and whether the trained network
    meets each, by its own parameters and MACs (metrics.json: the network as trained, also where it was trained away
    from the search's target, which 'at_search_target' names); a latency budget is for the device of the search's
    latency table, not this CPU, so never compared: 'table'. Dashes for other networks, or a search not here."""
    budgets, target = search_budgets(args.get('genotype_file'))
    columns = {'search_budgets': budgets_label(budgets) or DASH,
               'at_search_target': at_target(args, target) if budgets else DASH}
    for metric in COSTS:
        budget = budgets.get(metric, DASH)
        met = DASH if budget == DASH else ON_TABLE_DEVICE if metric == 'latency_ms' else (
            DASH if row[metric] == DASH else meets(row[metric], budget))
        columns.update({f'search_budget_{metric}': budget, f'search_budget_{metric}_met': met})
    return columns


def at_target(args, target):
    """'yes' where a run trained the network its search budgeted (the search's target), else how it differs
    ('no: init_channels 8 (target 36)'); a dash for a search that recorded no target."""
    if not target:
        return DASH
    differ = [f'{flag} {args.get(flag, DASH)} (target {value})' for flag, value in target.items()
              if args.get(flag) != value]
    return 'no: ' + ', '.join(differ) if differ else YES


# ---------------------------------------------------------------- report.md and the figures' legends

def search_cells(row):
    """The markdown cells of a row's search budgets ('params ≤ 300k: yes, MACs ≤ 150M: no') and of whether it was
    trained at its search's target."""
    met = [f'{budget_label(m, row[f"search_budget_{m}"])}: {row[f"search_budget_{m}_met"]}'
           for m in COSTS if row[f'search_budget_{m}'] != DASH]
    return [', '.join(met) or DASH, row['at_search_target']]


def group_name(group, model=None):
    """A group as a list or a legend names it: its model (or `model`), noise method and setting."""
    method = f' {group["noise_method"]}' if group['noise_method'] not in (DASH, 'none') else ''
    return (model or group['model']) + method + (f' ({group["setting"]})' if group['setting'] else '')


def figure_labels(groups):
    """A legend entry per group, short: its short model name (for a budgeted search, its method and budgets), noise
    method and setting; where that names two networks (two searches for one budget) each adds its search's name."""
    labels = [group_name(g, g['short_model']) for g in groups]
    models = collections.defaultdict(set)
    for label, group in zip(labels, groups):
        models[label].add(group['model'])
    return [f'{label} [{g["search"] if g["search"] != DASH else g["model"]}]' if len(models[label]) > 1 else label
            for label, g in zip(labels, groups)]


def cost_section(groups, found, figures, args, accuracy_label, searched):
    """report.md's 'Accuracy against cost': the networks on each cost's Pareto front (`found`, of mark_pareto), what
    the budget columns say, and the accuracy-versus-cost figures ([(name, path)]). `accuracy_label`: the accuracy's
    selection rule, in words; `searched`: whether a run's network came from a budgeted search."""
    accuracy = f'{args.selection}_accuracy_mean'
    out = ['## Accuracy against cost', '',
           f'Test accuracy ({accuracy_label}, mean over seeds) of each row above against its parameters, MACs and '
           f'latency. The Pareto front of a cost is the networks that no other network of the same dataset and noise '
           f'level beats: none is both no costlier and no less accurate, and cheaper or more accurate (of equal costs '
           f'only the most accurate is on it; two equal in both are both on it). "Pareto" names the costs a row is on '
           f'the front of. On the front:', '']
    out += [f'- {NAMES[cost]}, {panel}: ' + '; '.join(
        f'{group_name(g)}: {g[accuracy]:.2f}% at {short_cost(cost, g[cost])}' for g in front)
        for cost in COSTS for panel, front in found[cost].items()] or [
        f'- none: no row has both a cost and a {accuracy_label} accuracy']
    if not args.latency:
        out += ['', 'Latency was not measured (--no-latency): no latency front, and no accuracy-versus-latency figure.']
    elif all(g['latency_ms'] == DASH for g in groups):
        out += ['', "No network's latency could be measured (the log says why): no latency front or figure."]
    out += [''] + budget_notes(groups, given_budgets(args), searched)
    out += [f'![{name}]({path})' for name, path in figures] + ['']
    return out


def budget_notes(groups, budgets, searched):
    """What the budget columns of the tables say, and which rows meet every budget given."""
    out = []
    if budgets:
        panels = len({g['panel'] for g in groups}) > 1
        meeting = [group_name(g) + (f' ({g["panel"]})' if panels else '') for g in groups
                   if all(g[f'meets_{m}'] == YES for m in budgets)]
        measured = ' (the latency measured here)' * ('latency_ms' in budgets)
        out += [f'Budgets given: {budgets_label(budgets)}{measured}. The columns of those names say whether each '
                f'network meets one (its cost at most the budget). Rows meeting every one: '
                f'{"; ".join(meeting) or "none"}.', '']
    if searched:
        out += ['"search budgets": the budgets of the search a network\'s genotype came from, and whether the trained '
                'network meets each, by its own parameters and MACs. A latency budget of a search is for the device '
                'of its latency table, not this CPU: it reads "table", compared with nothing. "at search target": '
                'whether the network was trained at the configuration its search budgeted (else the flags that '
                'differ: its cost is then not the one the search aimed at).', '']
    return out
