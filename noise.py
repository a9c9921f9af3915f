"""The training losses (docs/noise.md): cross-entropy as the recipes use it, and the label-noise methods SCN, RUL, EAC
and NLA on any network of train.py that has what the method needs, each loss as its official code computes it (defects
fixed, see docs/noise.md); and the per-epoch AUROC of how well a method's per-sample score separates flipped training
labels from clean ones.

The losses are pure functions of tensors; the networks SCNNetwork and RULNetwork add a method's heads (what
checkpoints hold and trained.py rebuilds with network_with_heads); each --noise_method is one class (METHODS), whose
forward and loss are what training calls and what the tests compare with re-expressions of the official code.
"""
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

import utils
from augment import epoch_seed
from baselines import cumulative_alpha
from errors import UserError

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


def attention_consistency(cams, flipped_cams):
    """EAC's consistency: the MSE between the view's class activation maps and the flipped view's, flipped back.
    EAC resamples with a grid built for its --w/--h (7x7 whatever the map); flipping the columns is exact at any
    size."""
    return F.mse_loss(cams, flipped_cams.flip(-1))


def nla_eps(epoch, epochs, slope=-15.0):
    """NLA's schedule of the 'argmax = label' Gaussian's correlation, 1 - e^(slope t / T), t the 0-based epoch."""
    return 1.0 - math.exp(slope * epoch / epochs)


def gaussian_2d(points, mean, major, minor):
    """The density of N(mean, [[major, minor], [minor, major]]) at points (N x 2), in closed form."""
    # in float64, as with Python numbers: eps may be a tensor (a compiled step's input)
    det = torch.as_tensor(major * major - minor * minor, dtype=torch.float64, device=points.device)
    dx, dy = points[:, 0] - mean[0], points[:, 1] - mean[1]
    quadratic = (major * dx * dx - 2 * minor * dx * dy + major * dy * dy) / det
    return torch.exp(-0.5 * quadratic) / (2 * math.pi * det.sqrt())


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


def nla_loss(logits, flipped_logits, labels, eps, lam_a=0.5, lam_b=0.5, lam_c=0.5, literal=False, **weight_options):
    """NLA: lam_a mean CE + lam_b mean(CE w) + lam_c consistency of the flipped view, eps the epoch's correlation
    factor (nla_eps). Returns (loss, weights)."""
    ce = F.cross_entropy(logits, labels, reduction='none')
    weights = nla_weights(logits, labels, eps, **weight_options)
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


# ==========================================================================================================
# The methods: one class each, behind one interface (CrossEntropy's), in a registry (METHODS)

class CrossEntropy:
    """--noise_method none: cross-entropy, with what a model's recipe adds to it (label smoothing, Mixup/CutMix,
    RLR-CNet's two-branch batches, the auxiliary head's loss, DDAMFN's attention loss; EfficientFace's teacher's soft
    labels take the place of Mixup/CutMix as the `mixer`). The base of the label-noise methods, whose interface
    it defines:
    - heads(network, args): the network a run trains and trained.py rebuilds (SCN and RUL add heads);
    - parameter_groups(model), loader_augmentation(augmentation), unused_parameters(model, image_size);
    - batch(x, y): the training forward's inputs and the loss's targets, drawn before the step (random views and
      pairings come from the epoch's generator, outside a compiled step);
    - forward(model, *inputs): every output the loss needs, in one call (DistributedDataParallel syncs the gradients
      of what one forward computed);
    - loss(outputs, *targets) -> (loss, logits, per-sample score or None): tensors in, tensors out, so that
      --compile compiles it with the rest of the step;
    - after_step(logits, y, score, index): the step's record (and SCN's relabelling);
    - state_dict(), load_state_dict(): what --resume restores (saves_state).

    The record: each step's per-sample score, higher where the label looks flipped (the loss for none and EAC,
    -attention for SCN, -u for RUL, -weight for NLA); once per epoch end_epoch reads back its AUROC against the labels
    that differ from the clean ones (where known), and SCN's relabelling counts. `labels` is the training loader's
    label tensor (SCN relabels it in place); `clean` the clean training labels, else None."""
    name = 'none'
    saves_state = False  # whether the checkpoint holds state_dict()

    def __init__(self, args, labels, clean, augmentation, mixer=None, second_loader=None):
        self.args, self.labels, self.augmentation = args, labels, augmentation
        self.clean = clean.to(labels.device) if clean is not None else None
        self.mixer, self.second_loader, self.second_batches, self.alpha = mixer, second_loader, None, None
        self.epoch, self.generator, self.rank = 0, None, utils.process_rank()
        n, device = len(labels), labels.device
        self.scores = torch.zeros(n, device=device)
        self.seen, self.flipped, self.relabelled = (torch.zeros(n, dtype=torch.bool, device=device) for _ in range(3))

    # ---------------------------------------------------------------- the network and the optimizer

    @staticmethod
    def heads(network, args):
        return network

    def parameter_groups(self, model):
        return model.parameters()

    @staticmethod
    def loader_augmentation(augmentation):
        return augmentation

    @staticmethod
    def unused_parameters(model, image_size):
        """Parameters that training never uses (not counted in the run's parameters): those the network holds only so
        that its official checkpoints load (its unused_parameters(): DDAMFN's)."""
        return kept_parameters(model)

    # ---------------------------------------------------------------- an epoch and its steps

    def set_epoch(self, epoch):
        self.epoch = epoch
        self.generator = epoch_generator(self.args.seed, epoch, self.labels.device, self.rank)
        # The record is the epoch's alone: end_epoch sums it over the processes in place, so a score kept from an
        # earlier epoch would be added again to another process's score of the same sample.
        for t in (self.scores, self.seen, self.flipped, self.relabelled):
            t.zero_()
        if self.mixer is not None:
            self.mixer.set_epoch(epoch, self.rank)
        if self.second_loader is not None:
            self.second_loader.set_epoch(epoch)
            self.second_batches = iter(self.second_loader)
            # a tensor: an input of a compiled step, not a constant it would specialise on anew every epoch
            self.alpha = torch.tensor(cumulative_alpha(epoch, self.args.epochs), device=self.labels.device)

    def batch(self, x, y):
        """The batch; RLR-CNet's two batches with alpha (the network's input and the loss's); or the mixer's batch
        and soft targets (Mixup/CutMix, EfficientFace's label distribution generator)."""
        if self.second_batches is not None:
            x2, y2 = next(self.second_batches)
            return (x, x2, self.alpha), (y, y2, self.alpha)
        if self.mixer is not None:
            x, targets = self.mixer(x, y)
            return (x,), (targets,)
        return (x,), (y,)

    def forward(self, model, *inputs):
        return model(*inputs)

    def loss(self, outputs, *targets):
        """Cross-entropy with the labels (label smoothing included; soft targets hold their own) or RLR-CNet's
        cumulative loss alpha CE(z, y) + (1 - alpha) CE(z, y2); plus what the network's second output adds: the
        auxiliary head's cross-entropy, weighted by --auxiliary_weight, for logits; itself for a 0-dim tensor, a loss
        term the network computed (DDAMFN's weighted attention loss)."""
        logits, second = outputs if isinstance(outputs, tuple) else (outputs, None)
        loss = self.cross_entropy(logits.float(), targets)
        if second is not None and second.dim() == 0:
            loss = loss + second.float()
        elif second is not None:
            loss = loss + self.args.auxiliary_weight * self.cross_entropy(second.float(), targets)
        return loss, logits, None

    def cross_entropy(self, logits, targets):
        smoothing = self.args.label_smoothing
        if len(targets) == 3:
            y, y2, alpha = targets
            return (alpha * F.cross_entropy(logits, y, label_smoothing=smoothing) +
                    (1 - alpha) * F.cross_entropy(logits, y2, label_smoothing=smoothing))
        target, = targets
        return F.cross_entropy(logits, target, label_smoothing=smoothing if target.dim() == 1 else 0.0)

    def after_step(self, logits, y, score, index):
        if score is None:  # cross-entropy's: each sample's loss against its label
            score = F.cross_entropy(logits.float(), y, reduction='none')
        self.scores[index] = score.float()
        self.seen[index] = True
        if self.clean is not None:
            self.flipped[index] = y != self.clean[index]

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
        figures.update(self.relabelling_figures())
        if not figures:
            return {}
        values = torch.stack([f.double() for f in figures.values()]).tolist()  # the epoch's one read-back
        record = {name: (value if name == 'auroc' else int(value)) for name, value in zip(figures, values)}
        if 'auroc' in record and math.isnan(record['auroc']):
            record['auroc'] = None  # no flipped label among the samples seen (or none clean)
        return record

    def relabelling_figures(self):
        return {}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class SCN(CrossEntropy):
    """Self-Cure Network: attention-scaled logits, rank regularisation, and from --scn_relabel_epoch on the
    relabelling of each sample whose predicted class beats its label by more than --scn_margin_2 (with the outputs of
    the step's own forward pass: the new label is used from the sample's next visit)."""
    name = 'scn'
    saves_state = True

    @staticmethod
    def heads(network, args):
        return SCNNetwork(network, feature_shape(network, args.image_size)[0][0])

    def forward(self, model, x):
        return model.outputs(x)

    def loss(self, outputs, y):
        scaled, attention = (o.float() for o in outputs)
        return (scn_loss(scaled, attention, y, self.args.scn_beta, self.args.scn_margin_1), scaled,
                -attention.squeeze(1))

    def after_step(self, logits, y, score, index):
        super().after_step(logits, y, score, index)
        if self.epoch >= self.args.scn_relabel_epoch:
            new = scn_relabel(logits, y, self.args.scn_margin_2)
            self.relabelled[index] |= new != y
            self.labels[index] = new

    def relabelling_figures(self):
        figures = {'relabelled': self.relabelled.sum()}
        if self.clean is not None:
            figures['restored'] = (self.relabelled & (self.labels == self.clean)).sum()
            figures['noisy_labels'] = (self.labels != self.clean).sum()
        return figures

    def state_dict(self):
        return {'labels': self.labels.cpu()}

    def load_state_dict(self, state):
        self.labels.copy_(state['labels'])


class RUL(CrossEntropy):
    """Relative Uncertainty Learning: mean and variance heads on the last feature map, each sample mixed with a
    partner (a permutation drawn for the step) by relative uncertainty, the add-up loss; its classifier learns at
    --rul_fc_lr_factor times the rate."""
    name = 'rul'

    @staticmethod
    def heads(network, args):
        shape, classes = feature_shape(network, args.image_size)
        return RULNetwork(network, shape, classes, args.rul_dim, args.rul_dropout)

    def parameter_groups(self, model):
        fc = list(model.fc.parameters())
        rest = [p for p in model.parameters() if all(p is not q for q in fc)]
        return [{'params': rest}, {'params': fc, 'lr': self.args.learning_rate * self.args.rul_fc_lr_factor}]

    @staticmethod
    def unused_parameters(model, image_size):
        """The network's own head, which RUL replaces by its fc on the mean head: the network's parameters that its
        features do not depend on."""
        network, params = model.network, list(model.network.parameters())
        training = network.training
        network.eval()
        x = torch.zeros(1, 3, image_size, image_size, device=params[0].device)
        grads = torch.autograd.grad(network.forward_features(x).sum(), params, allow_unused=True)
        network.train(training)
        return [p for p, g in zip(params, grads) if g is None]

    def batch(self, x, y):
        permutation = torch.randperm(len(x), generator=self.generator, device=x.device)
        return (x, permutation), (y, permutation)

    def forward(self, model, x, permutation):
        return model.outputs(x, permutation)

    def loss(self, outputs, y, permutation):
        logits, u = (o.float() for o in outputs)
        return add_up_loss(logits, y, permutation), logits, -u


class EAC(CrossEntropy):
    """Erasing Attention Consistency: cross-entropy of an erased view, plus --eac_lambda times the MSE between its
    class activation maps and those of its erased mirror image, flipped back. The mirror image's maps use the head's
    mirrored kernel, so that the two agree exactly for a network that a flip commutes with, whatever its head's kernel
    (a 1x1 map, a linear head after pooling, mirrors to itself; FGW-FER's 3x3 head does not)."""
    name = 'eac'

    @staticmethod
    def loader_augmentation(augmentation):
        # EAC erases each of its two views itself, independently (its dataset transforms the image and its flip
        # separately), so its loader erases nothing.
        return dataclasses.replace(augmentation, erasing='none')

    def batch(self, x, y):
        if getattr(self, 'normalise', None) is None:  # once: the normalisation's constants on the device
            from data_loader import normaliser  # data_loader imports much; only EAC needs this
            self.normalise = normaliser(x.device)
        erase = lambda view: self.augmentation.erase(view, self.generator, self.normalise)
        return (erase(x), erase(x.flip(-1))), (y,)

    def forward(self, model, x, flipped):
        features, flipped_features = model.forward_features(x), model.forward_features(flipped)
        return (model.forward_head(features), model.class_activation_maps(features, detach_weights=True),
                model.class_activation_maps(flipped_features, detach_weights=True, mirrored=True))

    def loss(self, outputs, y):
        logits, cams, flipped_cams = (o.float() for o in outputs)
        ce = F.cross_entropy(logits, y, reduction='none')
        return ce.mean() + self.args.eac_lambda * attention_consistency(cams, flipped_cams), logits, ce


class NLA(CrossEntropy):
    """Noise-aware adaptive weighting: cross-entropy, cross-entropy weighted by a 2-D Gaussian of (P_label,
    P_nearest negative) whose correlation grows with the epoch, and the consistency of the mirror image's
    probabilities."""
    name = 'nla'

    def set_epoch(self, epoch):
        super().set_epoch(epoch)
        # a tensor, as alpha: no recompilation of a compiled step when it changes
        self.eps = torch.tensor(nla_eps(epoch, self.args.epochs, self.args.nla_slope), dtype=torch.float64,
                                device=self.labels.device)

    def batch(self, x, y):
        return (x, x.flip(-1)), (y, self.eps)

    def forward(self, model, x, flipped):
        return model.forward_head(model.forward_features(x)), model.forward_head(model.forward_features(flipped))

    def loss(self, outputs, y, eps):
        logits, flipped_logits = (o.float() for o in outputs)
        a = self.args
        loss, weights = nla_loss(logits, flipped_logits, y, eps, a.nla_lam_a, a.nla_lam_b, a.nla_lam_c,
                                 a.noise_literal, mu_t=tuple(a.nla_mu_t), mu_f=tuple(a.nla_mu_f), t_std=a.nla_t_std,
                                 t_ratio=a.nla_t_ratio, f_std=a.nla_f_std, f_ratio=a.nla_f_ratio,
                                 t_lambda=a.nla_t_lambda)
        return loss, logits, -weights


METHODS = {method.name: method for method in (CrossEntropy, SCN, RUL, EAC, NLA)}


def method_class(name):
    """The class of --noise_method `name`; an unknown name is refused, never trained as another method."""
    if name not in METHODS:
        raise UserError(f'--noise_method {name!r} is not one of {", ".join(METHODS)}')
    return METHODS[name]


def network_with_heads(network, args):
    """The network a run of --noise_method trains and trained.py rebuilds: SCN and RUL add their heads (saved with
    the network's weights, under network.*); the other methods train the network as it is."""
    return method_class(getattr(args, 'noise_method', 'none')).heads(network, args)


def base_network(model):
    """The network inside a method's heads (for its own settings, such as drop-path)."""
    return model.network if isinstance(model, (SCNNetwork, RULNetwork)) else model


def kept_parameters(model):
    """The parameters of the network inside `model` that its forward never uses, kept so that its official
    checkpoints load (a network's unused_parameters(); none for most)."""
    network = base_network(model)
    return list(network.unused_parameters()) if hasattr(network, 'unused_parameters') else []


class TrainingForward(nn.Module):
    """The training forward of a run: in training mode the method's forward, one call computing every output its loss
    needs (DistributedDataParallel wraps this module); in eval mode the model's logits."""

    def __init__(self, model, method):
        super().__init__()
        self.model, self.method = model, method

    def forward(self, *inputs):
        if not self.training:
            return self.model(*inputs)
        return self.method.forward(self.model, *inputs)


def epoch_generator(seed, epoch, device, rank=0):
    """The generator of a method's draws in an epoch, on `device`: each process's own under torchrun (rank 0 draws as
    a single process does)."""
    return torch.Generator(device=device).manual_seed(epoch_seed(seed, epoch, NOISE_STREAM, rank))
