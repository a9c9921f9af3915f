"""Figures of runs, drawn with matplotlib as PNG and PDF: searched cells (DARTS' cell diagrams without graphviz),
confusion matrices, training curves, architecture weights over a search (paper Sec. 4), accuracy versus cost."""
import os
import textwrap

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path
from matplotlib.ticker import EngFormatter, FixedLocator, FuncFormatter, MaxNLocator, NullFormatter

import pareto
import run_folder
from genotypes import PRIMITIVES, parse_genotype

PNG_DPI = 150
FONT = {'family': 'DejaVu Sans'}  # ships with matplotlib, so text measures the same everywhere
COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f', '#bcbd22',
           '#17becf']  # matplotlib's tab10
MARKERS = 'osD^vP*Xph<>'


def save_figure(figure, path):
    """`path` as PNG and, beside it, the same name as PDF (vector, for a paper); each written atomically (a kill never
    leaves half a picture, and reports drawing into one folder at once never collide)."""
    stem = os.path.splitext(path)[0]
    if figure.get_layout_engine() is not None:
        figure.draw_without_rendering()  # lay out once, not once per file: it costs more than drawing
        figure.set_layout_engine('none')
    for extension, dpi in (('png', PNG_DPI), ('pdf', None)):
        run_folder.atomic_write(f'{stem}.{extension}', lambda tmp: figure.savefig(tmp, format=extension, dpi=dpi,
                                                                                 facecolor='white'))


def op_colour(name):
    """One colour per operation, the same in every figure."""
    names = PRIMITIVES[1:] + ['sep_conv_7x7', 'conv_7x1_1x7', 'none']
    return COLOURS[names.index(name) % len(COLOURS)] if name in names else 'black'


# ---------------------------------------------------------------- cell diagrams

# Geometry of a cell diagram, in inches: the axes span the figure, so one data unit is one inch and text sizes are
# known in data units.
SPACING = 1.6  # between node centres; the gap between two boxes must hold the widest operation name
BOX_W, BOX_H = 0.74, 0.36
FIRST_LANE, LANE = 0.3, 0.3  # height of the lowest edge lane above the boxes, and between lanes (> a label's height)
BUS = 0.32  # depth of the line that gathers the concatenated nodes below the boxes
MARGIN, TITLE = 0.15, 0.4
LABEL_SIZE = 8.5


def cell_layout(ops, concat):
    """Where everything of a cell diagram goes, so that no edge label can touch another label, a box or another edge.

    The states lie on one line: c_{k-2}, c_{k-1}, the intermediate nodes, then c_{k}. Each operation is an edge
    drawn up from its source box to a horizontal lane, along it and down into its target box. Edges whose spans
    overlap get different lanes (at least a label's height apart), and every vertical segment lies within a box's
    width; an edge's label sits on its lane in the gap just before its target box. So a label shares its place with
    no vertical segment, no box, and no other lane or label. The concatenated nodes feed c_{k} along a line below.
    Returns {'nodes': [(x, text, kind)], 'edges': [{'op', 'source', 'target', 'points', 'label'}], 'bus': [points],
    'size': (width, height), 'bottom': y of the lowest point}."""
    steps = len(ops) // 2
    x = lambda state: MARGIN + BOX_W / 2 + state * SPACING
    edges = [{'op': op, 'source': source, 'target': position // 2 + 2}
             for position, (op, source) in enumerate(ops)]
    # Lanes: shortest spans lowest (arcs nest), each edge on the lowest lane free over its span. Spans may share an
    # end node: an edge leaves a box from its right half and enters one in its left half.
    lanes = []  # the edges on each lane
    for edge in sorted(edges, key=lambda e: (e['target'] - e['source'], e['source'])):
        disjoint = lambda placed: all(e['target'] <= edge['source'] or edge['target'] <= e['source'] for e in placed)
        edge['lane'] = next((lane for lane, placed in enumerate(lanes) if disjoint(placed)), len(lanes))
        if edge['lane'] == len(lanes):
            lanes.append([])
        lanes[edge['lane']].append(edge)
    lane_y = lambda lane: BOX_H / 2 + FIRST_LANE + lane * LANE
    # Ports: higher lanes leave nearer a box's centre and arrive nearer it, so that no vertical segment crosses a
    # lower lane of the same box.
    for state in range(steps + 2):
        leaving = sorted((e for e in edges if e['source'] == state), key=lambda e: -e['lane'])
        for k, edge in enumerate(leaving):
            edge['start'] = x(state) + BOX_W / 2 * (k + 1) / (len(leaving) + 1)
        arriving = sorted((e for e in edges if e['target'] == state), key=lambda e: e['lane'])
        for k, edge in enumerate(arriving):
            edge['end'] = x(state) - BOX_W / 2 * (len(arriving) - k) / (len(arriving) + 1)
    for edge in edges:
        y = lane_y(edge['lane'])
        edge['points'] = [(edge['start'], BOX_H / 2), (edge['start'], y), (edge['end'], y), (edge['end'], BOX_H / 2)]
        edge['label'] = ((x(edge['target'] - 1) + x(edge['target'])) / 2, y)

    output = steps + 2
    names = ['$c_{k-2}$', '$c_{k-1}$'] + [str(i) for i in range(steps)]
    nodes = [(x(s), name, 'input' if s < 2 else 'node') for s, name in enumerate(names)]
    nodes.append((x(output), '$c_{k}$', 'output'))
    bus_y = -BOX_H / 2 - BUS
    bus = [[(x(s), -BOX_H / 2), (x(s), bus_y)] for s in concat]
    bus.append([(min(x(s) for s in concat), bus_y), (x(output), bus_y), (x(output), -BOX_H / 2)])
    top = lane_y(max(len(lanes) - 1, 0)) + TITLE
    bottom = bus_y - MARGIN
    return {'nodes': nodes, 'edges': edges, 'bus': bus, 'size': (x(output) + BOX_W / 2 + MARGIN, top - bottom),
            'bottom': bottom}


def cell_figure(ops, concat, title=''):
    """The matplotlib Figure of a cell (see cell_layout); edge labels carry gid 'op-label', edges 'edge'."""
    layout = cell_layout(ops, concat)
    width, height = layout['size']
    figure = Figure(figsize=(width, height))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(layout['bottom'], layout['bottom'] + height)
    ax.axis('off')
    arrow = dict(arrowstyle='-|>,head_length=0.45,head_width=0.2', mutation_scale=12, shrinkA=0, shrinkB=0,
                 joinstyle='round', capstyle='round')
    *drops, into_output = layout['bus']
    for points in drops:
        ax.plot(*zip(*points), color='0.55', lw=1.2, solid_capstyle='round')
    ax.add_patch(FancyArrowPatch(path=Path(into_output), color='0.55', lw=1.2, **arrow))
    for edge in layout['edges']:
        colour = op_colour(edge['op'])
        ax.add_patch(FancyArrowPatch(path=Path(edge['points']), color=colour, lw=1.4, gid='edge', **arrow))
        ax.text(*edge['label'], edge['op'], ha='center', va='center', fontsize=LABEL_SIZE, color=colour, gid='op-label',
                bbox=dict(boxstyle='square,pad=0.15', facecolor='white', edgecolor='none'), **FONT)
    fills = {'input': '#c7e9c0', 'node': '#c6dbef', 'output': '#fdd0a2'}
    for x, text, kind in layout['nodes']:
        ax.add_patch(FancyBboxPatch((x - BOX_W / 2, -BOX_H / 2), BOX_W, BOX_H, boxstyle='round,pad=0,rounding_size=0.06',
                                    facecolor=fills[kind], edgecolor='black', lw=1, gid='node'))
        ax.text(x, 0, text, ha='center', va='center', fontsize=11, **FONT)
    if title:
        ax.text(MARGIN, layout['bottom'] + height - 0.1, title, ha='left', va='top', fontsize=11, weight='bold', **FONT)
    return figure


def plot_cell(ops, concat, path, title=''):
    """Draw a cell as path (PNG) and PDF: inputs c_{k-2}, c_{k-1} on the left, then the intermediate nodes, then
    c_{k}. `ops` is a genotype's normal or reduce list of (op, input) pairs, two per node."""
    save_figure(cell_figure(ops, concat, title), path)


def plot_genotype(genotype_text, folder):
    """normal.png and reduce.png (and their PDFs) of a genotype (its text, as genotype.txt holds it) in folder."""
    genotype = parse_genotype(genotype_text)
    plot_cell(genotype.normal, genotype.normal_concat, os.path.join(folder, 'normal.png'), 'normal cell')
    plot_cell(genotype.reduce, genotype.reduce_concat, os.path.join(folder, 'reduce.png'), 'reduction cell')


# ---------------------------------------------------------------- results of a run

def plot_confusion_matrix(matrix, class_names, path, title=''):
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts and percentages."""
    counts = np.asarray(matrix, dtype=np.int64)
    shares = 100 * counts / np.maximum(counts.sum(1, keepdims=True), 1)
    n = len(class_names)
    side = 1.2 + 0.72 * n
    figure = Figure(figsize=(side + 1.6, side + 0.6), layout='constrained')
    ax = figure.add_subplot()
    image = ax.imshow(shares, cmap='Blues', vmin=0, vmax=100)
    for i in range(n):
        for j in range(n):
            ax.text(j, i, f'{counts[i, j]}\n{shares[i, j]:.0f}%', ha='center', va='center', fontsize=8,
                    color='white' if shares[i, j] > 55 else 'black', **FONT)
    ax.set_xticks(range(n), class_names, rotation=40, ha='right', rotation_mode='anchor', fontsize=9)
    ax.set_yticks(range(n), class_names, fontsize=9)
    ax.set_xlabel('predicted class', fontsize=10)
    ax.set_ylabel('true class', fontsize=10)
    figure.colorbar(image, ax=ax, shrink=0.8).set_label('share of the true class (%)', fontsize=9)
    if title:
        ax.set_title('\n'.join(textwrap.fill(line, 60) for line in title.splitlines()), fontsize=10)
    save_figure(figure, path)


def plot_training_curves(curves, path, title='', warmup_epochs=0):
    """Loss and accuracy per epoch: `curves` maps 'train_loss', 'test_acc', ... (the TensorBoard scalars of a run)
    to (epochs, values); each split is one line in both panels, named once in a legend below them (inside, it would
    cover the curves). Warm-up epochs of a search are shaded."""
    figure = Figure(figsize=(9, 3.7), layout='constrained')
    handles = {}
    names = {'train': 'training set', 'test': 'test set', 'valid': 'held-out split (architecture steps)',
             'val': 'validation split'}
    for k, (quantity, label) in enumerate((('loss', 'cross-entropy loss'), ('acc', 'accuracy (%)'))):
        ax = figure.add_subplot(1, 2, k + 1)
        for n, (split, name) in enumerate(names.items()):
            if f'{split}_{quantity}' in curves:
                epochs, values = curves[f'{split}_{quantity}']
                ax.plot(epochs, values, marker='o' if len(epochs) < 30 else None, ms=3, color=COLOURS[n], label=name)
        if warmup_epochs:
            ax.axvspan(-0.5, warmup_epochs - 0.5, color='0.9', zorder=0, label='warm-up (no architecture steps)')
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel('epoch')
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    figure.legend(list(handles.values()), list(handles), loc='outside lower center', ncol=len(handles), fontsize=8,
                  frameon=False)
    if title:
        figure.suptitle(title, fontsize=10)
    save_figure(figure, path)


def plot_architecture_weights(history, cell, path, title='', warmup_epochs=0, genotype=None):
    """How a search's architecture weights evolved (the figure NAS papers show), for `cell` 'normal' or 'reduce'.

    history: the records of train_search.py's architecture_weights.json ({'epoch', 'primitives', 'normal':
    {'ops': edges x ops, 'edges': edges}, 'reduce': ...}). Row i is intermediate node i: one panel per incoming edge
    with the weight of each candidate operation (sigmoid or softmax of alpha, as the search's method), then one panel
    with the weights of its edges (softmax of beta over the node's inputs; 1 for a method without edge weights).
    Edges the genotype kept are framed and name their operation."""
    epochs = [record['epoch'] for record in history]
    primitives = history[0]['primitives']
    ops = np.array([record[cell]['ops'] for record in history])  # epochs x edges x primitives
    edges = np.array([record[cell]['edges'] for record in history])  # epochs x edges
    steps = 0
    while steps * (steps + 3) // 2 < ops.shape[1]:  # node i has 2 + i incoming edges
        steps += 1
    kept = {}
    if genotype is not None:
        pairs = genotype.normal if cell == 'normal' else genotype.reduce
        kept = {(position // 2, source): op for position, (op, source) in enumerate(pairs)}
    pad = max(0.05 * float(ops.max() - ops.min()), 1e-3)
    op_range = (float(ops.min()) - pad, float(ops.max()) + pad)  # one scale for all operation panels: comparable
    state_names = ['$c_{k-2}$', '$c_{k-1}$'] + [f'node {i}' for i in range(steps)]
    columns = steps + 2
    figure = Figure(figsize=(1.9 * columns, 1.45 * steps + 0.9), layout='constrained')
    grid = figure.subplots(steps, columns, sharex=True, squeeze=False)
    first = 0
    for node in range(steps):
        for source in range(columns):
            ax = grid[node, source]
            if source > node + 1 and source < columns - 1:
                ax.axis('off')
                continue
            if warmup_epochs:
                ax.axvspan(min(epochs) - 0.5, warmup_epochs - 0.5, color='0.92', zorder=0)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
            if source == columns - 1:
                for k in range(node + 2):
                    ax.plot(epochs, edges[:, first + k], color=COLOURS[k % len(COLOURS)], lw=1.2,
                            label=state_names[k].replace('node ', ''))
                ax.set_title(f'edge weights into node {node}', fontsize=7.5)
                continue
            for p, name in enumerate(primitives):
                ax.plot(epochs, ops[:, first + source, p], color=op_colour(name), lw=1.1,
                        ls='--' if name == 'none' else '-', label=name)
            ax.set_ylim(*op_range)
            caption = f'{state_names[source]} → node {node}'
            if (node, source) in kept:
                caption += f'\nkept: {kept[(node, source)]}'
                for spine in ax.spines.values():
                    spine.set_linewidth(2)
            ax.set_title(caption, fontsize=7.5, weight='bold' if (node, source) in kept else 'normal')
        first += node + 2
    for ax in grid[-1]:
        ax.set_xlabel('epoch', fontsize=8)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = grid[0, 0].get_legend_handles_labels()
    figure.legend(handles, labels, loc='outside lower center', ncol=len(primitives), fontsize=8, frameon=False)
    handles, labels = grid[-1, -1].get_legend_handles_labels()  # the last node has an edge from every state
    figure.legend(handles, labels, loc='outside right center', fontsize=8, title='edge from', title_fontsize=8)
    # Records of searches from before the DARTS-family methods were GLA-FERNet's: sigmoid, edge weights.
    op_weights, has_edge_weights = history[0].get('op_weights', 'sigmoid'), history[0].get('edge_weights', True)
    edges_made = 'softmax of beta' if has_edge_weights else '1: this method sums the edges'
    figure.suptitle(title or f'{cell} cell: weight of each operation on each edge ({op_weights} of alpha) and of each '
                             f'edge into a node ({edges_made}); warm-up shaded', fontsize=10)
    save_figure(figure, path)


# Sizes of the accuracy-versus-cost figure, in inches; a legend entry is about its marker plus its characters wide at
# font size 8 (DejaVu Sans), which sets how many columns fit in the figure's width.
PANEL_WIDTH, PANEL_HEIGHT, MIN_WIDTH = 3.6, 3.4, 6.4
LEGEND_MARKER, LEGEND_CHARACTER, LEGEND_ROW = 0.6, 0.068, 0.22
COST_MARGIN = 0.08  # of the cost range (in log space) left free on each side


def cost_ticks(low, high):
    """Round values to mark on a log axis from `low` to `high`, never crowded: powers of ten where they give three
    ticks or more, else 1-2-5 per decade, else (a range under a decade, where matplotlib's log locator falls back to
    many linear ticks) at most five evenly spaced round values."""
    decades = range(int(np.floor(np.log10(low))), int(np.ceil(np.log10(high))) + 1)
    for mantissas in ((1,), (1, 2, 5)):
        ticks = [m * 10.0 ** d for d in decades for m in mantissas if low <= m * 10.0 ** d <= high]
        if len(ticks) >= 3:
            return ticks
    return [t for t in MaxNLocator(nbins=4, steps=[1, 2, 2.5, 5, 10]).tick_values(low, high) if low <= t <= high]


def plot_accuracy_versus_cost(points, cost, path, accuracy_label):
    """Accuracy against parameters, multiply-adds or latency (log scale), one panel per dataset and noise level.

    points: dicts with 'model' (its legend entry: keep it short), 'panel' (its title), the cost `cost` ('params',
    'macs' or 'latency_ms'), 'accuracy', 'std' (over seeds; None for one run) and 'runs'. Each model keeps its marker
    in every panel; the Pareto front of each panel (pareto.pareto_front: the models no other beats on both cost and
    accuracy) is ringed and joined by a dashed step line: the best accuracy reached at each cost. The legend goes
    below the panels, in as many columns as fit, so that it never narrows or covers them."""
    panels = sorted({p['panel'] for p in points})
    models = sorted({p['model'] for p in points})
    width = max(MIN_WIDTH, 1.0 + PANEL_WIDTH * len(panels))
    entries = models + ['Pareto front']
    columns = max(1, min(len(entries), int(width // (LEGEND_MARKER + LEGEND_CHARACTER * max(map(len, entries))))))
    rows = -(-len(entries) // columns)
    figure = Figure(figsize=(width, PANEL_HEIGHT + LEGEND_ROW * (rows + 1)), layout='constrained')
    axes = figure.subplots(1, len(panels), sharex=True, sharey=True, squeeze=False)[0]
    for ax, panel in zip(axes, panels):
        here = sorted((p for p in points if p['panel'] == panel), key=lambda p: (p[cost], -p['accuracy']))
        for p in here:
            m = models.index(p['model'])
            ax.errorbar(p[cost], p['accuracy'], yerr=p['std'] or 0, fmt=MARKERS[m % len(MARKERS)], ms=7,
                        color=COLOURS[m % len(COLOURS)], capsize=3, label=p['model'])
        front = draw_front(ax, pareto.pareto_front(here, cost), cost)
        ax.set_title(panel, fontsize=10)
        ax.grid(alpha=0.3, which='both')
        ax.tick_params(labelsize=8)
        ax.set_xlabel(pareto.AXES[cost], fontsize=9)
    low, high = min(p[cost] for p in points), max(p[cost] for p in points)
    pad = max((high / low) ** COST_MARGIN, 1.2)  # room for the markers at both ends, also for a single point
    axes[0].set_xscale('log')  # shared: every panel
    axes[0].set_xlim(low / pad, high * pad)
    axes[0].xaxis.set_major_locator(FixedLocator(cost_ticks(low / pad, high * pad)))
    axes[0].xaxis.set_major_formatter(FuncFormatter(lambda value, _: f'{value:g}') if cost == 'latency_ms' else
                                      EngFormatter(sep=''))  # 0.5, 2 (ms); 500k, 2.5M, 1G
    axes[0].xaxis.set_minor_formatter(NullFormatter())
    axes[0].margins(y=0.15)
    axes[0].set_ylabel(accuracy_label, fontsize=9)
    handles = {'Pareto front': front}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, handle)
    labels = [label for label in entries if label in handles]  # the models in order, then the front
    figure.legend([handles[label] for label in labels], labels, loc='outside lower center', ncol=columns, fontsize=8,
                  title='mean ± std over seeds', title_fontsize=8, frameon=False)
    save_figure(figure, path)


def draw_front(ax, front, cost):
    """A panel's Pareto front (its points by increasing cost): each point ringed, and a dashed step line through them
    that stays at a point's accuracy until the next costlier point (what a budget between the two can reach).
    Returns the legend's handle: a ring on the line."""
    costs, accuracies = [p[cost] for p in front], [p['accuracy'] for p in front]
    line, = ax.step(costs, accuracies, where='post', ls='--', color='0.35', lw=1, zorder=0)
    rings, = ax.plot(costs, accuracies, ls='none', marker='o', ms=13, mfc='none', mec='0.35', mew=1.1, zorder=0)
    return line, rings


# ---------------------------------------------------------------- faces: boxes on photos, class activation maps

BOX_COLOUR = '#ffcc00'  # legible on skin, hair and most backgrounds
CLASS_MAP_COLOURS = 'jet'  # the colour map of FER papers' attention figures
CLASS_MAP_ALPHA = 0.45  # the face stays visible under the map


def draw_faces(image, labelled_boxes):
    """A copy of an H x W x 3 uint8 image (PIL) with each (box x0, y0, x1, y1, label) drawn: the box, and the label on
    a dark band above it (below it at the top edge). Line width and text scale with the image."""
    from PIL import Image, ImageDraw, ImageFont
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    size = max(12, round(min(picture.size) / 30))
    try:
        font = ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    for box, label in labelled_boxes:
        draw.rectangle(box, outline=BOX_COLOUR, width=max(2, size // 6))
        left, top, right, bottom = draw.textbbox((0, 0), label, font=font)
        width, height = right - left + 4, bottom - top + 4
        y = box[1] - height if box[1] >= height else box[3]
        draw.rectangle((box[0], y, box[0] + width, y + height), fill='black')
        draw.text((box[0] + 2 - left, y + 2 - top), label, fill=BOX_COLOUR, font=font)
    return picture


def plot_class_map(image, heat, path, title=''):
    """An aligned face (H x W x 3 uint8) beside the same face under its class activation map `heat` (H x W, scaled to
    [0, 1] for this face), with the colour bar of that scale; one PNG."""
    figure = Figure(figsize=(4.4, 2.3), layout='constrained')
    plain, overlay = figure.subplots(1, 2)
    plain.imshow(image, interpolation='nearest')
    shown = overlay.imshow(heat, cmap=CLASS_MAP_COLOURS, vmin=0, vmax=1, interpolation='nearest')
    overlay.imshow(image, interpolation='nearest', alpha=1 - CLASS_MAP_ALPHA)
    for axes in (plain, overlay):
        axes.set_axis_off()
    bar = figure.colorbar(shown, ax=overlay, fraction=0.08, ticks=[0, 0.5, 1])
    bar.ax.tick_params(labelsize=7)
    bar.set_label('relative to this face', fontsize=7)
    figure.suptitle(title, fontsize=9, **FONT)
    figure.draw_without_rendering()
    run_folder.atomic_write(path, lambda tmp: figure.savefig(tmp, format='png', dpi=PNG_DPI, facecolor='white'))
