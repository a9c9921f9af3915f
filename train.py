"""Train a network from scratch (or from ImageNet backbones) and evaluate it on the test set: a searched GLA-FERNet
architecture (paper Sec. 4) or one of the hand-designed FER networks it is compared with (baselines.py), each with
its paper's recipe; model selection on a validation split where there is one; optionally with a noise-robust training
method (SCN, RUL, EAC, NLA: noise.py)."""
import argparse
import os

import cli
import genotypes
import recipes
import run_folder
from errors import UserError

parser = cli.training_parser('train', __doc__, seed=0, channels_last=True)
network = parser.add_argument_group('network')
network.add_argument('--model', choices=list(recipes.MODELS), default='gla_fernet',
                     help='the network to train: gla_fernet is the discrete network of a genotype; the others are '
                          'hand-designed FER networks, whose paper\'s recipe gives the defaults (docs/baselines.md "Recipes")')
network.add_argument('--epochs', type=cli.positive_int, default=600, help='num of training epochs')
network.add_argument('--init_channels', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['init_channels'],
                     help='num of init channels')
network.add_argument('--layers', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['layers'],
                     help='total number of layers')
network.add_argument('--stem_stride', type=cli.positive_int, default=genotypes.DISCRETE_NETWORK['stem_stride'],
                     help="gla_fernet: the stem convolution's stride (1: released; 2 quarters the cost of the cells "
                          "before the first reduction, where about 40%% of the multiply-adds are)")
network.add_argument('--stem_multiplier', type=cli.positive_int,
                     default=genotypes.DISCRETE_NETWORK['stem_multiplier'],
                     help="gla_fernet: the stem's channels over --init_channels (3: released)")
network.add_argument('--auxiliary', action='store_true', default=False, help='use auxiliary tower')
network.add_argument('--auxiliary_weight', type=cli.non_negative_float, default=0.4, help='weight for auxiliary loss')
network.add_argument('--drop_path_prob', type=cli.non_negative_float, default=0.3, help='drop path probability')
network.add_argument('--arch', type=str, default=None, help='name of a genotype in genotypes.py (default: PCDARTS = GLA_FERNet)')
network.add_argument('--genotype', default=None, help='genotype text, "Genotype(normal=[...], ...)" as search logs print it')
network.add_argument('--genotype_file', default=None,
                     help="genotype.txt written by train_search.py, its run folder, or a pattern such as 'search-EXP-*' "
                          "(the matching search with the newest genotype.txt)")
network.add_argument('--fgw_all_conv', action='store_true',
                     help='fgw_fer: the ablation with 3x3 convolutions in place of the separable ones')
network.add_argument('--rlr_split', choices=['bbn', 'literal'], default='bbn',
                     help="rlr_cnet: the two branches are copies of Stage 4's last block (bbn) or of Stage 4 and conv5 "
                          "(literal, the paper's text)")
network.add_argument('--rlr_mish', choices=['blocks', 'all'], default='blocks',
                     help='rlr_cnet: beta-Mish inside the blocks only, or also in conv1 and conv5')
network.add_argument('--se_gate', choices=['sample', 'batch'], default='sample',
                     help="cores_se: the SE gate of each image's own features, or the notebook's gate of the batch "
                          "mean (a prediction then depends on the other images of its batch)")
network.add_argument('--dropout', type=cli.non_negative_float, default=0.5,
                     help='fgw_fer, cores_se: dropout before the classifier')
network.add_argument('--pretrained', type=cli.optional(str), default=None,
                     help="shufflenet_v2, cores_se, resnet18: ImageNet weights for the backbones: 'imagenet' "
                          "(torchvision downloads them), a folder holding torchvision's weight files, or 'none'; "
                          "resnet18 also takes a face-recognition checkpoint file, such as the MS-Celeb-1M "
                          "resnet18_msceleb.pth of SCN, RUL, EAC and NLA; ddamfn, efficientface take only theirs "
                          "(MFN_msceleb.pth, Pretrained_EfficientFace.tar)")
network.add_argument('--efficientface_teacher', default=None,
                     help="efficientface: its label distribution generator, a frozen ResNet-50 file "
                          "(Pretrained_LDG.tar) whose soft labels are the loss's targets in place of the hard labels, "
                          "as in its paper")
training = parser.add_argument_group("training options (any model; a model's recipe sets some of them)")
training.add_argument('--optimizer', choices=['sgd', 'adamw', 'adam'], default='sgd',
                      help='sgd uses --momentum; adam adds the weight decay to the gradient (L2, as the noisy-label '
                           'FER papers), adamw decouples it')
training.add_argument('--scheduler', choices=['cosine', 'step', 'plateau', 'exponential'], default='cosine',
                      help='cosine: to --learning_rate_min over --epochs; step: x --lr_gamma every --lr_step_size '
                           'epochs; plateau: x --lr_gamma after --plateau_patience epochs without a lower '
                           'validation loss (needs a validation set); exponential: x --lr_gamma every epoch')
training.add_argument('--lr_warmup_epochs', type=cli.non_negative_int, default=0,
                      help='cosine, step: epoch t < W trains at (t+1)/W of --learning_rate')
training.add_argument('--lr_step_size', type=cli.positive_int, default=30, help='step: epochs between lr drops')
training.add_argument('--lr_gamma', type=cli.positive_float, default=0.1,
                      help='step, plateau, exponential: the lr factor of a drop')
training.add_argument('--plateau_patience', type=cli.non_negative_int, default=10,
                      help='plateau: epochs without a lower validation loss before the lr drops')
training.add_argument('--label_smoothing', type=cli.portion, default=0.0, help='label smoothing of the loss')
training.add_argument('--mixup_alpha', type=cli.non_negative_float, default=0.0,
                      help='Mixup of each batch, lam ~ Beta(a, a); 0: none')
training.add_argument('--cutmix_alpha', type=cli.non_negative_float, default=0.0,
                      help='CutMix of each batch, lam ~ Beta(a, a); 0: none')
training.add_argument('--mix_switch_prob', type=cli.portion, default=0.5,
                      help='with both alphas above 0: the probability that a batch gets CutMix rather than Mixup')
training.add_argument('--swa_start', type=cli.optional(cli.portion), default=None,
                      help="SWA: average the weights after each epoch from this fraction of --epochs on, then "
                           "recompute BatchNorm statistics; writes swa.pt (default and 'none': no SWA)")
training.add_argument('--sampler', choices=['uniform', 'balanced', 'reversed'], default='uniform',
                      help='training batches: a shuffle of all images, or images drawn with replacement, the classes '
                           'equally often (balanced) or in proportion to 1/N_class (reversed, BBN)')
training.add_argument('--flip_noise', action=argparse.BooleanOptionalAction, default=True,
                      help='the released augmentation: with p=0.5 a horizontal flip or Gaussian noise')
training.add_argument('--erasing', choices=['released', 'upper', 'none'], default='released',
                      help="released: torchvision's RandomErasing (the released code); upper: RLR-CNet's masking, the "
                           "box's top edge in the upper half of the face; none")
training.add_argument('--mask_fill', choices=['random', 'mean', 'black'], default='random',
                      help='--erasing upper: what fills the box (random pixels, the ImageNet mean pixel, black)')
training.add_argument('--val_portion', type=cli.portion, default=0.0,
                      help='a seeded, class-stratified share of the training set held out for validation, on which '
                           'best.pt and the plateau scheduler select (default 0: none, as released)')
noisy = parser.add_argument_group('training under label noise (docs/noise.md; each default is its paper\'s code\'s)')
noisy.add_argument('--noise_method', choices=list(recipes.NOISE_METHODS), default='none',
                   help='none: cross-entropy; scn: Self-Cure Network (attention, rank regularisation, relabelling); '
                        'rul: Relative Uncertainty Learning; eac: Erasing Attention Consistency; nla: noise-aware '
                        'adaptive weight and flip consistency. With resnet18 each takes its paper\'s recipe')
noisy.add_argument('--scn_beta', type=cli.portion, default=0.7, help='scn: the share of the high-attention group')
noisy.add_argument('--scn_margin_1', type=cli.non_negative_float, default=0.15,
                   help='scn: rank regularisation margin (its code and paper; its README gives 0.07 for batch 64)')
noisy.add_argument('--scn_margin_2', type=cli.non_negative_float, default=0.2,
                   help='scn: relabel when P_max - P_label exceeds it')
noisy.add_argument('--scn_relabel_epoch', type=cli.non_negative_int, default=9,
                   help='scn: the first epoch that relabels, counted from 0 as the log does (SCN counts from 1: its '
                        'default 10)')
noisy.add_argument('--rul_dim', type=cli.positive_int, default=64, help='rul: the mean and variance heads\' dimension')
noisy.add_argument('--rul_dropout', type=cli.portion, default=0.4, help='rul: dropout in the mean and variance heads')
noisy.add_argument('--rul_fc_lr_factor', type=cli.positive_float, default=10.0,
                   help="rul: the classifier's learning rate over --learning_rate")
noisy.add_argument('--eac_lambda', type=cli.non_negative_float, default=5.0, help='eac: weight of the CAM consistency')
noisy.add_argument('--nla_lam_a', type=cli.non_negative_float, default=0.5, help='nla: weight of the cross-entropy')
noisy.add_argument('--nla_lam_b', type=cli.non_negative_float, default=0.5,
                   help='nla: weight of the adaptively weighted cross-entropy')
noisy.add_argument('--nla_lam_c', type=cli.non_negative_float, default=0.5, help='nla: weight of the flip consistency')
noisy.add_argument('--nla_slope', type=float, default=-15.0, help='nla: eps = 1 - exp(slope * epoch / epochs)')
noisy.add_argument('--nla_mu_t', type=float, nargs=2, default=[0.5, 0.5],
                   help='nla: mean of (P_label, P_nearest negative) where the label is the arg max')
noisy.add_argument('--nla_mu_f', type=float, nargs=2, default=[0.3, 0.15], help='nla: the mean elsewhere')
noisy.add_argument('--nla_t_std', type=cli.positive_float, default=0.8, help='nla: major std where label = arg max')
noisy.add_argument('--nla_t_ratio', type=cli.positive_float, default=2.0, help='nla: its major / minor std ratio')
noisy.add_argument('--nla_f_std', type=cli.positive_float, default=0.91, help='nla: major std elsewhere')
noisy.add_argument('--nla_f_ratio', type=cli.positive_float, default=6.0, help='nla: its major / minor std ratio')
noisy.add_argument('--nla_t_lambda', type=cli.non_negative_float, default=1.0,
                   help='nla: factor of the weight where label = arg max')
noisy.add_argument('--noise_literal', action='store_true',
                   help="nla: its code's consistency term (KL from the softmax of the mean logits, summed over the "
                        "batch), which its published numbers used, in place of the Jensen-Shannon divergence")


def recipe(args):
    """The published settings of the network to train, as defaults of the flags not given: a baseline's paper
    recipe (recipes.py); for the genotype of a search (--genotype_file), the discrete network of the search's method
    (genotypes.METHODS: EmoNAS trains 5 cells of 36 channels for 70 epochs...) at the search's target configuration
    (--target_* of train_search.py); none otherwise."""
    if args.model != 'gla_fernet':
        return args.model, recipes.model_recipe(args.model, args.dataset, args.noise_method)
    if args.genotype_file:
        try:
            # the file a pattern matches now, so that main() reads the genotype the recipe is for
            args.genotype_file = run_folder.find_genotype_file(args.genotype_file)
            method = run_folder.search_method(args.genotype_file, genotypes.METHODS)
        except UserError:
            return 'gla_fernet', {}  # main() reports it, before a run folder exists
        # the search's target network (a budget's cost is that network's) over its method's recipe
        return method, {**genotypes.METHODS[method]['train'], **run_folder.search_target(args.genotype_file)}
    return 'gla_fernet', {}


def recipe_settings(name, dataset, noise_method='none'):
    """The settings of the recipe a run recorded by name (args.recipe): a baseline's or a search method's."""
    if name in recipes.MODELS:
        return recipes.model_recipe(name, dataset, noise_method)
    return genotypes.METHODS[name]['train'] if name in genotypes.METHODS else {}


def check_args(parser, args):
    given = [flag for flag in ('arch', 'genotype', 'genotype_file') if getattr(args, flag)]
    if len(given) > 1:
        parser.error(f'give only one of --arch, --genotype, --genotype_file (got {", ".join("--" + g for g in given)})')
    if not args.drop_path_prob < 1:
        parser.error(f'argument --drop_path_prob: {args.drop_path_prob} must be below 1')
    if not args.dropout < 1:
        parser.error(f'argument --dropout: {args.dropout} must be below 1')
    for flag, models in recipes.model_flags().items():
        if args.model not in models and getattr(args, flag) != parser.get_default(flag):
            parser.error(f'argument --{flag}: applies to --model {" or ".join(models)}, not to --model {args.model}')
    face = recipes.MODELS[args.model].face_checkpoint
    if args.pretrained is not None and not recipes.MODELS[args.model].pretrained and not os.path.isfile(
            args.pretrained):
        parser.error(f'argument --pretrained: {args.pretrained} is no file; {args.model} starts from its '
                     f'face-recognition checkpoint file ({face}) or from scratch (none)')
    if args.pretrained not in (None, 'imagenet') and not os.path.isdir(args.pretrained) and not (
            face and os.path.isfile(args.pretrained)):
        parser.error(f"argument --pretrained: {args.pretrained} is no folder{' or file' if face else ''}; give "
                     f"'imagenet', 'none' or a folder holding torchvision's ImageNet weight files" +
                     (' or a face-recognition checkpoint file' if face else ''))
    if recipes.MODELS[args.model].two_branch and (args.mixup_alpha or args.cutmix_alpha):
        parser.error(f"--mixup_alpha and --cutmix_alpha do not combine with {args.model}'s two-branch training (its "
                     f"loss already mixes a uniform and a reversed batch)")
    if args.model == 'gla_fernet':
        try:
            genotypes.check_image_size(args.image_size, args.stem_stride)
        except UserError as e:
            parser.error(f'argument --image_size: {e}')
    problem = recipes.image_size_problem(args.model, args.image_size)
    if problem:
        parser.error(f'argument --image_size: {problem}')
    check_teacher_args(parser, args)
    if args.scheduler == 'plateau' and args.lr_warmup_epochs:
        parser.error('argument --lr_warmup_epochs: applies to --scheduler cosine or step, not plateau')
    check_noise_args(parser, args)
    if args.lr_warmup_epochs >= args.epochs:
        from_recipe = recipe_settings(args.recipe, args.dataset).get('lr_warmup_epochs') == args.lr_warmup_epochs
        source = f" (the {args.recipe} recipe's)" if from_recipe else ''
        parser.error(f'argument --lr_warmup_epochs: a warm-up of {args.lr_warmup_epochs} epochs{source} leaves none of '
                     f'the --epochs {args.epochs} at the full learning rate; give --lr_warmup_epochs 0, or fewer '
                     f'warm-up epochs than --epochs')



def check_teacher_args(parser, args):
    """--efficientface_teacher: a file; its soft labels replace the targets, which nothing else may change."""
    if args.efficientface_teacher is None:
        return
    if not os.path.isfile(args.efficientface_teacher):
        parser.error(f'argument --efficientface_teacher: {args.efficientface_teacher} is no file')
    given = [f'--{flag} {getattr(args, flag)}' for flag in ('mixup_alpha', 'cutmix_alpha', 'label_smoothing')
             if getattr(args, flag)] + ([f'--noise_method {args.noise_method}'] if args.noise_method != 'none' else [])
    if given:
        parser.error(f"argument --efficientface_teacher: its soft labels are the loss's targets, which "
                     f"{', '.join(given)} would change")


def check_noise_args(parser, args):
    """Refuse a --noise_method where it does not apply, and the training options it does not combine with: every
    conflicting flag at once, each said to come from the model's recipe where it does."""
    method, model = args.noise_method, recipes.MODELS[args.model]
    for name, flags in recipes.NOISE_METHODS.items():
        for flag in flags:
            if name != method and getattr(args, flag) != parser.get_default(flag):
                parser.error(f'argument --{flag}: applies to --noise_method {name}, not {method}')
    if method == 'none':
        return
    if model.two_branch:
        parser.error(f"--noise_method {method}: {args.model}'s two-branch training is a loss of its own, which "
                     f"{method}'s loss would replace")
    if method == 'eac' and not model.class_activation_maps:
        parser.error(f'--noise_method eac needs class activation maps: a last feature map followed by global pooling '
                     f'and a linear or convolutional head, and {args.model} has none')
    # each needs the hard label of each image: flags that change the targets, and the auxiliary tower's logits
    conflicting = [flag for flag in ('mixup_alpha', 'cutmix_alpha', 'label_smoothing', 'auxiliary')
                   if getattr(args, flag, False)]
    if conflicting:
        settings = recipe_settings(args.recipe, args.dataset, method)
        shown = [f'--{flag} {getattr(args, flag)}' + (f' (the {args.recipe} recipe\'s)' if flag in settings and
                                                      settings[flag] == getattr(args, flag) else '')
                 for flag in conflicting]
        parser.error(f"--noise_method {method}: its loss is defined on each image's own hard label and the network's "
                     f"features and head, which {', '.join(shown)} would change; give "
                     + ' '.join(f'--{flag} 0' if flag != 'auxiliary' else 'no --auxiliary' for flag in conflicting))


if __name__ == '__main__':
    # Parsed before torch is imported (seconds on a busy machine): --help and a bad flag answer at once.
    ARGS = cli.parse(parser, check_args, recipe=recipe)

import functools  # noqa: E402
import math  # noqa: E402

import torch  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.optim.swa_utils import AveragedModel, update_bn  # noqa: E402

import data_loader  # noqa: E402
import noise  # noqa: E402
import training_step  # noqa: E402
import utils  # noqa: E402
import visualize  # noqa: E402
from selection import SUMMARY, Selection  # noqa: E402
from augment import Augmentation, BatchMixer  # noqa: E402
from baselines import create_model, cumulative_alpha, load_pretrained, model_options  # noqa: E402


def main(args, log):
    run = utils.Run('eval', parser, args, log)
    if run.complete:
        return
    args, device = run.args, run.device
    genotype = run_genotype(run, args, log)
    recipe = log_recipe(args, log)
    data = data_loader.load_from_args(args, log)
    run.check_label_file(data.train)
    loaders = training_loaders(data, args, run, log)
    num_classes = len(loaders.class_names)

    model, stats = build_model(args, run, genotype, num_classes, log)
    method = training_method(args, loaders, num_classes, log)
    optimizer = make_optimizer(method.parameter_groups(model), args)
    scheduler = make_scheduler(optimizer, args)
    amp_dtype, use_scaler = utils.amp_settings(device, args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=use_scaler)
    update = training_step.WeightUpdate(list(model.parameters()), optimizer, scaler, args.grad_clip, amp_dtype)
    compile_step = args.compile and training_step.can_compile_step(run, use_scaler, log)
    forward_model, step_model = training_forward(model, method, args, run, loaders, log, compile_step)
    swa_model = AveragedModel(model) if args.swa_start is not None else None
    selection = Selection(has_validation=loaders.val is not None, log=log)

    run.start()
    stateful = {'model': model, 'optimizer': optimizer, 'scheduler': scheduler, 'scaler': scaler}
    if swa_model is not None:
        stateful['swa_model'] = swa_model
    if method.saves_state:  # SCN's relabelled training labels
        stateful['noise'] = method
    start_epoch, selection.best = run.restore(stateful, selection.best)
    weight_step = functools.partial(training_step.weight_step, step_model, update, loss=method.loss)
    if compile_step:  # after the restore: the compiled step updates the restored optimizer state in place
        update.functional = True
        weight_step = training_step.CompiledStep(weight_step, [optimizer], device, log)
    report = Report(run, model, swa_model, loaders.class_names, genotype, recipe, stats)
    for epoch in range(start_epoch, args.epochs):
        lr = float(optimizer.param_groups[0]['lr'])
        log(f'epoch {epoch} lr {lr:e}' + (f' alpha {cumulative_alpha(epoch, args.epochs):f}'
                                          if loaders.reversed is not None else ''))
        if hasattr(noise.base_network(model), 'drop_path_prob'):
            noise.base_network(model).drop_path_prob.fill_(args.drop_path_prob * epoch / args.epochs)
        forward_model.train()
        loaders.train.set_epoch(epoch)
        method.set_epoch(epoch)

        def step(x, y):
            logits, loss, score = weight_step(*method.batch(x, y))
            method.after_step(logits, y, score, loaders.train.batch_index)
            return logits, loss

        progress = utils.Progress(log, f'train {epoch}', loaders.train, args.report_freq, epoch, args.epochs)
        train_loss, train_matrix = utils.run_epoch(step, loaders.train, num_classes, progress)
        run.check_loss(train_loss, f'training epoch {epoch}')
        noisy = method.end_epoch()
        last, valid = evaluate_epoch(forward_model, loaders, num_classes, amp_dtype, run, epoch)
        if args.scheduler == 'plateau':
            scheduler.step(valid['loss'])
        else:
            scheduler.step()
        if swa_model is not None and epoch >= swa_first_epoch(args):
            swa_model.update_parameters(model)
        selection.update(epoch, last, valid)
        swa = None
        if swa_model is not None and epoch == args.epochs - 1:
            swa = finish_swa(swa_model, loaders, num_classes, amp_dtype, run, log)
        report.epoch(epoch, lr, train_loss.average(), train_matrix.compute(), last, valid, selection, swa, noisy)
        run.save(epoch, selection.best, stateful, **report.checkpoint_extra(data, args))

    report.close()
    report.summary(last, selection, swa)


def training_method(args, loaders, num_classes, log=print):
    """The --noise_method's training (noise.METHODS; none: cross-entropy with the recipe's Mixup/CutMix and
    RLR-CNet's second batches)."""
    mixer = None
    if args.mixup_alpha or args.cutmix_alpha:
        mixer = BatchMixer(num_classes, args.mixup_alpha, args.cutmix_alpha, args.mix_switch_prob,
                           args.label_smoothing, args.seed)
    elif args.efficientface_teacher:  # its soft labels in place of the hard ones (frontier.py)
        import frontier
        mixer = frontier.LabelDistributionGenerator(args.efficientface_teacher, num_classes, args.dataset,
                                                    loaders.train.labels.device)
        log(mixer.describe())
    return noise.method_class(args.noise_method)(args, loaders.train.labels, loaders.clean_labels,
                                                 loaders.augmentation, mixer, loaders.reversed)


def evaluate_epoch(forward_model, loaders, num_classes, amp_dtype, run, epoch):
    """The test metrics after an epoch, and the validation metrics (None without a validation set)."""
    last = utils.evaluation_metrics(forward_model, loaders.test, num_classes, amp_dtype, run,
                                    f'testing after epoch {epoch}')
    valid = None
    if loaders.val is not None:
        valid = utils.evaluation_metrics(forward_model, loaders.val, num_classes, amp_dtype, run,
                                         f'validation after epoch {epoch}')
    return last, valid


def build_model(args, run, genotype, num_classes, log):
    """The network to train, with the heads of --noise_method (SCN's, RUL's), on the run's device; and its
    statistics."""
    model = create_model(args.model, num_classes, **model_options(args, genotype))
    if args.pretrained and run.checkpoint is None:  # a resumed run's weights come from its checkpoint
        load_pretrained(model, args.model, args.pretrained, log)
    model = noise.network_with_heads(model, args).to(run.device)
    unused = noise.method_class(args.noise_method).unused_parameters(model, args.image_size)
    stats = network_statistics(model, args.image_size, run.device, unused)
    log(f'param size = {stats["params_without_auxiliary"] / 1e6:f}M ({stats["weights"] / 1e6:f}M convolution and '
        f'linear weights), FLOPs = {stats["flops"] / 1e6:.2f}M ({stats["macs"] / 1e6:.2f}M multiply-adds) at '
        f'{args.image_size}x{args.image_size}, model size = {stats["model_size_mb"]:.2f}MB')
    if unused:  # RUL's replaced classifier; the parameters DDAMFN holds only for its official checkpoints
        log(f'not counted: {sum(p.numel() for p in unused):,} parameters that training never uses (with them: '
            f'{sum(p.numel() for p in model.parameters()):,})')
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, stats


def training_forward(model, method, args, run, loaders, log, compile_step):
    """(What the epoch's training and evaluation call, what a training step calls): the method's training forward
    (noise.TrainingForward; in eval mode the model), over the model compiled by --compile (the forward only, where the
    whole step is not compiled: then the evaluation's forward, and the training forward of cross-entropy, whose forward
    is the model's); under torchrun wrapped by DistributedDataParallel (for RUL allowing the network's own
    classifier, which it does not use, to get no gradient). A compiled step traces the plain module."""
    if run.world_size > 1 and args.noise_method == 'scn' and args.sampler != 'uniform':
        raise UserError(f'--noise_method scn under torchrun relabels each process\'s own samples, and --sampler '
                        f'{args.sampler} can give one sample to two processes; use --sampler uniform, or one process')
    step_model = noise.TrainingForward(model, method)
    if not args.compile:
        compiled = model
    else:
        compiled = training_step.maybe_compile(model, next(iter(loaders.test))[0], log,
                                               training=not compile_step and args.noise_method == 'none')
    forward_model = noise.TrainingForward(compiled, method)
    if run.world_size > 1:
        device = run.device
        forward_model = DistributedDataParallel(forward_model, device_ids=[device.index] if device.type == 'cuda' else
                                                None, find_unused_parameters=args.noise_method == 'rul' or
                                                bool(noise.kept_parameters(model)))
    return forward_model, step_model if compile_step else forward_model


def run_genotype(run, args, log):
    """The genotype of a gla_fernet run (None for the other models): from --arch, --genotype or --genotype_file for
    a new run, from the checkpoint for a resumed one."""
    if args.model != 'gla_fernet':
        return None
    if run.checkpoint is None:
        genotype, args.genotype_file = read_genotype(args)  # the file a pattern resolved to goes into args.json
        if args.genotype_file:  # an unreadable method file stops the run here, before its folder exists
            method = run_folder.search_method(args.genotype_file, genotypes.METHODS)
            log(f'genotype of a --method {method} search ({args.genotype_file})')
    else:
        genotype = genotypes.parse_genotype(run.checkpoint['genotype'])
    log(f'genotype = {genotypes.format_genotype(genotype)}')
    return genotype


def read_genotype(args):
    """The genotype from exactly one of --arch, --genotype, --genotype_file, and the file it was read from."""
    if args.genotype:
        return genotypes.parse_genotype(args.genotype), None
    if args.genotype_file:
        path = run_folder.find_genotype_file(args.genotype_file)
        with open(path) as f:
            try:
                return genotypes.parse_genotype(f.read()), path
            except UserError as e:
                raise UserError(f'{path}: {e}') from None
    return genotypes.genotype_by_name(args.arch or 'PCDARTS'), None


def log_recipe(args, log):
    """Log the recipe the run's flags came from and where a flag departs from it; returns metrics.json's record."""
    name = getattr(args, 'recipe', 'gla_fernet')  # runs from before recipes had none
    settings = recipe_settings(name, args.dataset, getattr(args, 'noise_method', 'none'))
    used = {flag: getattr(args, flag) for flag in settings}
    log(f'recipe {name}: ' + (', '.join(f'{flag} {value}' + ('' if value == settings[flag] else
                                                             f' (recipe: {settings[flag]})')
                                        for flag, value in used.items()) or "the flags' defaults"))
    return {'name': name, 'settings': used}


class Loaders:
    """The batches of a training run: train (augmented, sampled as --sampler says), reversed (RLR-CNet's second
    branch, else None), test, and val (None without a validation set); the training set's clean labels where known
    (else None) and the training augmentation."""

    def __init__(self, **loaders):
        self.__dict__.update(loaders)


def training_loaders(data, args, run, log):
    train_set, val_set, val_source = validation_split(data, args.val_portion, args.seed, log)
    test_set = data.test
    loader_args = dict(device=run.device, image_size=args.image_size, seed=args.seed, rank=run.rank,
                       world_size=run.world_size, channels_last=args.channels_last)
    augmentation = Augmentation(args.flip_noise, args.erasing, args.mask_fill)
    batch_augmentation = noise.method_class(args.noise_method).loader_augmentation(augmentation)
    train_loader = data_loader.DeviceLoader(train_set.images, train_set.labels, args.batch_size,
                                            augment=batch_augmentation, shuffle=True, drop_last=True,
                                            sampler=args.sampler, **loader_args)
    # RLR-CNet's second branch learns from batches of the reversed sampler, drawn independently (stream 1).
    reversed_loader = None
    if recipes.MODELS[args.model].two_branch:
        reversed_loader = data_loader.DeviceLoader(train_set.images, train_set.labels, args.batch_size,
                                                   augment=augmentation, drop_last=True, sampler='reversed', stream=1,
                                                   **loader_args)
    evaluation = lambda images, labels: data_loader.evaluation_loader(images, labels, args, run.device, rank=run.rank,
                                                                      world_size=run.world_size)
    val_loader = evaluation(val_set.images, val_set.labels) if val_set is not None else None
    data_loader.check_batches(train_loader, 'the training set',
                              'lower --batch_size' + (' or --val_portion' if args.val_portion else ''))
    log(f'{args.dataset}: {len(train_set.labels)} training images, ' +
        (f'{len(val_set.labels)} validation images ({val_source}), ' if val_set is not None else '') +
        f'{len(test_set.labels)} test images, {len(train_set.class_names)} classes')
    if args.scheduler == 'plateau' and val_loader is None:
        raise UserError('--scheduler plateau lowers the lr when the validation loss stops falling, and this run '
                        'has no validation set: give --val_portion (e.g. 0.125) or another --scheduler')
    return Loaders(train=train_loader, reversed=reversed_loader, test=evaluation(test_set.images, test_set.labels),
                   val=val_loader, class_names=train_set.class_names, clean_labels=train_set.clean_labels,
                   augmentation=augmentation)


def validation_split(data, val_portion, seed, log):
    """(training set, validation set or None, where the validation set comes from): the dataset's own validation
    set if its layout has one, else a seeded class-stratified `val_portion` of its training set (if above 0)."""
    if data.val is not None:
        if val_portion:
            log(f'the dataset has its own validation set: it is used, and --val_portion {val_portion} is not')
        return data.train, data.val, "the dataset's own"
    if not val_portion:
        return data.train, None, None
    train_idx, val_idx = data_loader.stratified_split(data.train.labels, 1 - val_portion, seed)
    clean = data.train.clean_labels
    part = lambda idx: data_loader.ImageSet(data.train.images[idx], data.train.labels[idx], data.train.class_names,
                                            data.train.root, None if clean is None else clean[idx])
    return part(train_idx), part(val_idx), f'a stratified {val_portion:g} of the training set, seed {seed}'


def make_optimizer(parameters, args):
    if args.optimizer == 'adam':
        return torch.optim.Adam(parameters, args.learning_rate, weight_decay=args.weight_decay)
    if args.optimizer == 'adamw':
        return torch.optim.AdamW(parameters, args.learning_rate, weight_decay=args.weight_decay)
    return torch.optim.SGD(parameters, args.learning_rate, momentum=args.momentum, weight_decay=args.weight_decay)


def make_scheduler(optimizer, args):
    """The learning-rate schedule, stepped once after each epoch (plateau: with the validation loss)."""
    if args.scheduler == 'plateau':
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=args.lr_gamma,
                                                          patience=args.plateau_patience)
    if args.scheduler == 'cosine' and not args.lr_warmup_epochs:  # the released schedule
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs, eta_min=args.learning_rate_min)
    if args.scheduler == 'exponential' and not args.lr_warmup_epochs:  # the noisy-label FER papers'
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, args.lr_gamma)

    def factor(epoch):
        # A warm-up never trains at lr 0 (CoRes-SE's notebook trained its first two epochs at 0): its epoch t < W
        # is at (t+1)/W; then the schedule goes on as if it had started at epoch 0.
        if epoch < args.lr_warmup_epochs:
            return (epoch + 1) / args.lr_warmup_epochs
        if args.scheduler == 'step':
            return args.lr_gamma ** (epoch // args.lr_step_size)
        if args.scheduler == 'exponential':
            return args.lr_gamma ** epoch
        floor = args.learning_rate_min / args.learning_rate
        return floor + (1 - floor) * (1 + math.cos(math.pi * epoch / args.epochs)) / 2
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class Report:
    """What a training run writes after each epoch besides its checkpoint: log lines, TensorBoard scalars, best.pt
    and swa.pt, metrics.json and the confusion matrix figure; and its closing summary."""

    def __init__(self, run, model, swa_model, class_names, genotype, recipe, stats):
        self.run, self.model, self.swa_model, self.class_names, self.recipe = run, model, swa_model, class_names, recipe
        self.genotype = genotypes.format_genotype(genotype) if genotype else None
        self.stats = stats
        self.writer = utils.tensorboard_writer(run)

    def epoch(self, epoch, lr, train_loss, train, last, valid, selection, swa, noisy=None):
        """noisy: the --noise_method's record of the epoch (noise.CrossEntropy.end_epoch)."""
        run, log, best = self.run, self.run.log, selection.best
        log(f'train_acc {train["accuracy"]:f}, train_balanced_acc {train["balanced_accuracy"]:f}, '
            f'train_f1 {train["f1"]:f}')
        if valid is not None:
            log(f'valid_acc {valid["accuracy"]:f}, valid_balanced_acc {valid["balanced_accuracy"]:f}, '
                f'valid_f1 {valid["f1"]:f}, valid_loss {valid["loss"]:f}, best valid_acc '
                f'{best["val_selected"]["val_accuracy"]:f} at epoch {best["val_selected"]["epoch"]}')
        log(f'test_acc {last["accuracy"]:f}, test_balanced_acc {last["balanced_accuracy"]:f}, '
            f'test_precision {last["precision"]:f}, test_recall {last["recall"]:f}, test_f1 {last["f1"]:f}, '
            f'best_acc {best["test_selected"]["accuracy"]:f} at epoch {best["test_selected"]["epoch"]} (test-selected)')
        noisy = {'method': run.args.noise_method, **(noisy or {})}
        if len(noisy) > 1:
            log(noise_line(noisy))
        run.check_weights(self.model, epoch)
        if not run.is_main:
            return
        validation = {} if valid is None else {'val_loss': valid['loss'], 'val_acc': valid['accuracy'],
                                               'val_balanced_acc': valid['balanced_accuracy'], 'val_f1': valid['f1']}
        utils.log_scalars(self.writer, epoch, lr=lr, train_loss=train_loss, test_loss=last['loss'],
                          train_acc=train['accuracy'], train_f1=train['f1'],
                          train_balanced_acc=train['balanced_accuracy'], test_acc=last['accuracy'],
                          test_balanced_acc=last['balanced_accuracy'], test_precision=last['precision'],
                          test_recall=last['recall'], test_f1=last['f1'], **validation,
                          **{f'noise_{k}': v for k, v in noisy.items() if k != 'method' and v is not None})
        if best[selection.best_pt]['epoch'] == epoch:
            run.save_weights(run_folder.BEST, self.model.state_dict())
        if swa is not None:
            run.save_weights(run_folder.SWA, self.swa_model.module.state_dict())
        epochs = run.args.epochs
        run.write_json(run_folder.METRICS, {
            'complete': epoch + 1 == epochs, 'epochs_done': epoch + 1, 'epochs': epochs, 'model': run.args.model,
            'recipe': self.recipe, 'last': last, **selection.records(), **({'swa': swa} if swa is not None else {}),
            'label_noise': noisy,
            'class_names': self.class_names, **self.stats, 'genotype': self.genotype})
        visualize.plot_confusion_matrix(last['confusion_matrix'], self.class_names, run.path(run_folder.CONFUSION_MATRIX),
                                        f'{run.args.dataset} test, epoch {epoch}: accuracy {last["accuracy"]:.2f}%')

    def checkpoint_extra(self, data, args):
        """What checkpoint.pt holds besides the training state: what rebuilding and feeding the network needs, so that
        the file alone predicts with the right classes and input."""
        return {'genotype': self.genotype, 'class_names': self.class_names,
                'input': {'image_size': args.image_size, 'grayscale': data_loader.grayscale_source(args),
                          'source_size': data_loader.source_size(args)}}

    def close(self):
        if self.writer is not None:
            self.writer.close()

    def summary(self, last, selection, swa):
        log, best = self.run.log, selection.best
        line = lambda m: (f'test accuracy {m["accuracy"]:.2f}%, balanced accuracy {m["balanced_accuracy"]:.2f}%, '
                          f'macro-F1 {m["f1"]:.2f}%')
        log(f'final {line(last)} (last epoch)')
        if selection.best_pt == 'val_selected':
            log(f'validation-selected: {line(best["val_selected"])} at epoch {best["val_selected"]["epoch"]} (best '
                f'validation accuracy {best["val_selected"]["val_accuracy"]:.2f}%; in best.pt)')
        if 'last5_mean' in selection.records():
            last5 = selection.records()['last5_mean']
            log(f'last-{last5["epochs"]} mean: {line(last5)} over epochs {last5["epoch"] - last5["epochs"] + 1}-'
                f'{last5["epoch"]} (as EAC reports)')
        if swa is not None:
            log(f'SWA of epochs {swa_first_epoch(self.run.args)}-{self.run.args.epochs - 1}: {line(swa)} (in swa.pt)')
        log(f'test-selected: best {line(best["test_selected"])} at epoch {best["test_selected"]["epoch"]} (selected '
            f'on the test set, optimistic; the released best_acc)' +
            (f'; results in {self.run.folder}' if self.run.is_main else ''))


def noise_line(noisy):
    """The log line of a --noise_method's epoch record (noise.CrossEntropy.end_epoch)."""
    parts = []
    if 'auroc' in noisy:
        auroc = 'undefined (no flipped label)' if noisy['auroc'] is None else f'{noisy["auroc"]:.4f}'
        parts.append(f'AUROC of its per-sample score for flipped training labels {auroc}')
    if 'relabelled' in noisy:
        parts.append(f'{noisy["relabelled"]} labels changed' + (
            f' ({noisy["restored"]} to the clean label; {noisy["noisy_labels"]} labels differ from the clean list)'
            if 'restored' in noisy else ''))
    return f'{noisy["method"]}: ' + '; '.join(parts)


def swa_first_epoch(args):
    return int(args.swa_start * args.epochs)


def finish_swa(swa_model, loaders, num_classes, amp_dtype, run, log):
    """The averaged weights' BatchNorm statistics, recomputed over one more pass of the training set (as
    CoRes-SE's notebook: torch.optim.swa_utils.update_bn), then their test (and validation) metrics."""
    loaders.train.set_epoch(run.args.epochs)  # a pass of its own, (seed, epoch)-pure like the others
    update_bn(utils.with_progress(loaders.train, utils.Progress(log, 'SWA BatchNorm statistics', loaders.train)),
              swa_model)
    swa = utils.evaluation_metrics(swa_model, loaders.test, num_classes, amp_dtype, run, 'testing the SWA weights')
    if loaders.val is not None:
        valid = utils.evaluation_metrics(swa_model, loaders.val, num_classes, amp_dtype, run,
                                         'validating the SWA weights')
        swa.update({f'val_{key}': valid[key] for key in SUMMARY})
    log(f'swa test_acc {swa["accuracy"]:f}, test_balanced_acc {swa["balanced_accuracy"]:f}, test_f1 {swa["f1"]:f} '
        f'({int(swa_model.n_averaged)} epochs averaged)')
    run.check_weights(swa_model, run.args.epochs - 1)
    return swa


def network_statistics(model, image_size, device, unused=()):
    """Parameters (with and without the auxiliary head, which inference does not use; neither counting `unused`, the
    parameters training never uses, such as the network's own classifier under RUL's), convolution and linear
    weights, FLOPs and multiply-adds of one image, size in MB."""
    auxiliary = list(getattr(model, 'auxiliary_head', torch.nn.Identity()).parameters())
    stats = {'params': utils.count_parameters(model, unused),
             'params_without_auxiliary': utils.count_parameters(model, [*auxiliary, *unused]),
             'weights': utils.count_weights(model, [*auxiliary, *unused]),
             'flops': utils.count_flops(model, image_size, device)}
    stats['macs'] = stats['flops'] // 2
    stats['model_size_mb'] = utils.megabytes(stats['params_without_auxiliary'])
    return stats


if __name__ == '__main__':
    utils.run_main(main, ARGS)
