"""The networks train.py trains, built by one factory (timm's convention): create_model(name, num_classes, **options).

`gla_fernet` is the discrete DARTS-family network of a genotype (model.py, paper Sec. 3.4)."""
import inspect

import model
from cli import UserError


def gla_fernet(num_classes, genotype, init_channels=36, layers=8, auxiliary=False, image_size=48):
    """The discrete network of a genotype (GLA-FERNet's released one by default in train.py)."""
    return model.Network(init_channels, num_classes, layers, auxiliary, genotype, image_size=image_size)


MODELS = {'gla_fernet': gla_fernet}


def create_model(name, num_classes, **options):
    """The network `name` for `num_classes` classes; options are its constructor's keyword arguments."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](num_classes, **options)


def uses_genotype(name):
    """Whether model `name` is built from a genotype (a searched cell), so that its genotype tells runs apart."""
    return name in MODELS and 'genotype' in inspect.signature(MODELS[name]).parameters


def model_options(args, genotype=None):
    """create_model's options for a train.py run, from its arguments (args.json): how predict.py and benchmark.py
    rebuild the exact network a run trained."""
    if args.model == 'gla_fernet':
        return dict(genotype=genotype, init_channels=args.init_channels, layers=args.layers,
                    auxiliary=args.auxiliary, image_size=args.image_size)
    raise UserError(f"unknown model {args.model!r}; choose one of {', '.join(MODELS)}")
