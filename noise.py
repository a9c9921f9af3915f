"""Training under label noise (issue 17; docs/noise.md): SCN, RUL, EAC and NLA on any network of train.py that has what
the method needs, each loss as its official code computes it (defects fixed, see docs/noise.md), and the per-epoch
AUROC of how well a method's per-sample score separates flipped training labels from clean ones.

The losses are pure functions of tensors (scn, scn_relabel, rul, eac, nla), so tests compare them with literal
re-expressions of the official code. The networks: SCN and RUL add heads to the network (SCNNetwork, RULNetwork,
what checkpoints hold and predict.py rebuilds with inference_network); TrainingForward gives DistributedDataParallel
one forward call per step with what a method's loss needs; Method holds a run's state besides the network (SCN's
relabelled labels, the random draws, the per-sample scores).
"""
import dataclasses
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import utils

NOISE_STREAM = 3000  # the methods' random draws (RUL's pairs, EAC's erasing), apart from the loaders' streams
RUL_EPS = 2e-5  # RUL's BatchNorm eps (rul.py)


# ==========================================================================================================
# The losses, as pure functions of tensors

def rank_regularisation(attention, beta=0.7, margin_1=0.15):
    """SCN's rank regularisation: max(0, margin_1 - (mean of the int(beta N) largest attention weights - mean of
    the others)); 0 where a group is empty (a batch of one). The sort, not the batch order, forms the groups."""
    n_high = int(attention.shape[0] * beta)
    if not 0 < n_high < attention.shape[0]:
        return attention.new_zeros(())
    ordered = attention.reshape(-1).sort(descending=True).values
    # clamp, not SCN's `if diff > 0`: the same value and gradient, without reading the loss back every step
    return torch.clamp(margin_1 - (ordered[:n_high].mean() - ordered[n_high:].mean()), min=0)


def scn_loss(scaled_logits, attention, labels, beta=0.7, margin_1=0.15):
    return F.cross_entropy(scaled_logits, labels) + rank_regularisation(attention, beta, margin_1)


def scn(features, attention_weight, attention_bias, fc_weight, fc_bias, labels, beta=0.7, margin_1=0.15):
    """SCN on pooled features (N x C): attention a = sigmoid(Linear(C, 1)), logits a * fc(features); CE plus rank
    regularisation. Returns (loss, scaled logits, attention N x 1)."""
    attention = torch.sigmoid(F.linear(features, attention_weight, attention_bias))
    scaled = attention * F.linear(features, fc_weight, fc_bias)
    return scn_loss(scaled, attention, labels, beta, margin_1), scaled, attention


def scn_relabel(scaled_logits, labels, margin_2=0.2):
    """SCN's relabelling: the predicted class where P_max - P_label > margin_2 (P of the attention-scaled logits)."""
    probs = torch.softmax(scaled_logits.detach().float(), dim=1)
    p_max, predicted = probs.max(dim=1)
    p_label = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    return torch.where(p_max - p_label > margin_2, predicted, labels)


def uncertainty_mix(mu, logvar, permutation):
    """RUL's uncertainty-weighted mixup of each sample with its partner permutation[i]: u = mean(exp(logvar)),
    mixed = (u_i mu_i + u_j mu_j) / (u_i + u_j). Returns (mixed, u)."""
    u = logvar.exp().mean(dim=1, keepdim=True)
    u_pair = u[permutation]
    return u / (u + u_pair) * mu + u_pair / (u + u_pair) * mu[permutation], u.squeeze(1)


def add_up_loss(logits, labels, permutation):
    """RUL's loss of the mixed features: 0.5 CE(y_i) + 0.5 CE(y_j)."""
    return 0.5 * F.cross_entropy(logits, labels) + 0.5 * F.cross_entropy(logits, labels[permutation])


def rul(mu, logvar, fc_weight, fc_bias, labels, permutation):
    """RUL on the outputs of its mean and variance heads (N x D): the add-up loss of the classified mixture."""
    mixed, _ = uncertainty_mix(mu, logvar, permutation)
    return add_up_loss(F.linear(mixed, fc_weight, fc_bias), labels, permutation)


def attention_consistency(cams, flipped_cams):
    """EAC's consistency: the MSE between the view's class activation maps and the flipped view's, flipped back.
    EAC resamples with a grid built for its --w/--h (7x7 whatever the map); flipping the columns is exact at any
    size."""
    return F.mse_loss(cams, flipped_cams.flip(-1))


def eac(features, flipped_features, fc_weight, fc_bias, labels, lam=5.0):
    """EAC on the last feature maps (N x C x H x W) of a view and of its flipped view: CE of the pooled-linear logits
    plus lam * MSE of the CAMs (classifier weights detached, no bias)."""
    logits = F.linear(features.mean((2, 3)), fc_weight, fc_bias)
    weight = fc_weight.detach()
    cams = torch.einsum('kc,nchw->nkhw', weight, features)
    flipped = torch.einsum('kc,nchw->nkhw', weight, flipped_features)
    return F.cross_entropy(logits, labels) + lam * attention_consistency(cams, flipped)


def nla_eps(epoch, epochs, slope=-15.0):
    """NLA's schedule of the 'argmax = label' Gaussian's correlation, 1 - e^(slope t / T), t the 0-based epoch."""
    return 1.0 - math.exp(slope * epoch / epochs)


def gaussian_2d(points, mean, major, minor):
    """The density of N(mean, [[major, minor], [minor, major]]) at points (N x 2), in closed form."""
    det = major * major - minor * minor
    dx, dy = points[:, 0] - mean[0], points[:, 1] - mean[1]
    quadratic = (major * dx * dx - 2 * minor * dx * dy + major * dy * dy) / det
    return torch.exp(-0.5 * quadratic) / (2 * math.pi * math.sqrt(det))


def nla_weights(logits, labels, eps, mu_t=(0.5, 0.5), mu_f=(0.30, 0.15), t_std=0.8, t_ratio=2.0, f_std=0.91,
                f_ratio=6.0, t_lambda=1.0):
    """NLA's noise-aware adaptive weight: a 2-D Gaussian density at (P_label, P_nearest negative), one Gaussian where
    the label's probability is the largest (its correlation scaled by eps), another elsewhere. The covariances are
    built from a major std s and a ratio r as NLA's train.py does: diagonal s^2 + (s/r)^2, off-diagonal
    -s^2 + (s/r)^2 (times eps) and s^2 - (s/r)^2. Not detached: NLA's gradient flows through the weight."""
    probs = torch.softmax(logits, dim=1)
    p_label = probs.gather(1, labels.view(-1, 1)).squeeze(1)
    top2 = probs.topk(2, dim=1).values
    label_is_max = top2[:, 0] == p_label
    points = torch.stack([p_label, torch.where(label_is_max, top2[:, 1], top2[:, 0])], dim=1)
    t_major, t_minor = t_std ** 2 + (t_std / t_ratio) ** 2, eps * (-t_std ** 2 + (t_std / t_ratio) ** 2)
    f_major, f_minor = f_std ** 2 + (f_std / f_ratio) ** 2, f_std ** 2 - (f_std / f_ratio) ** 2
    return torch.where(label_is_max, t_lambda * gaussian_2d(points, mu_t, t_major, t_minor),
                       gaussian_2d(points, mu_f, f_major, f_minor))


def nla_consistency(logits, flipped_logits, literal=False):
    """The Jensen-Shannon divergence of the two views' class probabilities, mean over the batch. literal: NLA's
    code, KL(softmax(mean of the logits) || each view's softmax), summed over the batch (its published numbers)."""
    log_p, log_q = F.log_softmax(logits, dim=1), F.log_softmax(flipped_logits, dim=1)
    if literal:
        log_m = F.log_softmax(0.5 * (logits + flipped_logits), dim=1)
        return 0.5 * (F.kl_div(log_p, log_m, reduction='sum', log_target=True) +
                      F.kl_div(log_q, log_m, reduction='sum', log_target=True))
    log_m = torch.logsumexp(torch.stack([log_p, log_q]), dim=0) - math.log(2)
    kl_p = F.kl_div(log_m, log_p, reduction='none', log_target=True).sum(1)
    kl_q = F.kl_div(log_m, log_q, reduction='none', log_target=True).sum(1)
    return (0.5 * (kl_p + kl_q)).mean()


def nla(logits, flipped_logits, labels, epoch, epochs, lam_a=0.5, lam_b=0.5, lam_c=0.5, slope=-15.0, literal=False,
        **weight_options):
    """NLA: lam_a mean CE + lam_b mean(CE w) + lam_c consistency of the flipped view. Returns (loss, weights)."""
    ce = F.cross_entropy(logits, labels, reduction='none')
    weights = nla_weights(logits, labels, nla_eps(epoch, epochs, slope), **weight_options)
    loss = lam_a * ce.mean() + lam_b * (ce * weights).mean() + lam_c * nla_consistency(logits, flipped_logits, literal)
    return loss, weights


# ==========================================================================================================
# AUROC

def auroc(scores, positive):
    """The area under the ROC curve of `scores` for the boolean `positive`: P(a positive scores above a negative),
    ties counted half (the Mann-Whitney statistic from average ranks), exactly, on the scores' device. NaN when
    either class is empty."""
    scores = scores.double()
    values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).double()
    average_rank = ends - (counts.double() - 1) / 2  # 1-based ranks; a tie shares its ranks' mean
    positive = positive.double()
    n_pos = positive.sum()
    n_neg = positive.numel() - n_pos
    rank_sum = (average_rank[inverse] * positive).sum()
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


# ==========================================================================================================
# The networks

def pooled(features):
    return features.mean((2, 3))


class SCNNetwork(nn.Module):
    """A network with SCN's attention head: alpha = sigmoid(Linear(C, 1)) of the pooled features, logits = alpha times
    the network's own head (for a pooled-linear head exactly SCN's alpha * fc(feature)). Inference as SCN's test."""

    def __init__(self, network, channels):
        super().__init__()
        self.network = network
        self.attention = nn.Linear(channels, 1)

    def outputs(self, x):
        features = self.network.forward_features(x)
        attention = torch.sigmoid(self.attention(pooled(features)))
        return attention * self.network.forward_head(features), attention

    def forward_features(self, x):
        return self.network.forward_features(x)

    def forward_head(self, features):
        return torch.sigmoid(self.attention(pooled(features))) * self.network.forward_head(features)

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def uncertainty_head(channels, height, width, dim, dropout):
    """RUL's mean or variance head: BatchNorm (no affine) -> Dropout -> Linear(C H W, dim) -> BatchNorm1d."""
    return nn.Sequential(nn.BatchNorm2d(channels, eps=RUL_EPS, affine=False), nn.Dropout(dropout), nn.Flatten(),
                         nn.Linear(channels * height * width, dim), nn.BatchNorm1d(dim, eps=RUL_EPS))


class RULNetwork(nn.Module):
    """A network with RUL's heads on its last feature map: mu and logvar (uncertainty_head) and a classifier
    Linear(dim, classes) `fc`; the network's own head is not used. Inference: fc(mu), the mean alone."""

    def __init__(self, network, feature_shape, num_classes, dim=64, dropout=0.4):
        super().__init__()
        self.network = network
        self.mu = uncertainty_head(*feature_shape, dim, dropout)
        self.logvar = uncertainty_head(*feature_shape, dim, dropout)
        self.fc = nn.Linear(dim, num_classes)

    def outputs(self, x, permutation):
        """Training: (logits of the mixture of each sample with permutation[i], u)."""
        features = self.network.forward_features(x)
        mixed, u = uncertainty_mix(self.mu(features), self.logvar(features), permutation)
        return self.fc(mixed), u

    def forward_features(self, x):
        return self.network.forward_features(x)

    def forward_head(self, features):
        return self.fc(self.mu(features))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


def feature_shape(network, image_size):
    """((C, H, W) of the network's last feature map at image_size, its number of classes), from one image."""
    training = network.training
    network.eval()
    with torch.no_grad():
        device = next(network.parameters()).device
        features = network.forward_features(torch.zeros(1, 3, image_size, image_size, device=device))
        classes = network.forward_head(features).shape[1]
    network.train(training)
    return tuple(features.shape[1:]), classes


def inference_network(network, args):
    """The network a run of --noise_method trains and predict.py rebuilds: SCN and RUL add their heads (saved with
    the network's weights, under network.*); the other methods train the network as it is."""
    method = getattr(args, 'noise_method', 'none')
    if method not in ('scn', 'rul'):
        return network
    shape, classes = feature_shape(network, args.image_size)
    if method == 'scn':
        return SCNNetwork(network, shape[0])
    return RULNetwork(network, shape, classes, args.rul_dim, args.rul_dropout)


def base_network(model):
    """The network inside a method's heads (for its own settings, such as drop-path)."""
    return model.network if isinstance(model, (SCNNetwork, RULNetwork)) else model


def parameter_groups(model, args):
    """The optimiser's parameter groups: RUL's classifier learns at rul_fc_lr_factor times the rate (its main.py)."""
    if args.noise_method != 'rul':
        return model.parameters()
    fc = list(model.fc.parameters())
    rest = [p for p in model.parameters() if all(p is not q for q in fc)]
    return [{'params': rest}, {'params': fc, 'lr': args.learning_rate * args.rul_fc_lr_factor}]


class TrainingForward(nn.Module):
    """One forward call per training step computing every output the method's loss needs with a parameter
    (DistributedDataParallel syncs the gradients of what its forward computed, and no more): SCN (scaled logits,
    attention); RUL (logits of the mixture, u; `second` the pairing permutation); EAC (logits, CAMs, flipped view's
    CAMs) and NLA (logits, flipped view's logits), `second` the flipped view. In eval mode: the model's logits."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, x, second=None):
        if not self.training:
            return self.model(x)
        if self.method == 'scn':
            return self.model.outputs(x)
        if self.method == 'rul':
            return self.model.outputs(x, second)
        flipped = second
        net = self.model
        features, flipped_features = net.forward_features(x), net.forward_features(flipped)
        if self.method == 'eac':
            return (net.forward_head(features), net.class_activation_maps(features, detach_weights=True),
                    net.class_activation_maps(flipped_features, detach_weights=True))
        return net.forward_head(features), net.forward_head(flipped_features)


# ==========================================================================================================
# A run's method state: labels, random draws, per-sample scores

def epoch_generator(seed, epoch, device):
    entropy = np.random.SeedSequence([seed, epoch, NOISE_STREAM]).generate_state(1, np.uint64)[0] >> 1
    return torch.Generator(device=device).manual_seed(int(entropy))


def loader_augmentation(args, augmentation):
    """The training loader's augmentation: EAC erases each of its two views itself (independently, as its dataset
    transforms the image and its flip separately), so its loader erases nothing; the others take `augmentation`."""
    return dataclasses.replace(augmentation, erasing='none') if args.noise_method == 'eac' else augmentation


class Method:
    """A --noise_method's training state besides the network. `labels` is the training loader's label tensor
    (SCN relabels it in place, and its state_dict saves it, so that --resume goes on with the same labels); `clean`
    the clean training labels where known (for the AUROC and the count of restored labels), else None.

    Each step records a per-sample score, higher where the label looks flipped: the loss (none, EAC), 1 - SCN's
    attention, -RUL's mixing weight u, -NLA's weight. Once per epoch, end_epoch reads back the AUROC of these scores
    against the labels that differ from the clean ones, and SCN's relabelling counts."""

    def __init__(self, args, model, labels, clean, augmentation):
        self.args, self.name, self.model, self.labels = args, args.noise_method, model, labels
        self.clean = clean.to(labels.device) if clean is not None else None
        self.augmentation = augmentation
        self.epoch, self.generator, self.permutation = 0, None, None
        self.normalise = None
        n = len(labels)
        self.scores = torch.zeros(n, device=labels.device)
        self.seen = torch.zeros(n, dtype=torch.bool, device=labels.device)
        self.flipped = torch.zeros(n, dtype=torch.bool, device=labels.device)
        self.relabelled = torch.zeros(n, dtype=torch.bool, device=labels.device)

    def state_dict(self):
        return {'labels': self.labels.cpu()}

    def load_state_dict(self, state):
        self.labels.copy_(state['labels'])

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.generator = epoch_generator(self.args.seed, epoch, self.labels.device)
        for t in (self.seen, self.flipped, self.relabelled):
            t.zero_()

    def record(self, index, y, score):
        self.scores[index] = score.detach().float()
        self.seen[index] = True
        if self.clean is not None:
            self.flipped[index] = y != self.clean[index]

    def training_views(self, x):
        """EAC: the view and its flip, each erased on its own; NLA: the view and its mirror image."""
        flipped = x.flip(-1)
        if self.name != 'eac':
            return x, flipped
        if self.normalise is None:
            from data_loader import normaliser  # data_loader imports much; only EAC needs this
            self.normalise = normaliser(x.device)
        erase = lambda v: self.augmentation.erase(v, self.generator, self.normalise)
        return erase(x), erase(flipped)

    def loss(self, outputs, y, index):
        """(loss, logits for the training metrics, per-sample score) of a step's outputs."""
        a = self.args
        if self.name == 'scn':
            scaled, attention = outputs
            if self.epoch >= a.scn_relabel_epoch:  # SCN relabels with the outputs of the step's forward pass
                new = scn_relabel(scaled, y, a.scn_margin_2)
                self.relabelled[index] |= new != y
                self.labels[index] = new
            return scn_loss(scaled, attention, y, a.scn_beta, a.scn_margin_1), scaled, -attention.squeeze(1)
        if self.name == 'rul':
            logits, u = outputs
            return add_up_loss(logits, y, self.permutation), logits, -u
        if self.name == 'eac':
            logits, cams, flipped_cams = outputs
            ce = F.cross_entropy(logits, y, reduction='none')
            return ce.mean() + a.eac_lambda * attention_consistency(cams, flipped_cams), logits, ce
        logits, flipped_logits = outputs
        loss, weights = nla(logits, flipped_logits, y, self.epoch, a.epochs, a.nla_lam_a, a.nla_lam_b, a.nla_lam_c,
                            a.nla_slope, a.noise_literal, mu_t=tuple(a.nla_mu_t), mu_f=tuple(a.nla_mu_f),
                            t_std=a.nla_t_std, t_ratio=a.nla_t_ratio, f_std=a.nla_f_std, f_ratio=a.nla_f_ratio,
                            t_lambda=a.nla_t_lambda)
        return loss, logits, -weights

    def inputs(self, x):
        """The training forward's inputs: the batch; with RUL's pairing (a permutation drawn for the step); with the
        flipped view (EAC, NLA)."""
        if self.name == 'scn':
            return (x,)
        if self.name == 'rul':
            self.permutation = torch.randperm(len(x), generator=self.generator, device=x.device)
            return x, self.permutation
        return self.training_views(x)

    def step(self, forward_model, update, x, y, index):
        """One weight step of the method; returns detached logits and loss, as train.train_step."""
        update.zero_grad()
        inputs = self.inputs(x)
        with utils.autocast(x.device, update.amp_dtype):
            outputs = forward_model(*inputs)
            loss, logits, score = self.loss(tuple(o.float() for o in outputs), y, index)
        update.apply(loss)
        self.record(index, y, score)
        return logits.detach(), loss.detach()

    def end_epoch(self):
        """This epoch's record, read back once: the AUROC of the scores against the flipped labels (where the clean
        labels are known), and SCN's relabelling: labels changed, changes that restored the clean label, labels
        still differing from the clean ones. Under torchrun the processes' shards are disjoint: sums gather them."""
        changed = torch.where(self.relabelled, self.labels, 0)
        seen = self.seen.float()  # a sample seen by two processes (a class sampler): its scores' mean
        utils.all_reduce_([self.scores, seen, self.flipped, self.relabelled, changed], average=False)
        self.labels.copy_(torch.where(self.relabelled, changed, self.labels))
        figures = {}
        if self.clean is not None:
            visited = seen > 0
            figures['auroc'] = auroc(self.scores[visited] / seen[visited], self.flipped[visited])
        if self.name == 'scn':
            figures['relabelled'] = self.relabelled.sum()
            if self.clean is not None:
                figures['restored'] = (self.relabelled & (self.labels == self.clean)).sum()
                figures['noisy_labels'] = (self.labels != self.clean).sum()
        if not figures:
            return {}
        values = torch.stack([f.double() for f in figures.values()]).tolist()  # the epoch's one read-back
        record = {name: (value if name == 'auroc' else int(value)) for name, value in zip(figures, values)}
        if 'auroc' in record and math.isnan(record['auroc']):
            record['auroc'] = None  # no flipped label among the samples seen (or none clean)
        return record
