"""Train a searched GLA-FERNet architecture from scratch and evaluate it on the test set (paper Sec. 4)."""
import argparse
import glob
import os

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import data_loader
import genotypes
import utils
import visualize
from model import Network

parser = argparse.ArgumentParser('train', description=__doc__)
data_loader.add_data_arguments(parser)
utils.add_optimizer_arguments(parser)
utils.add_runtime_arguments(parser, channels_last=True)
parser.add_argument('--epochs', type=int, default=600, help='num of training epochs')
parser.add_argument('--init_channels', type=int, default=36, help='num of init channels')
parser.add_argument('--layers', type=int, default=8, help='total number of layers')
parser.add_argument('--auxiliary', action='store_true', default=False, help='use auxiliary tower')
parser.add_argument('--auxiliary_weight', type=float, default=0.4, help='weight for auxiliary loss')
parser.add_argument('--drop_path_prob', type=float, default=0.3, help='drop path probability')
parser.add_argument('--save', type=str, default='EXP', help='experiment name')
parser.add_argument('--seed', type=int, default=0, help='random seed')
parser.add_argument('--arch', type=str, default=None, help='name of a genotype in genotypes.py (default: PCDARTS = GLA_FERNet)')
parser.add_argument('--genotype', default=None, help='genotype text, "Genotype(normal=[...], ...)" as search logs print it')
parser.add_argument('--genotype_file', default=None, help="genotype.txt written by train_search.py, its run folder, or a pattern such as 'search-EXP-*' (newest match)")


def read_genotype(args):
    """The genotype from exactly one of --arch, --genotype, --genotype_file."""
    given = [flag for flag in ('arch', 'genotype', 'genotype_file') if getattr(args, flag)]
    if len(given) > 1:
        raise utils.UserError(f'give only one of --arch, --genotype, --genotype_file (got {", ".join("--" + g for g in given)})')
    if args.genotype:
        return genotypes.parse_genotype(args.genotype)
    if args.genotype_file:
        path = args.genotype_file
        if not os.path.exists(path) and glob.glob(path):  # a pattern such as 'search-DEMO-*': the newest match
            path = max(glob.glob(path), key=os.path.getmtime)
        if os.path.isdir(path):
            path = os.path.join(path, 'genotype.txt')
        if not os.path.isfile(path):
            raise utils.UserError(f'genotype file {path} does not exist (give genotype.txt or the search folder holding it)')
        with open(path) as f:
            try:
                return genotypes.parse_genotype(f.read())
            except utils.UserError as e:
                raise utils.UserError(f'{path}: {e}') from None
    return genotypes.genotype_by_name(args.arch or 'PCDARTS')




def main():
    args = parser.parse_args()
    genotype = None if args.resume else read_genotype(args)  # a bad genotype stops before a run folder exists
    if not args.resume:
        data_loader.check_root_from_args(args)  # so does a wrong --data path
    args, checkpoint, save_dir, log, device, rank, world_size = utils.start_run(args, 'eval')
    is_main = rank == 0
    if checkpoint is not None:
        genotype = genotypes.parse_genotype(checkpoint['genotype'])
    log(f'genotype = {genotypes.format_genotype(genotype)}')
    train_set, test_set = data_loader.load_from_args(args, log)
    class_names = train_set.class_names
    loader_args = dict(device=device, image_size=args.image_size, seed=args.seed, rank=rank, world_size=world_size,
                       channels_last=args.channels_last)
    train_loader = data_loader.DeviceLoader(train_set.images, train_set.labels, args.batch_size, augment=True,
                                            shuffle=True, drop_last=True, **loader_args)
    test_loader = data_loader.DeviceLoader(test_set.images, test_set.labels, args.batch_size, **loader_args)
    log(f'{args.dataset}: {len(train_set.labels)} training images, {len(test_set.labels)} test images, '
        f'{len(class_names)} classes')

    model = Network(args.init_channels, len(class_names), args.layers, args.auxiliary, genotype,
                    image_size=args.image_size).to(device)
    stats = {'params': utils.count_parameters(model),
             'params_without_auxiliary': utils.count_parameters(model, getattr(model, 'auxiliary_head', torch.nn.Identity()).parameters()),
             'flops': utils.count_flops(model, args.image_size, device)}
    stats['model_size_mb'] = stats['params_without_auxiliary'] * 4 / 2 ** 20
    log(f'param size = {stats["params_without_auxiliary"] / 1e6:f}M, FLOPs = {stats["flops"] / 1e6:.2f}M '
        f'({stats["flops"] / 2e6:.2f}M multiply-adds) at {args.image_size}x{args.image_size}, '
        f'model size = {stats["model_size_mb"]:.2f}MB')
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), args.learning_rate, momentum=args.momentum,
                                weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    amp_dtype, use_scaler = utils.autocast_settings(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    start_epoch, best = 0, {'accuracy': -1.0, 'epoch': -1}
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint['scaler'])
        start_epoch, best = checkpoint['epoch'], checkpoint['best']
        utils.set_rng_states(checkpoint['rng'])
        log(f'resumed at epoch {start_epoch}')
    forward_model = model
    if args.compile:
        forward_model = utils.maybe_compile(model, next(iter(test_loader))[0], log)
    if world_size > 1:
        forward_model = DistributedDataParallel(forward_model, device_ids=[device.index] if device.type == 'cuda' else None)
    writer = utils.tensorboard_writer(os.path.join(save_dir, 'tensorboard') if is_main else None, is_main)

    final = None
    for epoch in range(start_epoch, args.epochs):
        lr = scheduler.get_last_lr()[0]
        log(f'epoch {epoch} lr {lr:e}')
        model.drop_path_prob = args.drop_path_prob * epoch / args.epochs
        train_loader.set_epoch(epoch)
        train_loss, train_matrix = train(forward_model, train_loader, optimizer, scaler, len(class_names), args,
                                         device, amp_dtype, log, f'train {epoch}')
        utils.check_finite(train_loss, f'training epoch {epoch}')
        scheduler.step()
        test_loss, test_matrix = utils.evaluate(forward_model, test_loader, len(class_names), device, amp_dtype)
        utils.check_finite(test_loss, f'testing after epoch {epoch}')
        train_metrics, final = train_matrix.compute(), test_matrix.compute()
        final.update(epoch=epoch, loss=test_loss.average())
        is_best = final['accuracy'] > best['accuracy']
        if is_best:
            best = dict(final)
        log(f'train_acc {train_metrics["accuracy"]:f}')
        log(f'test_acc {final["accuracy"]:f}, test_precision {final["precision"]:f}, test_recall {final["recall"]:f}, '
            f'test_f1 {final["f1"]:f}, best_acc {best["accuracy"]:f}')
        if is_main:
            utils.log_scalars(writer, epoch, lr=lr, train_loss=train_loss.average(), test_loss=final['loss'],
                              train_acc=train_metrics['accuracy'], test_acc=final['accuracy'],
                              test_precision=final['precision'], test_recall=final['recall'], test_f1=final['f1'])
            if is_best:
                utils.save_checkpoint(model.state_dict(), os.path.join(save_dir, 'best.pt'))
            utils.save_checkpoint(model.state_dict(), os.path.join(save_dir, 'weights.pt'))
            utils.save_checkpoint({'epoch': epoch + 1, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                   'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'best': best,
                                   'final': final, 'genotype': genotypes.format_genotype(genotype),
                                   'rng': utils.rng_states(), 'args': vars(args)},
                                  os.path.join(save_dir, 'checkpoint.pt'))
    if final is None and checkpoint is not None:
        final = checkpoint.get('final')
    if is_main and final is not None:
        utils.write_json(os.path.join(save_dir, 'metrics.json'),
                         {'final': final, 'best': best, 'class_names': class_names, **stats,
                          'genotype': genotypes.format_genotype(genotype)})
        visualize.plot_confusion_matrix(final['confusion_matrix'], class_names,
                                        os.path.join(save_dir, 'confusion_matrix.png'),
                                        f'{args.dataset} test, epoch {final["epoch"]}: accuracy {final["accuracy"]:.2f}%')
        if writer is not None:
            writer.close()
        log(f'final test accuracy {final["accuracy"]:.2f}%, macro-F1 {final["f1"]:.2f}% '
            f'(best {best["accuracy"]:.2f}% at epoch {best["epoch"]}); results in {save_dir}')


def train(model, train_loader, optimizer, scaler, num_classes, args, device, amp_dtype, log, prefix):
    model.train()
    loss_meter, matrix = utils.LossMeter(device), utils.ConfusionMatrix(num_classes, device)
    progress = utils.Progress(log, prefix, len(train_loader), args.batch_size * train_loader.world_size,
                              args.report_freq)
    for step, (x, y) in enumerate(train_loader):
        logits, loss = train_step(model, x, y, optimizer, scaler, args.grad_clip, args.auxiliary_weight, amp_dtype)
        loss_meter.update(loss, len(y))
        matrix.update(logits, y)
        progress.step(step, loss_meter, matrix)
    loss_meter.all_reduce()
    matrix.all_reduce()
    return loss_meter, matrix


def train_step(model, x, y, optimizer, scaler, grad_clip, auxiliary_weight, amp_dtype):
    """One SGD step (auxiliary loss included when the head exists). Returns detached logits and loss."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, logits_aux = model(x)
        loss = F.cross_entropy(logits.float(), y)
        if logits_aux is not None:
            loss = loss + auxiliary_weight * F.cross_entropy(logits_aux.float(), y)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return logits.detach(), loss.detach()


if __name__ == '__main__':
    utils.run_main(main)
