"""The networks train.py trains, one table entry each (MODELS): the flags that build it, its pretrained backbones, its
smallest input, how it trains, and its paper's recipe as defaults of train.py's flags (docs/baselines.md). Imports no
torch, so the scripts parse their flags without it; baselines.create_model builds a network from its entry.

A recipe only sets flags that exist anyway (cli.apply_recipe), so each of its items is overridden by giving the
flag. A value given as {dataset: value} applies on those datasets only (input sizes the papers tie to a dataset).
"""
from dataclasses import dataclass, field

# RLR-CNet, Table 2 and Sec. 4.1.1. Weight decay is not stated (PyTorch's default, 0); no gradient clipping, no
# augmentation besides the upper-half masking; input size not stated: RAF-DB's aligned 100x100, else the default 48.
RLR_CNET = {'optimizer': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9, 'weight_decay': 0.0, 'scheduler': 'step',
            'lr_step_size': 50, 'lr_gamma': 0.5, 'batch_size': 16, 'epochs': 300, 'grad_clip': 0.0,
            'flip_noise': False, 'erasing': 'upper', 'image_size': {'rafdb': 100}}


@dataclass(frozen=True)
class Model:
    """What the scripts know of a network of train.py besides its code (baselines.py, a function of the same name)."""
    options: dict  # the constructor's keyword arguments -> the train.py flags that give them
    own_flags: tuple = ()  # further flags that apply to this model only
    recipe: dict = field(default_factory=dict)  # its paper's settings, as flag defaults
    genotype: bool = False  # built from a genotype (a searched cell), so its genotype tells runs apart
    pretrained: tuple = ()  # (attribute holding a backbone, '' for the network itself; torchvision weights name)
    min_image_size: int = 1
    fixed_image_size: int = 0  # the one input size its layers are cut for (0: any size from min_image_size)
    two_branch: bool = False  # trained on a uniform and a reversed batch per step (BBN's cumulative learning)
    class_activation_maps: bool = True  # its head is linear then global pooling (EAC needs it)
    # --pretrained also takes a face-recognition checkpoint file (MS-Celeb-1M): its published name ('' if none)
    face_checkpoint: str = ''
    noise_recipes: dict = field(default_factory=dict)  # --noise_method: that method's paper's settings over `recipe`


# The noisy-label FER papers' ResNet-18 (docs/noise.md "Recipes"): all four train torchvision's ResNet-18 from
# MS-Celeb-1M weights with Adam, weight decay 1e-4, ExponentialLR 0.9, 224 px (RAF-DB's 100 px aligned images
# upscaled) and RandomErasing (0.02-0.25); they differ in learning rate, batch and epochs, so each --noise_method takes
# its own paper's: EAC (main.py; its README: lr 2e-4 for ResNet-18), which is also the CE baseline (none) of EAC and
# NLA, with 1e-4 as EAC's main.py; SCN (train.py: Adam without lr, PyTorch's 1e-3; batch 64; 70 epochs); RUL
# (main.py: 2e-4, its classifier 10x, batch 64, 60 epochs); NLA (main_rafdb.py: 1e-4, batch 32, 60 epochs).
NOISY_FER = {'optimizer': 'adam', 'learning_rate': 1e-4, 'weight_decay': 1e-4, 'scheduler': 'exponential',
             'lr_gamma': 0.9, 'batch_size': 32, 'epochs': 60, 'image_size': 224, 'grad_clip': 0.0,
             'flip_noise': True, 'erasing': 'released'}
NOISE_RECIPES = {'scn': {'learning_rate': 1e-3, 'batch_size': 64, 'epochs': 70},
                 'rul': {'learning_rate': 2e-4, 'batch_size': 64, 'epochs': 60},
                 'eac': {'learning_rate': 2e-4, 'batch_size': 32, 'epochs': 60},
                 'nla': {'learning_rate': 1e-4, 'batch_size': 32, 'epochs': 60}}

# DDAMFN's and EfficientFace's official training scripts (docs/baselines.md "DDAMFN", "EfficientFace"). Flips: our
# flip-or-noise augmentation, the nearest we have to their RandomHorizontalFlip. Neither clips gradients.
DDAMFN = {'optimizer': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9, 'weight_decay': 1e-4, 'scheduler': 'step',
          'lr_step_size': 10, 'lr_gamma': 0.1, 'batch_size': 256, 'epochs': 40, 'image_size': 112, 'grad_clip': 0.0,
          'flip_noise': True, 'erasing': 'released'}
EFFICIENTFACE = {'optimizer': 'sgd', 'learning_rate': 0.1, 'momentum': 0.9, 'weight_decay': 1e-4, 'scheduler': 'step',
                 'lr_step_size': 30, 'lr_gamma': 0.1, 'batch_size': 128, 'epochs': 100, 'image_size': 224,
                 'grad_clip': 0.0, 'flip_noise': True, 'erasing': 'none'}

# train.py's --noise_method: the flags of each method (refused with another method). 'none' is plain cross-entropy.
NOISE_METHODS = {
    'none': (),
    'scn': ('scn_beta', 'scn_margin_1', 'scn_margin_2', 'scn_relabel_epoch'),
    'rul': ('rul_dim', 'rul_dropout', 'rul_fc_lr_factor'),
    'eac': ('eac_lambda',),
    'nla': ('nla_lam_a', 'nla_lam_b', 'nla_lam_c', 'nla_slope', 'nla_mu_t', 'nla_mu_f', 'nla_t_std', 'nla_t_ratio',
            'nla_f_std', 'nla_f_ratio', 'nla_t_lambda', 'noise_literal'),
}

MODELS = {
    # The discrete network of a genotype: its recipe is the search method's (genotypes.METHODS), not one of here.
    'gla_fernet': Model(options={'init_channels': 'init_channels', 'layers': 'layers', 'auxiliary': 'auxiliary',
                                 'image_size': 'image_size', 'stem_stride': 'stem_stride',
                                 'stem_multiplier': 'stem_multiplier'},
                        own_flags=('arch', 'genotype', 'genotype_file', 'drop_path_prob'), genotype=True),
    # FGW-FER Sec. 4.2: AdamW 1e-3 (weight decay not stated: PyTorch's 0.01), ReduceLROnPlateau on the validation
    # loss (PyTorch's factor 0.1 and patience 10), batch 64, 300 epochs, no augmentation. Its 7-1-2 split keeps one
    # part in eight of the non-test images for validation; the dropout rate is not given (0.5 is ours).
    'fgw_fer': Model(options={'all_conv': 'fgw_all_conv', 'dropout': 'dropout'},
                     recipe={'optimizer': 'adamw', 'learning_rate': 1e-3, 'weight_decay': 0.01, 'scheduler': 'plateau',
                             'lr_gamma': 0.1, 'plateau_patience': 10, 'batch_size': 64, 'epochs': 300,
                             'val_portion': 0.125, 'grad_clip': 0.0, 'flip_noise': False, 'erasing': 'none',
                             'dropout': 0.5, 'image_size': {'rafdb': 100}}),
    # RLR-CNet's Table 3 baseline ("ShuffleNet"): its recipe without the masking.
    'shufflenet_v2': Model(options={}, recipe={**RLR_CNET, 'erasing': 'none'},
                           pretrained=(('', 'ShuffleNet_V2_X1_0_Weights.IMAGENET1K_V1'),)),
    # Two-branch cumulative learning (uniform and reversed samplers) is part of the network: train.py always trains
    # rlr_cnet that way.
    'rlr_cnet': Model(options={'split': 'rlr_split', 'mish': 'rlr_mish'}, recipe=RLR_CNET, two_branch=True),
    # CoRes-SE's notebook: ImageNet backbones, AdamW 3e-4 wd 0.05, cosine to 1e-6 after 3 warm-up epochs (ours do
    # not start at lr 0), Mixup/CutMix alpha 0.2 switch 0.5 with label smoothing 0.1, SWA over the last quarter,
    # batch 32, 50 epochs, 224 px, horizontal flips; classifier dropout 0.5.
    'cores_se': Model(options={'gate': 'se_gate', 'dropout': 'dropout'},
                      recipe={'pretrained': 'imagenet', 'optimizer': 'adamw', 'learning_rate': 3e-4,
                              'weight_decay': 0.05, 'scheduler': 'cosine', 'lr_warmup_epochs': 3,
                              'learning_rate_min': 1e-6, 'mixup_alpha': 0.2, 'cutmix_alpha': 0.2,
                              'mix_switch_prob': 0.5, 'label_smoothing': 0.1, 'swa_start': 0.75, 'batch_size': 32,
                              'epochs': 50, 'image_size': 224, 'grad_clip': 0.0, 'flip_noise': True,
                              'erasing': 'none', 'dropout': 0.5},
                      pretrained=(('resnet', 'ResNet50_Weights.IMAGENET1K_V1'),
                                  ('convnext', 'ConvNeXt_Tiny_Weights.IMAGENET1K_V1')),
                      min_image_size=32,  # ConvNeXt-Tiny's four downsamplings by 4, 2, 2, 2
                      class_activation_maps=False),  # its features are pooled: no map
    # torchvision's ResNet-18, the backbone of SCN, RUL, EAC and NLA: 11,180,103 parameters for 7 classes.
    'resnet18': Model(options={}, recipe=NOISY_FER, noise_recipes=NOISE_RECIPES,
                      pretrained=(('', 'ResNet18_Weights.IMAGENET1K_V1'),), face_checkpoint='resnet18_msceleb.pth'),
    # The field's strongest lightweight FER networks, built as their official code builds them (frontier.py). DDAMFN:
    # its rafdb_train.py (SGD lr 0.01 momentum 0.9 weight decay 1e-4, StepLR(10, 0.1), batch 256, 40 epochs, 112 px,
    # ImageNet normalisation, flips, RandomErasing(0.02-0.25)); loss CE + 0.1 x its attention loss (the network's own
    # term, see frontier.DDAMNet). Its MixedFeatureNet starts from MFN_msceleb.pth there (--pretrained FILE).
    'ddamfn': Model(options={'image_size': 'image_size'}, recipe=DDAMFN, fixed_image_size=112,
                    face_checkpoint='MFN_msceleb.pth',
                    class_activation_maps=False),  # attention, then a 7x7 kernel per position: no CAM (docs)
    # EfficientFace: its main.py (SGD lr 0.1 momentum 0.9 weight decay 1e-4, lr x 0.1 every 30 epochs, batch 128,
    # 100 epochs, 224 px, RandomResizedCrop and flips), from Pretrained_EfficientFace.tar (its MS-Celeb-1M weights),
    # its loss on the soft labels of its label distribution generator (--efficientface_teacher Pretrained_LDG.tar).
    'efficientface': Model(options={'image_size': 'image_size'}, own_flags=('efficientface_teacher',),
                           recipe=EFFICIENTFACE, fixed_image_size=224, face_checkpoint='Pretrained_EfficientFace.tar'),
}


def model_flags():
    """{flag: the models it applies to} for the flags of some models only (train.py refuses them elsewhere)."""
    flags = {}
    for name, model in MODELS.items():
        pretrained = ('pretrained',) if model.pretrained or model.face_checkpoint else ()
        for flag in (*model.options.values(), *model.own_flags, *pretrained):
            if flag != 'image_size':  # every model's input size, not a flag of this one
                flags.setdefault(flag, []).append(name)
    return flags


def model_recipe(model, dataset, noise_method='none'):
    """The flag defaults of a model's paper for a run on `dataset` (with --noise_method: that method's paper's)."""
    settings = {}
    recipe = {**MODELS[model].recipe, **MODELS[model].noise_recipes.get(noise_method, {})}
    for flag, value in recipe.items():
        if isinstance(value, dict):
            if dataset not in value:
                continue
            value = value[dataset]
        settings[flag] = value
    return settings


def image_size_problem(model, image_size):
    """Why network `model` cannot take image_size x image_size inputs (a sentence naming the size it needs), or None."""
    entry = MODELS[model]
    if entry.fixed_image_size and image_size != entry.fixed_image_size:
        return (f'{model} takes {entry.fixed_image_size}x{entry.fixed_image_size} inputs only (its layers are cut for '
                f'that size), got {image_size}; give --image_size {entry.fixed_image_size}')
    if image_size < entry.min_image_size:
        return f'{model} needs at least {entry.min_image_size} pixels, got {image_size}'
    return None


def fitting_image_size(model, image_size):
    """The input size nearest to image_size that network `model` takes (what a shrunken smoke run uses)."""
    return MODELS[model].fixed_image_size or max(image_size, MODELS[model].min_image_size)
