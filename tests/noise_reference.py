"""Literal references of the losses of four noise-robust FER training methods, written out as plain torch functions
from a reading of each method's official training code, as oracles for the project's implementations.

Each function takes the tensors the loss is built from (the network's outputs and the head's weights), so a test can
compare gradients as well as values. Where the official code has a defect, the default (``literal=False``) computes
the fixed version and ``literal=True`` computes what the official code computes (its published figures were made
with the literal behaviour). Official code read at these commits:

- SCN  kaiwang960112/Self-Cure-Network               9f4c3ad80ff29c7eaaac3d1b283a456d3f23a587  src/train.py
- RUL  zyh-uaiaaaa/Relative-Uncertainty-Learning      63b73f29da4c0f2e3c7776ac5141ff0a44b6120f  src/rul.py, main.py,
                                                                                               utils.py
- EAC  zyh-uaiaaaa/Erasing-Attention-Consistency      61efdfd373b6d2fe7c6d31712427aa263f72900d  src/main.py, model.py,
                                                                                               loss.py, utils.py
- NLA  jungyu0413/NLA                                  b86f31f57c18f81af75a0791718a1556368582c1  src/loss.py, train.py,
                                                                                               main_rafdb.py
"""
import math

import torch
import torch.nn.functional as F


# ----------------------------------------------------------------------------------------------------------- SCN
def scn(features, attention_weight, attention_bias, fc_weight, fc_bias, labels, beta=0.7, margin_1=0.15, literal=False):
    """Self-Cure Network's training loss on pooled features (N x 512, no dropout: the official default drop_rate 0).

    attention a_i = sigmoid(w_a . f_i + b_a) (N x 1); scaled logits z_i = a_i * (W f_i + b).
    loss = CE(z, y) (mean over the batch) + max(0, margin_1 - (mean of the floor(beta N) largest a
                                                               - mean of the other N - floor(beta N))).
    When one of the two groups is empty (beta N < 1 or beta N = N) the official means are NaN and its `if diff > 0`
    test drops the term: the rank term is 0. A batch of one is the exception in the official code: squeezing the
    N x 1 attention gives a 0-d tensor, whose top-k returns the sample itself for both groups, so the term is the
    constant margin_1 (no gradient). literal=True reproduces that; by default a batch of one has no rank term.
    Returns (loss, scaled_logits, attention)."""
    attention = torch.sigmoid(features @ attention_weight.t() + attention_bias)
    scaled_logits = attention * (features @ fc_weight.t() + fc_bias)
    loss = F.cross_entropy(scaled_logits, labels)
    n = attention.shape[0]
    n_high = int(n * beta)
    if 0 < n_high < n:
        ordered = attention.reshape(-1).sort(descending=True).values
        gap = ordered[:n_high].mean() - ordered[n_high:].mean()
        loss = loss + torch.clamp(margin_1 - gap, min=0)
    elif literal and n == 1:
        loss = loss + margin_1
    return loss, scaled_logits, attention


def scn_relabel(scaled_logits, labels, margin_2=0.2):
    """SCN's relabelling (from relabel_epoch on, every batch, after the step): with P = softmax(scaled logits), a
    sample takes the arg max class when P_max - P_label > margin_2, otherwise keeps its label. The probabilities are
    those of the attention-scaled logits (a low attention flattens P, so such a sample is relabelled less)."""
    probs = torch.softmax(scaled_logits.detach(), dim=1)
    p_max, predicted = probs.max(dim=1)
    p_label = probs.gather(1, labels.view(-1, 1))[:, 0]
    return torch.where(p_max - p_label > margin_2, predicted, labels)


# ----------------------------------------------------------------------------------------------------------- RUL
def rul(mu, logvar, fc_weight, fc_bias, labels, permutation):
    """Relative Uncertainty Learning's training loss on the outputs of its two heads (N x D each).

    u_i = mean_d exp(logvar_i,d) (one number per sample); sample i is paired with j = permutation[i];
    mixed_i = u_i / (u_i + u_j) * mu_i + u_j / (u_i + u_j) * mu_j; logits = W mixed + b;
    loss = 0.5 CE(logits, y) + 0.5 CE(logits, y[permutation]) (each CE a mean over the batch).
    A sample paired with itself (permutation[i] = i) gives mixed_i = mu_i. The official permutation is
    torch.randperm(N) drawn inside the forward pass. At test time the logits are W mu + b."""
    u = logvar.exp().mean(dim=1, keepdim=True)
    u_pair = u[permutation]
    mixed = u / (u + u_pair) * mu + u_pair / (u + u_pair) * mu[permutation]
    logits = mixed @ fc_weight.t() + fc_bias
    return 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[permutation])


# ----------------------------------------------------------------------------------------------------------- EAC
def flip_grid(height, width, dtype=torch.float32, device=None):
    """The sampling grid of EAC's flip-back (N=1 x H x W x 2, (x, y) in [-1, 1]): the pixel (row, col) reads the
    point (-(2 col / (W - 1) - 1), 2 row / (H - 1) - 1), that is the mirrored column, for grid_sample with
    align_corners=True. A width or height of 1 divides 0 by 0: NaN coordinates, which grid_sample's border padding
    (CPU, torch 2.x) reads as the single pixel, so the flip-back is still the identity there."""
    cols = torch.arange(width, dtype=dtype, device=device).view(1, -1).expand(height, -1)
    rows = torch.arange(height, dtype=dtype, device=device).view(-1, 1).expand(-1, width)
    x = -(2 * cols / (width - 1) - 1)
    y = 2 * rows / (height - 1) - 1
    return torch.stack([x, y], dim=-1).unsqueeze(0)


def class_activation_maps(features, fc_weight):
    """CAM_k = sum_c W[k, c] F_c, with the fc weights detached (no gradient reaches the classifier through the
    CAMs) and no bias. features N x C x H x W -> N x K x H x W."""
    return torch.einsum('kc,nchw->nkhw', fc_weight.detach(), features)


def eac(features, flipped_features, fc_weight, fc_bias, labels, lam=5.0, literal=False, grid_size=None):
    """Erasing Attention Consistency's training loss on the last feature maps of a view and of its horizontally
    flipped view (N x C x H x W each).

    logits = W GAP(features) + b (the flipped view's logits are not used); loss = CE(logits, y) (mean)
    + lam * mean over N x K x H x W of (CAM(features) - flip_back(CAM(flipped_features)))^2.

    flip_back: literal=False mirrors the columns (torch.flip, exact for any map size). literal=True resamples with
    grid_sample (bilinear, border padding, align_corners=True) on the official grid, whose size is the command
    line's --w/--h (7 x 7 by default) whatever the map's size: pass grid_size=(h, w) to reproduce another setting.
    On a map of the grid's size the two agree up to float rounding of the sampling points (at most a few 1e-7 times
    the map's values); on another size (2 or more) the literal version resamples to the grid's size and the MSE
    fails to broadcast, as the official code does (raised here with a message). On 1 x 1 maps the official code
    broadcasts the resampled 7 x 7 copies of the single pixel against it, which gives the identity's MSE: computed
    so here."""
    logits = features.mean(dim=(2, 3)) @ fc_weight.t() + fc_bias
    cam = class_activation_maps(features, fc_weight)
    cam_flipped = class_activation_maps(flipped_features, fc_weight)
    if literal and tuple(cam.shape[2:]) != (1, 1):
        h, w = grid_size if grid_size is not None else (7, 7)
        if (h, w) != tuple(cam.shape[2:]):
            raise RuntimeError(f'the official {h} x {w} flip grid does not fit {tuple(cam.shape[2:])} maps: its MSE '
                               'fails to broadcast')
        grid = flip_grid(h, w, dtype=cam_flipped.dtype, device=cam_flipped.device).expand(cam.shape[0], -1, -1, -1)
        back = F.grid_sample(cam_flipped, grid, mode='bilinear', padding_mode='border', align_corners=True)
    else:
        back = torch.flip(cam_flipped, dims=[3])
    return F.cross_entropy(logits, labels) + lam * F.mse_loss(cam, back)


# ----------------------------------------------------------------------------------------------------------- NLA
def nla_eps(epoch, epochs, slope=-15.0, schedule=True):
    """NLA's schedule of the correlation of the 'argmax = label' Gaussian: 1 - exp(slope * epoch / epochs), with
    `epoch` the 0-based epoch index (0 .. epochs - 1); it is set once per epoch, not per step, so the first epoch
    has eps = 0 and the last 1 - exp(slope (epochs - 1) / epochs). schedule=False gives 1 (official --sch_bool)."""
    return 1.0 - math.exp(slope * epoch / epochs) if schedule else 1.0


def nla_covariances(eps, t_std_major=0.8, t_std_ratio=2.0, f_std_major=0.91, f_std_ratio=6.0):
    """The two 2 x 2 covariances of NLA's weight, as train.py builds them from main_rafdb.py's defaults (these, not
    NAW.__init__'s keyword defaults, are what runs): with s the major std and r the ratio,
    'argmax = label': diagonal s^2 + (s/r)^2, off-diagonal eps * (-s^2 + (s/r)^2)   (0.80 and -0.48 eps);
    'argmax != label': diagonal s^2 + (s/r)^2, off-diagonal s^2 - (s/r)^2 (no eps) (0.851103 and 0.805097)."""
    t_major = t_std_major ** 2 + (t_std_major / t_std_ratio) ** 2
    t_minor = eps * (-t_std_major ** 2 + (t_std_major / t_std_ratio) ** 2)
    f_major = f_std_major ** 2 + (f_std_major / f_std_ratio) ** 2
    f_minor = f_std_major ** 2 - (f_std_major / f_std_ratio) ** 2
    return [[t_major, t_minor], [t_minor, t_major]], [[f_major, f_minor], [f_minor, f_major]]


def gaussian_density_2d(points, mean, cov):
    """The bivariate normal density at points (N x 2) for a mean (2) and covariance (2 x 2, as numbers)."""
    (a, b), (c, d) = cov
    det = a * d - b * c
    dx = points[:, 0] - mean[0]
    dy = points[:, 1] - mean[1]
    quad = (d * dx * dx - (b + c) * dx * dy + a * dy * dy) / det
    return torch.exp(-0.5 * quad) / (2 * math.pi * math.sqrt(det))


def nla_weights(logits, labels, eps, mu_t=(0.5, 0.5), mu_f=(0.30, 0.15), t_lambda=1.0, detach=False, **stds):
    """NLA's noise-aware adaptive weight of each sample: with P = softmax(logits), P_GT the label's probability and
    P_NN the nearest negative's (the second largest probability when the largest is the label's, else the largest),
    the weight is t_lambda * N((P_GT, P_NN); mu_t, cov_t(eps)) when the largest probability equals P_GT, else
    N((P_GT, P_NN); mu_f, cov_f). The official weight is not detached (gradients flow through it): detach=True
    detaches it."""
    probs = torch.softmax(logits, dim=1)
    p_gt = probs.gather(1, labels.view(-1, 1))[:, 0]
    top2 = probs.topk(2, dim=1).values
    label_is_max = top2[:, 0] == p_gt
    p_nn = torch.where(label_is_max, top2[:, 1], top2[:, 0])
    points = torch.stack([p_gt, p_nn], dim=1)
    cov_t, cov_f = nla_covariances(eps, **stds)
    weights = torch.where(label_is_max, t_lambda * gaussian_density_2d(points, mu_t, cov_t),
                          gaussian_density_2d(points, mu_f, cov_f))
    return weights.detach() if detach else weights


def nla_jsd(logits, flipped_logits, literal=False):
    """NLA's consistency term between the two views.
    literal=True, as the official code computes it: M = softmax((z1 + z2) / 2) (the mean of the logits, not of the
    probabilities), term = 0.5 * (KL(M || P1) + KL(M || P2)) summed over the batch (reduction 'sum': it grows with
    the batch size), P = softmax(z).
    literal=False, the Jensen-Shannon divergence: M = (P1 + P2) / 2, 0.5 KL(P1 || M) + 0.5 KL(P2 || M), mean over
    the batch."""
    if literal:
        m = torch.softmax(0.5 * (logits + flipped_logits), dim=1)
        log_m = torch.log_softmax(0.5 * (logits + flipped_logits), dim=1)
        kl_p = (m * (log_m - torch.log_softmax(logits, dim=1))).sum()
        kl_q = (m * (log_m - torch.log_softmax(flipped_logits, dim=1))).sum()
        return 0.5 * (kl_p + kl_q)
    log_p = torch.log_softmax(logits, dim=1)
    log_q = torch.log_softmax(flipped_logits, dim=1)
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2)
    kl_p = (log_p.exp() * (log_p - log_m)).sum(dim=1)
    kl_q = (log_q.exp() * (log_q - log_m)).sum(dim=1)
    return (0.5 * (kl_p + kl_q)).mean()


def nla(logits, flipped_logits, labels, epoch, epochs, lam_a=0.5, lam_b=0.5, lam_c=0.5, slope=-15.0, schedule=True,
        literal=False, detach_weight=False, **weight_options):
    """NLA's training loss: lam_a * mean CE + lam_b * mean(CE * w) + lam_c * consistency(logits, flipped_logits),
    w = nla_weights(logits, labels, nla_eps(epoch, epochs)), epoch 0-based. The defaults are main_rafdb.py's
    (lam 0.5 / 0.5 / 0.5, slope -15, means (0.5, 0.5) and (0.30, 0.15), stds 0.8 ratio 2 and 0.91 ratio 6).
    literal selects the consistency term (see nla_jsd); at batch 32 the literal sum weighs the term 32 times the
    per-sample mean (lam_c = 16 with literal=False matches its scale, not its form). Returns (loss, weights)."""
    eps = nla_eps(epoch, epochs, slope, schedule)
    ce = F.cross_entropy(logits, labels, reduction='none')
    weights = nla_weights(logits, labels, eps, detach=detach_weight, **weight_options)
    loss = lam_a * ce.mean() + lam_b * (ce * weights).mean() + lam_c * nla_jsd(logits, flipped_logits, literal)
    return loss, weights
