"""Bilevel architecture search of GLA-FERNet (paper Sec. 3.3, Algorithm 1): writes the searched genotype to a run folder."""
import argparse
import contextlib
import os

import torch
import torch.nn.functional as F

import data_loader
import model_search_ran_softmax_sigmoid
import model_search_softmax_sigmoid
import utils
import visualize
from architect import Architect
from genotypes import format_genotype

parser = argparse.ArgumentParser('train_search', description=__doc__)
data_loader.add_data_arguments(parser)
utils.add_optimizer_arguments(parser)
utils.add_runtime_arguments(parser, channels_last=False)
parser.add_argument('--epochs', type=int, default=50, help='num of training epochs')
parser.add_argument('--warmup_epochs', type=int, default=15, help='epochs of weight training before architecture steps start')
parser.add_argument('--init_channels', type=int, default=16, help='num of init channels')
parser.add_argument('--layers', type=int, default=8, help='total number of layers')
parser.add_argument('--sampling', choices=['sequential', 'random'], default='sequential',
                    help='partial-channel sampling: model_search_softmax_sigmoid or model_search_ran_softmax_sigmoid')
parser.add_argument('--k', type=int, default=4, help='partial-channel ratio: 1/k of the channels go through the ops')
parser.add_argument('--save', type=str, default='EXP', help='experiment name')
parser.add_argument('--seed', type=int, default=2, help='random seed')
parser.add_argument('--train_portion', type=float, default=0.5, help='share of the training set for weight steps')
parser.add_argument('--protocol', choices=['split', 'released'], default='split',
                    help='split: architecture steps on a held-out part of the training set; '
                         'released: on the test set, as the released code (biased; prints a warning)')
parser.add_argument('--unrolled', action='store_true', default=False, help='use one-step unrolled validation loss')
parser.add_argument('--arch_learning_rate', type=float, default=6e-4, help='learning rate for arch encoding')
parser.add_argument('--arch_weight_decay', type=float, default=1e-3, help='weight decay for arch encoding')


def cycle(loader, epoch):
    """Endless batches from one loader, reshuffled on each pass, seeded by the epoch so resumes repeat them."""
    for repeat in range(1 << 30):
        loader.set_epoch(epoch * 1000 + repeat)
        yield from loader


def main():
    args = parser.parse_args()
    if not args.resume:
        data_loader.check_root_from_args(args)  # a wrong --data path stops before a run folder exists
    args, checkpoint, save_dir, log, device, rank, world_size = utils.start_run(args, 'search')
    is_main = rank == 0
    train_set, test_set = data_loader.load_from_args(args, log)
    num_classes = len(train_set.class_names)
    loader_args = dict(device=device, image_size=args.image_size, seed=args.seed, rank=rank, world_size=world_size,
                       channels_last=args.channels_last)
    if args.protocol == 'released':
        log('WARNING: --protocol released takes architecture steps on the TEST set, as the released code did; '
            'test accuracies of the searched network are then biased. Use --protocol split for unbiased numbers.')
        weight_images, weight_labels = train_set.images, train_set.labels
        arch_images, arch_labels, arch_augment = test_set.images, test_set.labels, False
    else:
        weight_idx, arch_idx = data_loader.stratified_split(train_set.labels, args.train_portion, args.seed)
        weight_images, weight_labels = train_set.images[weight_idx], train_set.labels[weight_idx]
        arch_images, arch_labels, arch_augment = train_set.images[arch_idx], train_set.labels[arch_idx], True
    train_loader = data_loader.DeviceLoader(weight_images, weight_labels, args.batch_size, augment=True, shuffle=True,
                                            drop_last=True, **loader_args)
    arch_loader = data_loader.DeviceLoader(arch_images, arch_labels, args.batch_size, augment=arch_augment,
                                           shuffle=True, drop_last=True, **loader_args)
    valid_loader = data_loader.DeviceLoader(arch_images, arch_labels, args.batch_size, **loader_args)
    log(f'{args.dataset}: {len(weight_labels)} images for weight steps, {len(arch_labels)} for architecture steps '
        f'({"test set" if args.protocol == "released" else "held-out training split"}), {len(test_set.labels)} test images')

    supernet = {'sequential': model_search_softmax_sigmoid, 'random': model_search_ran_softmax_sigmoid}[args.sampling]
    model = supernet.Network(args.init_channels, num_classes, args.layers, k=args.k, image_size=args.image_size).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    log(f'supernet ({args.sampling} sampling, k={args.k}): '
        f'{utils.count_parameters(model, model.arch_parameters()) / 1e6:.6f}M weight parameters')
    weights = model.weight_parameters()
    optimizer = torch.optim.SGD(weights, args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    grad_sync = utils.all_reduce_ if world_size > 1 else None
    architect = Architect(model, args.momentum, args.weight_decay, args.arch_learning_rate, args.arch_weight_decay,
                          grad_sync=grad_sync)
    amp_dtype, use_scaler = utils.autocast_settings(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)

    start_epoch, best = 0, {'acc': 0.0, 'epoch': -1, 'genotype': format_genotype(model.genotype())}
    if checkpoint is not None:
        model.load_state_dict(checkpoint['model'])
        optimizer.load_state_dict(checkpoint['optimizer'])
        architect.optimizer.load_state_dict(checkpoint['arch_optimizer'])
        scheduler.load_state_dict(checkpoint['scheduler'])
        scaler.load_state_dict(checkpoint['scaler'])
        start_epoch, best = checkpoint['epoch'], checkpoint['best']
        utils.set_rng_states(checkpoint['rng'])
        log(f'resumed at epoch {start_epoch}')
    forward_model = model
    if args.compile:
        forward_model = utils.maybe_compile(model, next(iter(valid_loader))[0], log)
        architect.model = forward_model
    writer = utils.tensorboard_writer(os.path.join(save_dir, 'tensorboard') if is_main else None, is_main)

    for epoch in range(start_epoch, args.epochs):
        lr = scheduler.get_last_lr()[0]
        log(f'epoch {epoch} lr {lr:e}')
        log(f'genotype = {format_genotype(model.genotype())}')
        arch_batches = cycle(arch_loader, epoch) if epoch >= args.warmup_epochs else None  # none fetched in warm-up
        train_loader.set_epoch(epoch)
        train_loss, train_matrix = train(forward_model, architect, train_loader, arch_batches, optimizer, scaler, lr,
                                         weights, args, device, amp_dtype, log, f'train {epoch}')
        utils.check_finite(train_loss, f'search epoch {epoch}')
        valid_loss, valid_matrix = utils.evaluate(forward_model, valid_loader, num_classes, device, amp_dtype)
        utils.check_finite(valid_loss, f'validation after search epoch {epoch}')
        train_metrics, valid_metrics = train_matrix.compute(), valid_matrix.compute()
        scheduler.step()
        genotype = format_genotype(model.genotype())
        # Warm-up epochs leave the architecture at its random initialisation: their genotypes are not candidates.
        if valid_metrics['accuracy'] > best['acc'] and (epoch >= args.warmup_epochs or args.warmup_epochs >= args.epochs):
            best = {'acc': valid_metrics['accuracy'], 'epoch': epoch, 'genotype': genotype}
        log(f'train_acc {train_metrics["accuracy"]:f}, train_f1 {train_metrics["f1"]:f}')
        log(f'valid_acc {valid_metrics["accuracy"]:f}, valid_f1 {valid_metrics["f1"]:f}, best_acc {best["acc"]:f}')
        if is_main:
            utils.log_scalars(writer, epoch, lr=lr, train_loss=train_loss.average(), valid_loss=valid_loss.average(),
                              train_acc=train_metrics['accuracy'], train_f1=train_metrics['f1'],
                              valid_acc=valid_metrics['accuracy'], valid_f1=valid_metrics['f1'])
            log_architecture(writer, model, epoch)
            with open(os.path.join(save_dir, 'genotype.txt.tmp'), 'w') as f:
                f.write(best['genotype'] + '\n')
            os.replace(os.path.join(save_dir, 'genotype.txt.tmp'), os.path.join(save_dir, 'genotype.txt'))
            utils.save_checkpoint(model.state_dict(), os.path.join(save_dir, 'weights.pt'))
            utils.save_checkpoint({'epoch': epoch + 1, 'model': model.state_dict(), 'optimizer': optimizer.state_dict(),
                                   'arch_optimizer': architect.optimizer.state_dict(),
                                   'scheduler': scheduler.state_dict(), 'scaler': scaler.state_dict(), 'best': best,
                                   'rng': utils.rng_states(), 'args': vars(args)},
                                  os.path.join(save_dir, 'checkpoint.pt'))

    log(f'best architecture-validation accuracy {best["acc"]:f} at epoch {best["epoch"]}')
    log(f'best genotype = {best["genotype"]}')
    if is_main:
        from genotypes import parse_genotype
        genotype = parse_genotype(best['genotype'])
        visualize.plot_cell(genotype.normal, genotype.normal_concat, os.path.join(save_dir, 'normal.png'), 'normal cell')
        visualize.plot_cell(genotype.reduce, genotype.reduce_concat, os.path.join(save_dir, 'reduce.png'), 'reduction cell')
        if writer is not None:
            writer.close()
        log(f'genotype written to {os.path.join(save_dir, "genotype.txt")}; train it with: '
            f'python train.py --genotype_file {save_dir}')


def train(model, architect, train_loader, arch_batches, optimizer, scaler, lr, weights, args, device, amp_dtype, log,
          prefix):
    """One search epoch: per step an architecture step on a held-out batch (after warm-up), then a weight step."""
    model.train()
    num_classes = utils.unwrap(model).classifier.out_features
    loss_meter, matrix = utils.LossMeter(device), utils.ConfusionMatrix(num_classes, device)
    progress = utils.Progress(log, prefix, len(train_loader), args.batch_size * train_loader.world_size,
                              args.report_freq)
    for step, (x, y) in enumerate(train_loader):
        arch_batch = next(arch_batches) if arch_batches is not None else None
        logits, loss = search_step(model, architect, x, y, arch_batch, optimizer, scaler, lr, weights,
                                   args.grad_clip, args.unrolled, amp_dtype)
        loss_meter.update(loss, len(y))
        matrix.update(logits, y)
        progress.step(step, loss_meter, matrix)
    loss_meter.all_reduce()
    matrix.all_reduce()
    return loss_meter, matrix


def search_step(model, architect, x, y, arch_batch, optimizer, scaler, lr, weights, grad_clip, unrolled, amp_dtype):
    """Architecture step on `arch_batch` (if given), then weight step on (x, y). Returns detached logits and loss."""
    autocast = torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    if arch_batch is not None:
        # fp16 without a loss scale would underflow in the architecture gradients: that step stays fp32 then.
        with autocast if amp_dtype != torch.float16 else contextlib.nullcontext():
            architect.step(x, y, *arch_batch, lr, optimizer, unrolled)
    optimizer.zero_grad(set_to_none=True)
    with autocast:
        logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
    scaler.scale(loss).backward(inputs=weights)  # the architecture gradients are not needed here
    scaler.unscale_(optimizer)
    if architect.grad_sync is not None:
        architect.grad_sync([w.grad for w in weights])
    torch.nn.utils.clip_grad_norm_(weights, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return logits.detach(), loss.detach()


def log_architecture(writer, model, epoch):
    """Op weights (sigmoid) and edge weights (softmax per node) as images and histograms in TensorBoard."""
    if writer is None:
        return
    for cell in ('normal', 'reduce'):
        op_weights = torch.sigmoid(getattr(model, f'alphas_{cell}').detach().float().cpu())
        edge_weights = model.edge_weights(getattr(model, f'betas_{cell}').detach().float().cpu())
        writer.add_image(f'op_weights/{cell}', op_weights.unsqueeze(0), epoch)
        writer.add_image(f'op_x_edge_weights/{cell}', (op_weights * edge_weights[:, None]).unsqueeze(0) /
                         (op_weights * edge_weights[:, None]).max(), epoch)
        writer.add_histogram(f'alphas/{cell}', getattr(model, f'alphas_{cell}').detach().float().cpu(), epoch)
        writer.add_histogram(f'betas/{cell}', getattr(model, f'betas_{cell}').detach().float().cpu(), epoch)


if __name__ == '__main__':
    utils.run_main(main)
