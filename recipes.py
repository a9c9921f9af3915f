"""The networks train.py trains and the published training recipe of each hand-designed baseline (BASELINES.md 3.6,
4.4, 5.3), as defaults of train.py's flags; imports no torch, so the scripts parse their flags without it.

A recipe only sets flags that exist anyway (cli.apply_recipe), so each of its items is overridden by giving the
flag. A value given as {dataset: value} applies on those datasets only (input sizes the papers tie to a dataset).
"""

# RLR-CNet, Table 2 and Sec. 4.1.1. Weight decay is not stated (PyTorch's default, 0); no gradient clipping, no
# augmentation besides the upper-half masking; input size not stated: RAF-DB's aligned 100x100, else the default 48.
RLR_CNET = {'optimizer': 'sgd', 'learning_rate': 0.01, 'momentum': 0.9, 'weight_decay': 0.0, 'scheduler': 'step',
            'lr_step_size': 50, 'lr_gamma': 0.5, 'batch_size': 16, 'epochs': 300, 'grad_clip': 0.0,
            'flip_noise': False, 'erasing': 'upper', 'image_size': {'rafdb': 100}}

RECIPES = {
    # FGW-FER Sec. 4.2: AdamW 1e-3 (weight decay not stated: PyTorch's 0.01), ReduceLROnPlateau on the validation
    # loss (PyTorch's factor 0.1 and patience 10), batch 64, 300 epochs, no augmentation. Its 7-1-2 split keeps one
    # part in eight of the non-test images for validation; the dropout rate is not given (0.5 is ours).
    'fgw_fer': {'optimizer': 'adamw', 'learning_rate': 1e-3, 'weight_decay': 0.01, 'scheduler': 'plateau',
                'lr_gamma': 0.1, 'plateau_patience': 10, 'batch_size': 64, 'epochs': 300, 'val_portion': 0.125,
                'grad_clip': 0.0, 'flip_noise': False, 'erasing': 'none', 'dropout': 0.5,
                'image_size': {'rafdb': 100}},
    # RLR-CNet's Table 3 baseline ("ShuffleNet"): its recipe without the masking.
    'shufflenet_v2': {**RLR_CNET, 'erasing': 'none'},
    # Two-branch cumulative learning (uniform and reversed samplers) is part of the network: train.py always
    # trains rlr_cnet that way.
    'rlr_cnet': RLR_CNET,
    # CoRes-SE's notebook: ImageNet backbones, AdamW 3e-4 wd 0.05, cosine to 1e-6 after 3 warm-up epochs (ours do
    # not start at lr 0), Mixup/CutMix alpha 0.2 switch 0.5 with label smoothing 0.1, SWA over the last quarter,
    # batch 32, 50 epochs, 224 px, horizontal flips; classifier dropout 0.5.
    'cores_se': {'pretrained': 'imagenet', 'optimizer': 'adamw', 'learning_rate': 3e-4, 'weight_decay': 0.05,
                 'scheduler': 'cosine', 'lr_warmup_epochs': 3, 'learning_rate_min': 1e-6, 'mixup_alpha': 0.2,
                 'cutmix_alpha': 0.2, 'mix_switch_prob': 0.5, 'label_smoothing': 0.1, 'swa_start': 0.75,
                 'batch_size': 32, 'epochs': 50, 'image_size': 224, 'grad_clip': 0.0, 'flip_noise': True,
                 'erasing': 'none', 'dropout': 0.5},
}

MODELS = ('gla_fernet', *RECIPES)
TWO_BRANCH_MODELS = ('rlr_cnet',)  # trained on a uniform and a reversed batch per step (BBN)
PRETRAINED_MODELS = ('shufflenet_v2', 'cores_se')  # have ImageNet backbones for --pretrained
MIN_IMAGE_SIZE = {'cores_se': 32}  # ConvNeXt-Tiny's four downsamplings by 4, 2, 2, 2


def model_recipe(model, dataset):
    """The flag defaults of a baseline's paper for a run on `dataset`."""
    settings = {}
    for flag, value in RECIPES[model].items():
        if isinstance(value, dict):
            if dataset not in value:
                continue
            value = value[dataset]
        settings[flag] = value
    return settings
