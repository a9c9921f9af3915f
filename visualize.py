"""Pictures of a run with pillow alone: a searched cell (as DARTS' visualize.py, without graphviz) and a confusion matrix."""
import os

from PIL import Image, ImageDraw, ImageFont

from genotypes import parse_genotype

FONT = ImageFont.load_default()


def _text_size(draw, text):
    left, top, right, bottom = draw.textbbox((0, 0), text, font=FONT)
    return right - left, bottom - top


def plot_cell(ops, concat, path, title=''):
    """Draw a cell: inputs c_{k-2}, c_{k-1} on the left, intermediate nodes in the middle, c_{k} on the right.
    `ops` is a genotype's normal or reduce list of (op, input) pairs, two per node."""
    steps = len(ops) // 2
    width, height = 260 + 150 * steps, 120 + 70 * max(steps, 2)
    image = Image.new('RGB', (width, height), 'white')
    draw = ImageDraw.Draw(image)
    box_w, box_h = 56, 26
    centres = {0: (50, height // 3), 1: (50, 2 * height // 3)}
    for i in range(steps):
        # zig-zag, so that edges skipping a node do not run through it
        centres[i + 2] = (190 + 150 * i, height // 2 + (-1) ** i * (height // 4))
    output = (width - 50, height // 2)

    def box(centre, label, fill):
        x, y = centre
        draw.rectangle([x - box_w // 2, y - box_h // 2, x + box_w // 2, y + box_h // 2], fill=fill, outline='black')
        w, h = _text_size(draw, label)
        draw.text((x - w / 2, y - h / 2 - 1), label, fill='black', font=FONT)

    def arrow(start, end, label='', colour='black'):
        (x0, y0), (x1, y1) = start, end
        x0, x1 = x0 + box_w // 2, x1 - box_w // 2
        draw.line([x0, y0, x1, y1], fill=colour, width=2)
        draw.polygon([(x1, y1), (x1 - 9, y1 - 4), (x1 - 9, y1 + 4)], fill=colour)
        if label:
            mx, my = (x0 + x1) / 2, (y0 + y1) / 2
            w, h = _text_size(draw, label)
            draw.rectangle([mx - w / 2 - 2, my - h / 2 - 2, mx + w / 2 + 2, my + h / 2 + 2], fill='white')
            draw.text((mx - w / 2, my - h / 2 - 1), label, fill='darkblue', font=FONT)

    for position, (name, index) in enumerate(ops):
        arrow(centres[index], centres[position // 2 + 2], name)
    for index in concat:
        arrow(centres[index], output, colour='gray')
    box(centres[0], 'c_{k-2}', 'palegreen')
    box(centres[1], 'c_{k-1}', 'palegreen')
    for i in range(steps):
        box(centres[i + 2], str(i), 'lightblue')
    box(output, 'c_{k}', 'palegoldenrod')
    if title:
        draw.text((10, 8), title, fill='black', font=FONT)
    image.save(path)


def plot_genotype(genotype_text, folder):
    """normal.png and reduce.png of a genotype (its text, as genotype.txt holds it) in folder."""
    genotype = parse_genotype(genotype_text)
    plot_cell(genotype.normal, genotype.normal_concat, os.path.join(folder, 'normal.png'), 'normal cell')
    plot_cell(genotype.reduce, genotype.reduce_concat, os.path.join(folder, 'reduce.png'), 'reduction cell')


def plot_confusion_matrix(matrix, class_names, path, title=''):
    """Row-normalised confusion matrix (rows: true class, columns: prediction), counts and percentages."""
    n = len(class_names)
    cell, left, top = 64, 90, 60
    image = Image.new('RGB', (left + n * cell + 20, top + n * cell + 70), 'white')
    draw = ImageDraw.Draw(image)
    for i, row in enumerate(matrix):
        total = max(sum(row), 1)
        for j, count in enumerate(row):
            share = count / total
            shade = int(255 * (1 - share))
            x, y = left + j * cell, top + i * cell
            draw.rectangle([x, y, x + cell, y + cell], fill=(shade, shade, 255), outline='gray')
            colour = 'white' if share > 0.5 else 'black'
            for k, text in enumerate((f'{count}', f'{100 * share:.0f}%')):
                w, h = _text_size(draw, text)
                draw.text((x + (cell - w) / 2, y + cell / 2 - h - 2 + k * (h + 4)), text, fill=colour, font=FONT)
        w, h = _text_size(draw, class_names[i][:12])
        draw.text((left - w - 6, top + i * cell + (cell - h) / 2), class_names[i][:12], fill='black', font=FONT)
    for j, name in enumerate(class_names):
        w, _ = _text_size(draw, name[:10])
        draw.text((left + j * cell + (cell - w) / 2, top + n * cell + 6), name[:10], fill='black', font=FONT)
    draw.text((left, top + n * cell + 26), 'predicted class', fill='black', font=FONT)
    draw.text((10, top - 20), 'true class', fill='black', font=FONT)
    if title:
        draw.text((10, 10), title, fill='black', font=FONT)
    image.save(path)
