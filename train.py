"""Train a searched GLA-FERNet architecture from scratch and evaluate it on the test set (paper Sec. 4)."""
import cli

parser = cli.training_parser('train', __doc__, seed=0, channels_last=True)
network = parser.add_argument_group('network')
network.add_argument('--model', choices=['gla_fernet'], default='gla_fernet',
                     help='the network to train: gla_fernet is the discrete network of a genotype')
network.add_argument('--epochs', type=cli.positive_int, default=600, help='num of training epochs')
network.add_argument('--init_channels', type=cli.positive_int, default=36, help='num of init channels')
network.add_argument('--layers', type=cli.positive_int, default=8, help='total number of layers')
network.add_argument('--auxiliary', action='store_true', default=False, help='use auxiliary tower')
network.add_argument('--auxiliary_weight', type=cli.non_negative_float, default=0.4, help='weight for auxiliary loss')
network.add_argument('--drop_path_prob', type=cli.non_negative_float, default=0.3, help='drop path probability')
network.add_argument('--arch', type=str, default=None, help='name of a genotype in genotypes.py (default: PCDARTS = GLA_FERNet)')
network.add_argument('--genotype', default=None, help='genotype text, "Genotype(normal=[...], ...)" as search logs print it')
network.add_argument('--genotype_file', default=None,
                     help="genotype.txt written by train_search.py, its run folder, or a pattern such as 'search-EXP-*' "
                          "(the matching search with the newest genotype.txt)")


def check_args(parser, args):
    given = [flag for flag in ('arch', 'genotype', 'genotype_file') if getattr(args, flag)]
    if len(given) > 1:
        parser.error(f'give only one of --arch, --genotype, --genotype_file (got {", ".join("--" + g for g in given)})')
    if not args.drop_path_prob < 1:
        parser.error(f'argument --drop_path_prob: {args.drop_path_prob} must be below 1')


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = cli.parse(parser, check_args)

import glob  # noqa: E402
import os  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402

import data_loader  # noqa: E402
import genotypes  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from baselines import create_model, model_options  # noqa: E402


def main(args, log):
    run = utils.Run('eval', parser, args, log)
    if run.complete:
        return
    args, device, rank, world_size = run.args, run.device, run.rank, run.world_size
    if run.checkpoint is None:
        genotype, args.genotype_file = read_genotype(args)  # the file a pattern resolved to goes into args.json
    else:
        genotype = genotypes.parse_genotype(run.checkpoint['genotype'])
    log(f'genotype = {genotypes.format_genotype(genotype)}')

    data = data_loader.load_from_args(args, log)
    train_set, test_set = data.train, data.test
    class_names = train_set.class_names
    num_classes = len(class_names)
    loader_args = dict(device=device, image_size=args.image_size, seed=args.seed, rank=rank, world_size=world_size,
                       channels_last=args.channels_last)
    train_loader = data_loader.DeviceLoader(train_set.images, train_set.labels, args.batch_size, augment=True,
                                            shuffle=True, drop_last=True, **loader_args)
    test_loader = data_loader.evaluation_loader(test_set.images, test_set.labels, args, device, rank=rank,
                                                world_size=world_size)
    data_loader.check_batches(train_loader, 'the training set', 'lower --batch_size')
    log(f'{args.dataset}: {len(train_set.labels)} training images, {len(test_set.labels)} test images, '
        f'{num_classes} classes')

    model = create_model(args.model, num_classes, **model_options(args, genotype)).to(device)
    stats = network_statistics(model, args.image_size, device)
    log(f'param size = {stats["params_without_auxiliary"] / 1e6:f}M, FLOPs = {stats["flops"] / 1e6:.2f}M '
        f'({stats["flops"] / 2e6:.2f}M multiply-adds) at {args.image_size}x{args.image_size}, '
        f'model size = {stats["model_size_mb"]:.2f}MB')
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    amp_dtype, use_scaler = utils.amp_settings(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    update = utils.WeightUpdate(list(model.parameters()), optimizer, scaler, args.grad_clip, amp_dtype)
    forward_model = utils.maybe_compile(model, next(iter(test_loader))[0], log) if args.compile else model
    if world_size > 1:
        forward_model = DistributedDataParallel(forward_model, device_ids=[device.index] if device.type == 'cuda' else None)

    run.start()
    stateful = {'model': model, 'optimizer': optimizer, 'scheduler': scheduler, 'scaler': scaler}
    start_epoch, best = run.restore(stateful, best={'epoch': -1, 'accuracy': -1.0})
    writer = utils.tensorboard_writer(run)
    for epoch in range(start_epoch, args.epochs):
        lr = scheduler.get_last_lr()[0]
        log(f'epoch {epoch} lr {lr:e}')
        model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
        forward_model.train()
        train_loader.set_epoch(epoch)
        progress = utils.Progress(log, f'train {epoch}', train_loader, args.report_freq, epoch, args.epochs)
        train_loss, train_matrix = utils.run_epoch(
            lambda x, y: train_step(forward_model, update, x, y, args.auxiliary_weight), train_loader, num_classes,
            progress)
        run.check_loss(train_loss, f'training epoch {epoch}')
        scheduler.step()
        test_loss, test_matrix = utils.evaluate(forward_model, test_loader, num_classes, amp_dtype)
        run.check_loss(test_loss, f'testing after epoch {epoch}')
        train_metrics, last = train_matrix.compute(), test_matrix.compute()
        last.update(epoch=epoch, loss=test_loss.average())
        is_best = last['accuracy'] > best['accuracy']
        if is_best:
            best = dict(last)
        log(f'train_acc {train_metrics["accuracy"]:f}, train_f1 {train_metrics["f1"]:f}')
        log(f'test_acc {last["accuracy"]:f}, test_balanced_acc {last["balanced_accuracy"]:f}, '
            f'test_precision {last["precision"]:f}, test_recall {last["recall"]:f}, test_f1 {last["f1"]:f}, '
            f'best_acc {best["accuracy"]:f} at epoch {best["epoch"]}')
        run.check_weights(model, epoch)
        if run.is_main:
            utils.log_scalars(writer, epoch, lr=lr, train_loss=train_loss.average(), test_loss=last['loss'],
                              train_acc=train_metrics['accuracy'], train_f1=train_metrics['f1'],
                              test_acc=last['accuracy'], test_balanced_acc=last['balanced_accuracy'],
                              test_precision=last['precision'], test_recall=last['recall'], test_f1=last['f1'])
            if is_best:
                utils.save_checkpoint(model.state_dict(), run.path('best.pt'))
            utils.write_json(run.path('metrics.json'),
                             {'complete': epoch + 1 == args.epochs, 'epochs_done': epoch + 1, 'epochs': args.epochs,
                              'last': last, 'test_selected': best, 'class_names': class_names, **stats,
                              'genotype': genotypes.format_genotype(genotype)})
            visualize.plot_confusion_matrix(last['confusion_matrix'], class_names, run.path('confusion_matrix.png'),
                                            f'{args.dataset} test, epoch {epoch}: accuracy {last["accuracy"]:.2f}%')
        run.save(epoch, best, stateful, genotype=genotypes.format_genotype(genotype))

    if writer is not None:
        writer.close()
    log(f'final test accuracy {last["accuracy"]:.2f}%, balanced accuracy {last["balanced_accuracy"]:.2f}%, '
        f'macro-F1 {last["f1"]:.2f}% (last epoch); best test accuracy {best["accuracy"]:.2f}% at epoch '
        f'{best["epoch"]} (selected on the test set)' + (f'; results in {run.folder}' if run.is_main else ''))


def train_step(model, update, x, y, auxiliary_weight):
    """One weight step (auxiliary loss included when the head exists). Returns detached logits and loss."""
    update.zero_grad()
    with utils.autocast(x.device, update.amp_dtype):
        logits, logits_aux = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if logits_aux is not None:
            loss = loss + auxiliary_weight * F.cross_entropy(logits_aux.float(), y)
    update.apply(loss)
    return logits.detach(), loss.detach()


def read_genotype(args):
    """The genotype from exactly one of --arch, --genotype, --genotype_file, and the file it was read from."""
    if args.genotype:
        return genotypes.parse_genotype(args.genotype), None
    if args.genotype_file:
        path = find_genotype_file(args.genotype_file)
        with open(path) as f:
            try:
                return genotypes.parse_genotype(f.read()), path
            except utils.UserError as e:
                raise utils.UserError(f'{path}: {e}') from None
    return genotypes.genotype_by_name(args.arch or 'PCDARTS'), None


def find_genotype_file(given):
    """genotype.txt itself, the search folder holding it, or of the searches matching a pattern such as
    'search-EXP-*' the one with the newest genotype.txt. A search writes genotype.txt when its first architecture
    epoch ends, so folders of searches that failed or are still in warm-up never match."""
    if os.path.isfile(given):
        return given
    if os.path.isdir(given):
        path = os.path.join(given, 'genotype.txt')
        if os.path.isfile(path):
            return path
        raise utils.UserError(f'{given} holds no genotype.txt: a search writes it when its first architecture epoch '
                              f'(after --warmup_epochs) ends, so this search stopped or is still warming up; let it '
                              f'continue (train_search.py --resume {given}) or give another search')
    matches = glob.glob(given)
    searched = [os.path.join(m, 'genotype.txt') for m in matches if os.path.isfile(os.path.join(m, 'genotype.txt'))]
    if searched:
        return max(searched, key=os.path.getmtime)
    if matches:
        raise utils.UserError(f'{len(matches)} folder(s) match {given!r}, but none holds a genotype.txt: no search '
                              f'among them ended an architecture epoch (they failed, or are still warming up)')
    raise utils.UserError(f'genotype file {given} does not exist (give genotype.txt, the search folder holding it, '
                          f"or a pattern such as 'search-EXP-*')")


def network_statistics(model, image_size, device):
    """Parameters (with and without the auxiliary head, which inference does not use), FLOPs, size in MB."""
    auxiliary = getattr(model, 'auxiliary_head', torch.nn.Identity()).parameters()
    stats = {'params': utils.count_parameters(model),
             'params_without_auxiliary': utils.count_parameters(model, auxiliary),
             'flops': utils.count_flops(model, image_size, device)}
    stats['model_size_mb'] = utils.megabytes(stats['params_without_auxiliary'])
    return stats


if __name__ == '__main__':
    utils.run_main(main, ARGS)
