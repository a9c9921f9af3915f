"""Shared helpers: user-facing errors, metrics, checkpoints, experiment folders, model statistics."""


class UserError(Exception):
    """A problem the user can fix (bad path, malformed file, bad flag); scripts print it without a traceback."""


import torch


def drop_path(x, drop_prob):
    """Zero whole samples of a branch with probability drop_prob and rescale the rest (DARTS drop-path)."""
    keep_prob = 1. - drop_prob
    mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


def count_parameters(model, exclude=()):
    """Number of parameters, leaving out the given ones (e.g. architecture parameters)."""
    excluded = {id(p) for p in exclude}
    return sum(p.numel() for p in model.parameters() if id(p) not in excluded)
