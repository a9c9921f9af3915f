"""Training-time randomness on the device: flip or pixel noise and erasing (paper Sec. 4.1), class samplers, Mixup/CutMix."""
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

AUGMENT_P = 0.5  # released loader: with p=0.5 apply one of {flip, Gaussian noise}
PIXEL_NOISE_STD = math.sqrt(30.0)  # released add_gaussian_noise: variance 30 on the 0..255 scale
ERASE_P, ERASE_SCALE, ERASE_RATIO, ERASE_ATTEMPTS = 0.5, (0.02, 0.25), (0.3, 3.3), 10  # torchvision RandomErasing
MASK_P, MASK_SCALE, MASK_RATIO, MASK_ATTEMPTS = 0.5, (0.04, 0.3), (0.3, 1 / 0.3), 100  # RLR-CNet Table 1, Eqs. 1-4
MIX_STREAM = 1000  # the mixer's entropy key, apart from the loaders' streams (2 per loader, see DeviceLoader)


def stream_entropy(seed, epoch, stream, rank=0):
    """The entropy of one epoch's random stream: (seed, epoch, stream), and under torchrun the process's rank, so that
    each process draws its own augmentation. Rank 0 adds nothing: it draws exactly what a single process draws."""
    return [seed, epoch, stream] + ([rank] if rank else [])


def epoch_seed(seed, epoch, stream, rank=0):
    """A torch generator's seed for the stream of stream_entropy(seed, epoch, stream, rank)."""
    return int(np.random.SeedSequence(stream_entropy(seed, epoch, stream, rank)).generate_state(1, np.uint64)[0] >> 1)


# ---------------------------------------------------------------- flip or pixel noise, and erasing

def _add_pixel_noise(x, generator):
    z = torch.randn(x.shape, generator=generator, device=x.device)
    return z.mul_(PIXEL_NOISE_STD).add_(x).clamp_(0, 255).to(torch.uint8)  # truncates, like the released astype(uint8)


def source_augment(x, generator):
    """Released augmentation of uint8 images: with p=0.5, a horizontal flip or N(0, 30) noise, chosen uniformly."""
    u = torch.rand(x.shape[0], 2, generator=generator, device=x.device)
    chosen = u[:, 0] < AUGMENT_P
    flip, pixel_noise = chosen & (u[:, 1] < 0.5), chosen & (u[:, 1] >= 0.5)
    if x.device.type == 'cpu':
        # On the host, indexing costs no device sync, and noise is drawn for a quarter of the batch only.
        x = x.clone()
        flip, pixel_noise = flip.nonzero().flatten(), pixel_noise.nonzero().flatten()
        x[flip] = x[flip].flip(-1)
        x[pixel_noise] = _add_pixel_noise(x[pixel_noise], generator)
        return x
    # On an accelerator, masks keep the step free of host syncs, and noise for the whole batch is cheap.
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    return torch.where(pixel_noise.view(-1, 1, 1, 1), _add_pixel_noise(x, generator), x)


def random_erasing(x, generator, p=ERASE_P, scale=ERASE_SCALE, ratio=ERASE_RATIO, value=0.0,
                   attempts=ERASE_ATTEMPTS, log_ratio=True, upper_half=False):
    """torchvision's RandomErasing (up to 10 box attempts, first that fits wins) for every sample at once.

    The other arguments give RLR-CNet's upper-half masking (its Eqs. 1-4): 100 attempts, aspect ratio uniform in
    `ratio` (not log-uniform), the box's top edge in the upper half of the image, a fill `value` that may be a
    tensor of x's shape (random pixels)."""
    b, _, height, width = x.shape
    area = height * width
    uniform = lambda lo, hi: torch.empty(b, attempts, device=x.device).uniform_(lo, hi, generator=generator)
    target = area * uniform(*scale)
    aspect = uniform(math.log(ratio[0]), math.log(ratio[1])).exp() if log_ratio else uniform(*ratio)
    h = (target * aspect).sqrt().round()
    w = (target / aspect).sqrt().round()
    fits = (h < height) & (w < width)
    first = fits.int().argmax(1, keepdim=True)  # index of the first attempt that fits
    h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
    u = torch.rand(b, 3, generator=generator, device=x.device)
    apply = (u[:, 0] < p) & fits.any(1)
    last_top = height - h
    if upper_half:
        last_top = last_top.clamp(max=math.ceil(height / 2) - 1)
    top = (u[:, 1] * (last_top + 1)).floor()
    left = (u[:, 2] * (width - w + 1)).floor()
    rows = torch.arange(height, device=x.device)
    cols = torch.arange(width, device=x.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + h)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + w)[:, None])
    mask = in_rows[:, :, None] & in_cols[:, None, :] & apply[:, None, None]
    if isinstance(value, torch.Tensor):
        return torch.where(mask[:, None], value, x)
    return x.masked_fill(mask[:, None], value)


# ---------------------------------------------------------------- training options: augmentation, samplers, mixing

@dataclass(frozen=True)
class Augmentation:
    """A training augmentation: the released flip or Gaussian pixel noise on the source image (flip_or_pixel_noise,
    the flag --flip_noise; not label noise), then erasing:
    'released' (torchvision's RandomErasing, as the released code), 'upper' (RLR-CNet's upper-half masking, the
    box filled with `fill`: uniform random pixels, the mean pixel or black) or 'none'."""
    flip_or_pixel_noise: bool = True
    erasing: str = 'released'
    fill: str = 'random'

    def erase(self, x, generator, normalise):
        if self.erasing == 'released':
            return random_erasing(x, generator)
        if self.erasing == 'none':
            return x
        scale, shift = normalise
        value = {'random': lambda: torch.rand(x.shape, generator=generator, device=x.device) * 255 * scale + shift,
                 'mean': lambda: 0.0, 'black': lambda: shift}[self.fill]()
        return random_erasing(x, generator, MASK_P, MASK_SCALE, MASK_RATIO, value, attempts=MASK_ATTEMPTS,
                              log_ratio=False, upper_half=True)


RELEASED_AUGMENTATION = Augmentation()


def sampling_weights(labels, sampler):
    """Per-image weights of a sampler that draws a class, then one of its images uniformly: 'balanced' draws
    every class equally often, 'reversed' (BBN, RLR-CNet Sec. 3.4) class i with probability proportional to
    N_max / N_i, N_i its number of images; None for 'uniform' (a shuffle)."""
    if sampler == 'uniform':
        return None
    counts = torch.bincount(labels.cpu()).double()
    class_weights = torch.where(counts > 0, counts.max() / counts.clamp(min=1) if sampler == 'reversed' else 1.0, 0.0)
    return (class_weights / counts.clamp(min=1))[labels.cpu()]


def soft_targets(labels, num_classes, smoothing=0.0):
    """One-hot targets with label smoothing: smoothing / K on every class and 1 - smoothing more on the true one
    (cross_entropy(label_smoothing=...)'s convention); each row sums to 1."""
    return F.one_hot(labels, num_classes).float() * (1 - smoothing) + smoothing / num_classes


class BatchMixer:
    """Mixup or CutMix of whole batches on the device (CoRes-SE's recipe: timm's Mixup in batch mode): each image
    is mixed with the one at the mirrored position of its (shuffled) batch, with one lam ~ Beta(alpha, alpha) per
    batch; CutMix pastes a box of area 1 - lam (clipped at the border, lam then recomputed from the box) instead of
    blending. With both alphas above 0, CutMix is chosen with probability switch_prob. Returns the mixed images and
    soft targets (label smoothing included) that sum to 1.

    Its random numbers are drawn on the host from (seed, epoch, the process's rank) alone (set_epoch), so that a
    resumed run mixes exactly as an uninterrupted one, each process under torchrun mixes its own way, and no step
    waits for the device."""

    def __init__(self, num_classes, mixup_alpha, cutmix_alpha, switch_prob=0.5, smoothing=0.0, seed=0):
        assert mixup_alpha > 0 or cutmix_alpha > 0
        self.num_classes, self.mixup_alpha, self.cutmix_alpha = num_classes, mixup_alpha, cutmix_alpha
        self.switch_prob, self.smoothing, self.seed = switch_prob, smoothing, seed
        self.set_epoch(0)

    def set_epoch(self, epoch, rank=0):
        self.rng = np.random.default_rng(stream_entropy(self.seed, epoch, MIX_STREAM, rank))

    def __call__(self, x, labels):
        cutmix = self.cutmix_alpha > 0 and (self.mixup_alpha == 0 or self.rng.random() < self.switch_prob)
        alpha = self.cutmix_alpha if cutmix else self.mixup_alpha
        lam = float(self.rng.beta(alpha, alpha))
        partner = x.flip(0)
        if cutmix:
            height, width = x.shape[-2:]
            cut = math.sqrt(1 - lam)
            half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
            cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
            top, bottom = max(cy - half_h, 0), min(cy + half_h, height)
            left, right = max(cx - half_w, 0), min(cx + half_w, width)
            x = x.clone()
            x[..., top:bottom, left:right] = partner[..., top:bottom, left:right]
            lam = 1 - (bottom - top) * (right - left) / (height * width)
        else:
            x = x * lam + partner * (1 - lam)
        targets = soft_targets(labels, self.num_classes, self.smoothing)
        return x, targets * lam + targets.flip(0) * (1 - lam)
