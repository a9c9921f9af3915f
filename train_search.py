"""Bilevel architecture search of GLA-FERNet (paper Sec. 3.3, Algorithm 1) and of the DARTS family's methods
(PC-DARTS, DARTS, EmoNAS: genotypes.METHODS): writes the searched genotype to a run folder."""
import argparse

import cli
import genotypes
from errors import UserError

parser = cli.training_parser('train_search', __doc__, seed=2, channels_last=False)
search = parser.add_argument_group('search', 'defaults: those of --method where it sets the flag '
                                   '(docs/darts_family.md), else the released code\'s')
search.add_argument('--method', choices=list(genotypes.METHODS), default='gla_fernet',
                    help='the search method: its supernet settings (--op_weights, --edge_weights, --k, --primitives, '
                         '--layers) and recipe are the defaults of the flags not given')
search.add_argument('--epochs', type=cli.positive_int, default=50, help='num of training epochs')
search.add_argument('--warmup_epochs', type=cli.non_negative_int, default=15,
                    help='epochs of weight training before architecture steps start')
search.add_argument('--init_channels', type=cli.positive_int, default=16, help='num of init channels')
search.add_argument('--layers', type=cli.positive_int, default=8, help='total number of layers (cells)')
search.add_argument('--op_weights', choices=genotypes.OP_WEIGHTS, default='sigmoid',
                    help="weights of an edge's candidate operations: sigmoid (GLA-FERNet) or softmax of alpha")
search.add_argument('--edge_weights', action=argparse.BooleanOptionalAction, default=True,
                    help="a softmax of beta over each node's incoming edges weighs them (--no-edge_weights: summed)")
search.add_argument('--primitives', type=genotypes.primitives_flag, default=list(genotypes.PRIMITIVES),
                    help='candidate operations, comma-separated (kept in the order of genotypes.PRIMITIVES), or all')
search.add_argument('--sampling', choices=['sequential', 'random'], default='sequential',
                    help='partial-channel sampling: model_search_softmax_sigmoid or model_search_ran_softmax_sigmoid')
search.add_argument('--k', type=cli.positive_int, default=4,
                    help='partial-channel ratio: 1/k of the channels go through the ops (1: all, as DARTS)')
search.add_argument('--train_portion', type=cli.fraction, default=0.5, help='share of the training set for weight steps')
search.add_argument('--protocol', choices=['split', 'released'], default='split',
                    help='split: architecture steps on a held-out part of the training set; '
                         'released: on the test set, as the released code (biased; prints a warning)')
search.add_argument('--unrolled', action='store_true', default=False, help='use one-step unrolled validation loss')
search.add_argument('--arch_learning_rate', type=cli.positive_float, default=6e-4, help='learning rate for arch encoding')
search.add_argument('--arch_weight_decay', type=cli.non_negative_float, default=1e-3, help='weight decay for arch encoding')
costs = parser.add_argument_group('budget', "a search for a budget: the cost of the network train.py builds from the "
                                   "genotype at the target configuration (docs/budget.md)")
costs.add_argument('--budget_params', type=cli.budget, default=None,
                   help="parameters, e.g. 300k; or 0.25x: a quarter of the released GLA-FERNet network's at the target")
costs.add_argument('--budget_macs', type=cli.budget, default=None, help='multiply-adds per image, e.g. 150M, or 0.25x')
costs.add_argument('--budget_latency_ms', type=cli.budget, default=None,
                   help='batch-1 latency in ms, as --latency_table predicts it, e.g. 4.5, or 0.25x')
costs.add_argument('--latency_table', default=None,
                   help='latency table of the target network (python benchmark.py --latency_table FILE), measured on '
                        'any device; needed by --budget_latency_ms, else its predicted latency is logged')
costs.add_argument('--budget_weight', type=cli.positive_float, default=1.0,
                   help='weight of the penalty max(0, cost / budget - 1) in the architecture loss, per budget')
costs.add_argument('--budget_penalty', choices=['genotype', 'expected'], default='genotype',
                   help="genotype: the penalty pulls (along the gradient of E[cost]) while the genotype the weights "
                        "derive is over budget; expected: while E[cost] is, the plain relaxation")
costs.add_argument('--target_channels', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['init_channels'],
                   help="the discrete network's --init_channels (default: its method's train.py recipe)")
costs.add_argument('--target_layers', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['layers'],
                   help="the discrete network's --layers (default: its method's train.py recipe)")
costs.add_argument('--target_image_size', type=cli.positive_int, default=None,
                   help="the discrete network's --image_size (default: --image_size)")
costs.add_argument('--target_stem_stride', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['stem_stride'],
                   help="the discrete network's --stem_stride")
costs.add_argument('--target_stem_multiplier', type=cli.positive_int,
                   default=genotypes.DISCRETE_NETWORK['stem_multiplier'], help="the discrete network's --stem_multiplier")


def recipe(args):
    """The search method's supernet settings and recipe, as defaults of the flags not given."""
    method = genotypes.METHODS[args.method]
    target = {f'target_{flag}': method['train'][name] for flag, name in (('channels', 'init_channels'),
                                                                        ('layers', 'layers')) if name in method['train']}
    return args.method, {**method['supernet'], **method['search'], 'primitives': list(method['supernet']['primitives']),
                         **target}


def check_args(parser, args):
    if args.warmup_epochs >= args.epochs:
        parser.error(f'argument --warmup_epochs: {args.warmup_epochs} warm-up epochs leave no architecture epoch in '
                     f'--epochs {args.epochs}; the search would return its random initial architecture')
    if args.init_channels % args.k:
        parser.error(f'argument --k: {args.k} does not divide --init_channels {args.init_channels}; each edge sends '
                     f'1/k of its channels through the candidate operations')
    if args.budget_latency_ms and not args.latency_table:
        parser.error('argument --budget_latency_ms: needs --latency_table FILE, the latency of each operation on the '
                     'device the budget is for (write one with python benchmark.py --latency_table FILE)')
    if args.target_image_size is None:
        args.target_image_size = args.image_size
    try:
        genotypes.check_image_size(args.target_image_size, args.target_stem_stride)
    except UserError as e:
        parser.error(f'argument --target_image_size: {e}')
    if args.sampling == 'random' and args.k == 1:
        parser.error('argument --sampling: random sampling needs --k above 1 (with --k 1 every channel goes through '
                     f'the operations, as --method {args.method} does): give --k 4, or --sampling sequential')


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = cli.parse(parser, check_args, recipe)

import dataclasses  # noqa: E402
import functools  # noqa: E402
import itertools  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import budget  # noqa: E402
import data_loader  # noqa: E402
import model_search_ran_softmax_sigmoid  # noqa: E402
import model_search_softmax_sigmoid  # noqa: E402
import run_folder  # noqa: E402
import training_step  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from architect import Architect  # noqa: E402
from genotypes import format_genotype  # noqa: E402

SUPERNETS = {'sequential': model_search_softmax_sigmoid.Network, 'random': model_search_ran_softmax_sigmoid.Network}


def main(args, log):
    run = utils.Run('search', parser, args, log)
    if run.complete:
        return
    args, device = run.args, run.device
    data = data_loader.load_from_args(args, log)
    run.check_label_file(data.train)
    num_classes = len(data.train.class_names)
    train_loader, arch_loader, arch_eval_loader = search_loaders(data, args, run, log)

    model = build_supernet(args, num_classes, device, log)
    costs = search_budget(args, num_classes, device, log)
    optimizer = torch.optim.SGD(model.weight_parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    amp_dtype, use_scaler = utils.amp_settings(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    grad_sync = utils.all_reduce_ if run.world_size > 1 else None
    update = training_step.WeightUpdate(model.weight_parameters(), optimizer, scaler, args.grad_clip, amp_dtype,
                                        grad_sync)
    compile_step = args.compile and training_step.can_compile_step(run, use_scaler, log)
    forward_model = model
    if args.compile:  # the evaluation's forward; and the training forward where the whole step is not compiled
        forward_model = training_step.maybe_compile(model, next(iter(arch_eval_loader))[0], log,
                                                    training=not compile_step)
    step_model = model if compile_step else forward_model  # a compiled step traces the plain module
    architect = Architect(step_model, optimizer, args.arch_learning_rate, args.arch_weight_decay, grad_sync,
                          costs.penalty)

    run.start()
    if run.is_main:  # next to genotype.txt: train.py --genotype_file takes the method's discrete network from it
        run.write_json(run_folder.METHOD, method_record(args, costs))
    stateful = {'model': model, 'optimizer': optimizer, 'arch_optimizer': architect.optimizer,
                'scheduler': scheduler, 'scaler': scaler}
    start_epoch, best = run.restore(stateful, best={'epoch': -1, 'accuracy': -1.0, 'genotype': None})
    # The two steps of Algorithm 1: a weight step alone (warm-up), and an architecture step with a weight step.
    warmup_step = functools.partial(weight_step, step_model, update)
    architecture_and_weight_step = functools.partial(search_step, step_model, architect, update,
                                                     unrolled=args.unrolled)
    if compile_step:  # after the restore: the compiled step updates the restored optimizer state in place
        update.functional = True
        warmup_step, architecture_and_weight_step = (
            training_step.CompiledStep(fn, [optimizer, architect.optimizer], device, log)
            for fn in (warmup_step, architecture_and_weight_step))
    writer = utils.tensorboard_writer(run)
    for epoch in range(start_epoch, args.epochs):
        lr = float(scheduler.get_last_lr()[0])  # this epoch's, logged as such (the scheduler steps after the epoch)
        log(f'epoch {epoch} lr {lr:e}')
        searching = epoch >= args.warmup_epochs
        arch_batches = cycle(arch_loader, epoch) if searching else None  # none fetched in warm-up

        def step(x, y):
            if searching:
                return architecture_and_weight_step((x, y), next(arch_batches))
            return warmup_step((x, y))

        forward_model.train()
        train_loader.set_epoch(epoch)
        progress = utils.Progress(log, f'train {epoch}', train_loader, args.report_freq, epoch, args.epochs)
        train_loss, train_matrix = utils.run_epoch(step, train_loader, num_classes, progress)
        run.check_loss(train_loss, f'search epoch {epoch}')
        scheduler.step()
        arch_eval = utils.evaluation_metrics(forward_model, arch_eval_loader, num_classes, amp_dtype, run,
                                             f'validation after search epoch {epoch}')
        genotype = model.genotype()
        candidate = {'epoch': epoch, 'accuracy': arch_eval['accuracy'], 'genotype': format_genotype(genotype),
                     'cost': costs.costs(model, genotype)}
        # Warm-up epochs leave the architecture at its random initialisation: their genotypes are no candidates.
        if searching and better(candidate, best):
            best = candidate
        report_epoch(log, writer, run, model, costs, candidate, lr, train_loss, train_matrix.compute(), arch_eval,
                     best, searching)
        run.save(epoch, best, stateful)

    if writer is not None:
        writer.close()
    report_search(log, run, costs, best)


def method_record(args, costs):
    """method.json: the method, its supernet, and the target network and budgets that train.py --genotype_file
    builds and report.py checks."""
    return {'method': args.method, 'supernet': {'init_channels': args.init_channels, 'layers': args.layers,
                                                'sampling': args.sampling, **genotypes.supernet_settings(args)},
            'target': dataclasses.asdict(costs.target), 'budgets': costs.budgets}


def report_search(log, run, costs, best):
    """The search's result: the best genotype, its cost against the budgets (a missed one said loudly), and how to
    train it."""
    log(f'best architecture-validation accuracy {best["accuracy"]:f} at epoch {best["epoch"]}')
    log(f'best genotype = {best["genotype"]}')
    if best.get('cost'):
        log(f'its cost at the target ({costs.target.describe()}): {costs.describe(best["cost"])}')
        if best['cost']['over']:
            log('WARNING: the searched genotype is over budget: ' + ', '.join(
                f'{metric} by {100 * over:.1f}%' for metric, over in best['cost']['over'].items()) +
                '; no epoch\'s genotype met it (costs.json has every epoch\'s; docs/budget.md says what to change)')
    if run.is_main:
        if best.get('cost'):  # the written genotype's cost and missed budgets, beside the budgets
            run.write_json(run_folder.METHOD, {**method_record(run.args, costs), 'genotype_epoch': best['epoch'],
                                               'genotype_cost': best['cost']})
        log(f'genotype written to {run.path(run_folder.GENOTYPE)}; train it with: '
            f'python train.py --genotype_file {run.folder} {cli.data_flags(run.args)}')


def build_supernet(args, num_classes, device, log):
    """The supernet of --method on the device, as its log line describes it."""
    model = SUPERNETS[args.sampling](args.init_channels, num_classes, args.layers, image_size=args.image_size,
                                     **genotypes.supernet_settings(args)).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log(f'supernet of --method {args.method}: {args.op_weights} op weights, '
        f'{"softmax edge weights" if args.edge_weights else "no edge weights"}, k={args.k}'
        f'{f" ({args.sampling} sampling)" if args.k > 1 else ""}, {len(model.primitives)} candidate operations '
        f'({", ".join(model.primitives)}), {args.layers} cells: '
        f'{utils.count_parameters(model, model.arch_parameters()) / 1e6:.6f}M weight parameters')
    return model


def search_budget(args, num_classes, device, log):
    """The search's target network, budgets and penalty (budget.SearchBudget), as the log describes them; a budget
    that no genotype can meet at the target is said at once, with what would move it."""
    costs = budget.SearchBudget.from_args(args, num_classes, device)
    log(f'target network: {costs.target.describe()}' + ('; budgets: ' + ', '.join(
        f'{metric} {budget.format_cost(metric, value)}' for metric, value in costs.budgets.items()) +
        f', penalty weight {args.budget_weight} (--budget_penalty {args.budget_penalty})' if costs.budgets
        else '; no budget'))
    if costs.latency is not None:
        log(f'latency table {args.latency_table}: measured on {costs.latency.device}')
    for metric, value, least in costs.unreachable():
        log(f'WARNING: the {metric} budget {budget.format_cost(metric, value)} is below the least any genotype costs '
            f'at the target, {budget.format_cost(metric, least)} (the stem, the cells\' preprocessing and the '
            f'classifier, with the cheapest operations): no search meets it. Lower --target_channels or '
            f'--target_layers, or raise --target_stem_stride (docs/budget.md)')
    return costs


def better(candidate, best):
    """Whether an epoch's genotype replaces the best so far: one that meets the budgets beats one that does not, and
    of two that miss, the nearer to meeting them (the smaller largest excess); then the higher
    architecture-validation accuracy wins (without budgets: the accuracy alone)."""
    if best['genotype'] is None:
        return True
    excess = lambda entry: max(entry.get('cost', {}).get('over', {}).values(), default=0.0)
    if excess(candidate) != excess(best):
        return excess(candidate) < excess(best)
    return candidate['accuracy'] > best['accuracy']


def search_loaders(data, args, run, log):
    """The loaders of weight steps and of architecture steps (shuffled, augmented), and the architecture steps'
    images once in order without augmentation, on which each epoch's genotype is validated: a held-out part of the
    training set, or the test set under --protocol released."""
    train_set, test_set = data.train, data.test
    loader_args = dict(device=run.device, image_size=args.image_size, seed=args.seed, rank=run.rank,
                       world_size=run.world_size, channels_last=args.channels_last)
    if args.protocol == 'released':
        log('WARNING: --protocol released takes architecture steps on the TEST set, as the released code did; '
            'test accuracies of the searched network are then biased. Use --protocol split for unbiased numbers.')
        weight_images, weight_labels = train_set.images, train_set.labels
        arch_images, arch_labels, arch_augment = test_set.images, test_set.labels, False
        weight_fix = arch_fix = 'lower --batch_size'
    else:
        weight_idx, arch_idx = data_loader.stratified_split(train_set.labels, args.train_portion, args.seed)
        weight_images, weight_labels = train_set.images[weight_idx], train_set.labels[weight_idx]
        arch_images, arch_labels, arch_augment = train_set.images[arch_idx], train_set.labels[arch_idx], True
        weight_fix, arch_fix = ('lower --batch_size or raise --train_portion', 'lower --batch_size or lower '
                                f'--train_portion (now {args.train_portion})')
    train_loader = data_loader.DeviceLoader(weight_images, weight_labels, args.batch_size, augment=True, shuffle=True,
                                            drop_last=True, **loader_args)
    arch_loader = data_loader.DeviceLoader(arch_images, arch_labels, args.batch_size, augment=arch_augment,
                                           shuffle=True, drop_last=True, **loader_args)
    arch_eval_loader = data_loader.DeviceLoader(arch_images, arch_labels, args.batch_size, **loader_args)
    data_loader.check_batches(train_loader, 'the set for weight steps', weight_fix)
    data_loader.check_batches(arch_loader, 'the set for architecture steps', arch_fix)
    log(f'{args.dataset}: {len(weight_labels)} images for weight steps, {len(arch_labels)} for architecture steps '
        f'({"test set" if args.protocol == "released" else "held-out training split"}), {len(test_set.labels)} test images')
    return train_loader, arch_loader, arch_eval_loader


def cycle(loader, epoch):
    """Endless batches from one loader (check_batches made sure it has some), reshuffled on each pass, seeded by
    the epoch so that a resumed run repeats them."""
    for repeat in itertools.count():
        loader.set_epoch(epoch * 1000 + repeat)
        yield from loader


def search_step(model, architect, update, batch, arch_batch, unrolled):
    """One step of Algorithm 1 after the warm-up; returns the training batch's detached logits and loss.

    Phase 1: an architecture step on `arch_batch`, a held-out batch. Phase 2: a weight step on `batch` with the
    architecture fixed."""
    # fp16 without a loss scale would underflow in the architecture gradients: that step stays fp32 then.
    arch_dtype = None if update.amp_dtype == torch.float16 else update.amp_dtype
    with utils.autocast(batch[0].device, arch_dtype):
        architect.step(batch, arch_batch, unrolled)
    return weight_step(model, update, batch)


def weight_step(model, update, batch):
    """A weight step on `batch`, the architecture fixed (alone: a warm-up step); the backward goes to the weights
    only, the architecture gradients are not needed here. Returns the detached logits and loss."""
    x, y = batch
    logits, loss, _ = training_step.weight_step(model, update, (x,), (y,), cross_entropy)
    return logits, loss


def cross_entropy(logits, y):
    """The search's loss, as training_step.weight_step takes it: (loss, logits, no per-sample score)."""
    return F.cross_entropy(logits.float(), y), logits, None


def report_epoch(log, writer, run, model, costs, candidate, lr, train_loss, train_metrics, arch_eval, best, searching):
    """An epoch's log lines, TensorBoard scalars, architecture weights and costs, and (in an epoch that found a better
    genotype) genotype.txt with its cell diagrams."""
    epoch, genotype = candidate['epoch'], candidate['genotype']
    log(f'train_acc {train_metrics["accuracy"]:f}, train_balanced_acc {train_metrics["balanced_accuracy"]:f}, '
        f'train_f1 {train_metrics["f1"]:f}')
    log(f'valid_acc {arch_eval["accuracy"]:f}, valid_balanced_acc {arch_eval["balanced_accuracy"]:f}, '
        f'valid_f1 {arch_eval["f1"]:f}, ' +
        (f'best_acc {best["accuracy"]:f} at epoch {best["epoch"]}' if searching else
         f'warm-up epoch {epoch + 1} of {run.args.warmup_epochs}: no architecture step yet'))
    log(f'genotype = {genotype}')
    log(f'cost: {costs.describe(candidate["cost"])}')
    run.check_weights(model, epoch)
    if not run.is_main:
        return
    utils.log_scalars(writer, epoch, lr=lr, train_loss=train_loss.average(), valid_loss=arch_eval['loss'],
                      train_acc=train_metrics['accuracy'], train_f1=train_metrics['f1'],
                      valid_acc=arch_eval['accuracy'], valid_f1=arch_eval['f1'])
    utils.log_scalars(writer, epoch, **{f'cost/{kind}_{metric}': value for kind in ('expected', 'exact')
                                        for metric, value in candidate['cost'][kind].items()})
    log_architecture(writer, model, epoch)
    run.write_epoch_record(run_folder.ARCHITECTURE_WEIGHTS, epoch, model.architecture_weights())
    run.write_epoch_record(run_folder.COSTS, epoch, {'genotype': genotype, **candidate['cost']})
    if best['epoch'] == epoch:  # genotype.txt: one line that train.py --genotype_file reads
        run.write_text(run_folder.GENOTYPE, best['genotype'] + '\n')
        visualize.plot_genotype(best['genotype'], run.folder)


def log_architecture(writer, model, epoch):
    """The method's op weights (sigmoid or softmax) and edge weights (softmax per node, where the method has them)
    as images, and the architecture parameters as histograms, in TensorBoard."""
    if writer is None:
        return
    for cell in ('normal', 'reduce'):
        op_weights, edge_weights = model.mixing_weights(cell)
        strength = op_weights * edge_weights[:, None]
        writer.add_image(f'op_weights/{cell}', op_weights.unsqueeze(0), epoch)
        writer.add_image(f'op_x_edge_weights/{cell}', strength.unsqueeze(0) / strength.max(), epoch)
        for name in (f'alphas_{cell}', f'betas_{cell}'):
            if name in model.arch_parameter_names:
                writer.add_histogram(name.replace('_', '/'), getattr(model, name).detach().float().cpu(), epoch)


if __name__ == '__main__':
    utils.run_main(main, ARGS)
