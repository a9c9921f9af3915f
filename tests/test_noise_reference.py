"""The literal references of SCN, RUL, EAC and NLA (tests/noise_reference.py) against figures of the official code.

OFFICIAL holds what the official loss code computed, once, on the seed-0 inputs below (float32, CPU, torch 2.14.1;
the official functions run unchanged but for the device, which they hard-code to CUDA): the loss, the number of
labels SCN's relabelling changes (margin_2 0.2), NLA's weights summed, and sums of the absolute gradients. The
reference reproduced the official code on seeds 0-4 and batches of 1, 2, 3, 5, 7, 31, 32, 33 and 64 within 5e-7 on
the losses and 1.5e-7 on every gradient (the inputs and the heads' weights); the official code is not needed here.
Commits read: SCN 9f4c3ad8, RUL 63b73f29, EAC 61efdfd3, NLA b86f31f5 (full hashes in noise_reference.py).

Defects of the official code, and the reference's flag for the literal behaviour:
- all four: the device is hard-coded (`.cuda()`, `torch.device('cuda:N')`, NAW's `.to('cuda')`).
- SCN, a batch of one: the squeezed attention is 0-d, its top-k returns the sample for both groups, and the rank
  term is the constant margin_1 (no gradient). Fixed: no rank term (scn(..., literal=True) for the official value).
  RAF-DB's 12271 training images in batches of 64 leave 47: no published figure depends on it.
- SCN: relabelled labels are written into the dataset in the main process; with the official num_workers=4 (workers
  made afresh each epoch) they take effect from the next epoch, with num_workers=0 from the next batch.
- SCN, outside the loss: --pretrained loads nothing (the checkpoint's names start with 'module.', Res18Feature's with
  'features.'; load_state_dict(strict=False) skips them all and the "Loaded params num" count is always the total,
  SCN issues 49, 51, 81), so it trains from torchvision's ImageNet weights; and drop_rate > 0 would also drop at test
  time (a fresh nn.Dropout in forward is always in training mode; the default is 0).
- EAC, outside the loss: with a noisy label file the flipped view is built from the raw image with its own
  RandomErasing (and without the Gaussian noise of the first view); with the clean file it is the mirror of the
  erased first view. The noisy figures come from the independent erasures.
- EAC: the flip-back grid is built for --w x --h (7 x 7) whatever the map's size: any other map size of 2 or more
  fails in the MSE (its ResNet-50 AvgPool2d(7) already ties it to 224-px inputs; its CAM view hard-codes 7 classes
  and 2048 channels). grid_sample on that grid equals torch.flip up to float rounding of the sampling points.
  Fixed: torch.flip (eac(..., literal=True) resamples as the official code does).
- NLA, consistency term: the mixture is softmax of the mean of the two views' logits (not the mean of the
  probabilities), the divergences are KL(M || P) (not KL(P || M)), and the reduction is a sum over the batch, so
  the term grows with the batch size (batch 32 weighs it 32 times a per-sample mean). Fixed: the Jensen-Shannon
  divergence of the two softmaxes, mean over the batch (nla(..., literal=True) for the official term). The
  published NLA figures depend on the literal term.
- NLA, a batch of one: P_GT is squeezed to 0-d and stacking it with P_NN raises. Fixed here (no squeeze).
- NLA: NAW.__init__'s keyword defaults (t_minor -0.50, f 0.85 / 0.80) are not what runs: train.py passes the
  values built from main_rafdb.py's stds (t 0.80 / -0.48 eps, f 0.851103 / 0.805097).
"""
import math

import pytest
import torch
import torch.nn.functional as F

import noise_reference as R


def generator(seed):
    return torch.Generator().manual_seed(seed)


def scn_inputs(seed, n, dim=512, classes=7):
    g = generator(seed)
    features = torch.rand(n, dim, generator=g) * 2
    attention_weight = torch.randn(1, dim, generator=g) * 0.01
    attention_bias = torch.randn(1, generator=g) * 0.1
    fc_weight = torch.randn(classes, dim, generator=g) * 0.05
    fc_bias = torch.randn(classes, generator=g) * 0.1
    labels = torch.randint(0, classes, (n,), generator=g)
    return features, attention_weight, attention_bias, fc_weight, fc_bias, labels


def rul_inputs(seed, n, dim=64, classes=7):
    """The permutation is the one the official mixup_data draws after torch.manual_seed(1234 + seed)."""
    g = generator(seed)
    mu = torch.randn(n, dim, generator=g)
    logvar = torch.randn(n, dim, generator=g) * 0.5
    fc_weight = torch.randn(classes, dim, generator=g) * 0.1
    fc_bias = torch.randn(classes, generator=g) * 0.1
    labels = torch.randint(0, classes, (n,), generator=g)
    permutation = torch.randperm(n, generator=generator(1234 + seed))
    return mu, logvar, fc_weight, fc_bias, labels, permutation


def eac_inputs(seed, n, channels=64, size=7, classes=7):
    g = generator(seed)
    features = torch.relu(torch.randn(n, channels, size, size, generator=g))
    flipped = torch.relu(torch.flip(features, dims=[3]) + 0.3 * torch.randn(n, channels, size, size, generator=g))
    fc_weight = torch.randn(classes, channels, generator=g) * 0.05
    fc_bias = torch.randn(classes, generator=g) * 0.1
    labels = torch.randint(0, classes, (n,), generator=g)
    return features, flipped, fc_weight, fc_bias, labels


def nla_inputs(seed, n, classes=7):
    g = generator(seed)
    logits = torch.randn(n, classes, generator=g) * 2
    flipped = logits + 0.5 * torch.randn(n, classes, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return logits, flipped, labels


def leaves(*tensors):
    return [t.clone().requires_grad_() for t in tensors]


def abs_sum(t):
    return float(t.abs().sum())


# The official code's figures on the seed-0 inputs (SCN with beta 0.7 and margin_1 m1; EAC with lam 5, 64 channels,
# 7 x 7 maps; NLA over 60 epochs, `epoch` 0-based as the official loop passes it).
OFFICIAL = {
    'scn n=1 m1=0.15': {
        'loss': 2.146594762802124, 'changed': 0, 'grad_features_abs_sum': 9.345222473144531,
        'grad_attention_weight_abs_sum': 32.689353942871094},
    'scn n=1 m1=0.07': {
        'loss': 2.0665946006774902, 'changed': 0, 'grad_features_abs_sum': 9.345222473144531,
        'grad_attention_weight_abs_sum': 32.689353942871094},
    'scn n=1 m1=0.0': {
        'loss': 1.9965946674346924, 'changed': 0, 'grad_features_abs_sum': 9.345222473144531,
        'grad_attention_weight_abs_sum': 32.689353942871094},
    'scn n=7 m1=0.15': {
        'loss': 2.119271755218506, 'changed': 0, 'grad_features_abs_sum': 9.172891616821289,
        'grad_attention_weight_abs_sum': 56.062591552734375},
    'scn n=7 m1=0.07': {
        'loss': 2.039271593093872, 'changed': 0, 'grad_features_abs_sum': 9.172891616821289,
        'grad_attention_weight_abs_sum': 56.062591552734375},
    'scn n=7 m1=0.0': {
        'loss': 2.0107738971710205, 'changed': 0, 'grad_features_abs_sum': 8.969223976135254,
        'grad_attention_weight_abs_sum': 40.08373260498047},
    'scn n=33 m1=0.15': {
        'loss': 2.2624406814575195, 'changed': 13, 'grad_features_abs_sum': 9.433609962463379,
        'grad_attention_weight_abs_sum': 105.02641296386719},
    'scn n=33 m1=0.07': {
        'loss': 2.1824405193328857, 'changed': 13, 'grad_features_abs_sum': 9.433609962463379,
        'grad_attention_weight_abs_sum': 105.02641296386719},
    'scn n=33 m1=0.0': {
        'loss': 2.169170379638672, 'changed': 13, 'grad_features_abs_sum': 9.2071533203125,
        'grad_attention_weight_abs_sum': 107.85465240478516},
    'scn n=64 m1=0.15': {
        'loss': 2.092116117477417, 'changed': 16, 'grad_features_abs_sum': 8.87028980255127,
        'grad_attention_weight_abs_sum': 48.79059982299805},
    'scn n=64 m1=0.07': {
        'loss': 2.0121161937713623, 'changed': 16, 'grad_features_abs_sum': 8.87028980255127,
        'grad_attention_weight_abs_sum': 48.79059982299805},
    'scn n=64 m1=0.0': {
        'loss': 1.9927239418029785, 'changed': 16, 'grad_features_abs_sum': 8.607681274414062,
        'grad_attention_weight_abs_sum': 50.02766799926758},
    'rul n=7': {
        'loss': 2.1148266792297363, 'grad_mu_abs_sum': 3.234109401702881, 'grad_logvar_abs_sum': 0.2237451672554016},
    'rul n=33': {
        'loss': 2.1589670181274414, 'grad_mu_abs_sum': 3.078421115875244, 'grad_logvar_abs_sum': 0.24438925087451935},
    'rul n=64': {
        'loss': 2.118515968322754, 'grad_mu_abs_sum': 2.9739956855773926, 'grad_logvar_abs_sum': 0.23209013044834137},
    'eac n=7': {
        'loss': 2.0180459022521973, 'grad_features_abs_sum': 2.5364112854003906,
        'grad_flipped_abs_sum': 0.9646125435829163, 'grad_fc_weight_abs_sum': 23.232988357543945},
    'eac n=33': {
        'loss': 2.0386054515838623, 'grad_features_abs_sum': 2.5499117374420166,
        'grad_flipped_abs_sum': 0.9604498147964478, 'grad_fc_weight_abs_sum': 13.497506141662598},
    'nla n=7 epoch=0': {
        'loss': 1.4031336307525635, 'weights_sum': 1.0295261144638062, 'grad_logits_abs_sum': 0.8822144865989685},
    'nla n=7 epoch=1': {
        'loss': 1.4031935930252075, 'weights_sum': 1.0344911813735962, 'grad_logits_abs_sum': 0.8822490572929382},
    'nla n=7 epoch=30': {
        'loss': 1.403802514076233, 'weights_sum': 1.084928274154663, 'grad_logits_abs_sum': 0.8826727867126465},
    'nla n=7 epoch=59': {
        'loss': 1.4038033485412598, 'weights_sum': 1.085001826286316, 'grad_logits_abs_sum': 0.8826733231544495},
    'nla n=32 epoch=0': {
        'loss': 2.002570152282715, 'weights_sum': 4.782962322235107, 'grad_logits_abs_sum': 1.4767366647720337},
    'nla n=32 epoch=1': {
        'loss': 2.002636671066284, 'weights_sum': 4.796656608581543, 'grad_logits_abs_sum': 1.4767247438430786},
    'nla n=32 epoch=30': {
        'loss': 2.004384994506836, 'weights_sum': 5.012477397918701, 'grad_logits_abs_sum': 1.4771380424499512},
    'nla n=32 epoch=59': {
        'loss': 2.004387617111206, 'weights_sum': 5.012802600860596, 'grad_logits_abs_sum': 1.4771387577056885},
    'nla n=33 epoch=0': {
        'loss': 1.8149887323379517, 'weights_sum': 4.7962517738342285, 'grad_logits_abs_sum': 1.5237103700637817},
    'nla n=33 epoch=1': {
        'loss': 1.8150627613067627, 'weights_sum': 4.817898273468018, 'grad_logits_abs_sum': 1.5237147808074951},
    'nla n=33 epoch=30': {
        'loss': 1.8163923025131226, 'weights_sum': 5.0804877281188965, 'grad_logits_abs_sum': 1.5243964195251465},
    'nla n=33 epoch=59': {
        'loss': 1.816394329071045, 'weights_sum': 5.080870628356934, 'grad_logits_abs_sum': 1.5243972539901733},
}


def close(value, expected):
    return value == pytest.approx(expected, rel=1e-6, abs=1e-6)


@pytest.mark.parametrize('key', [k for k in OFFICIAL if k.startswith('scn')])
def test_scn_reproduces_the_official_figures(key):
    n, margin_1 = int(key.split()[1][2:]), float(key.split()[2][3:])
    features, aw, ab, fw, fb, labels = scn_inputs(0, n)
    features, aw, ab, fw, fb = leaves(features, aw, ab, fw, fb)
    loss, scaled_logits, _ = R.scn(features, aw, ab, fw, fb, labels, margin_1=margin_1, literal=True)
    loss.backward()
    expected = OFFICIAL[key]
    assert close(float(loss.detach()), expected['loss'])
    assert int((R.scn_relabel(scaled_logits, labels, 0.2) != labels).sum()) == expected['changed']
    assert close(abs_sum(features.grad), expected['grad_features_abs_sum'])
    assert close(abs_sum(aw.grad), expected['grad_attention_weight_abs_sum'])


@pytest.mark.parametrize('key', [k for k in OFFICIAL if k.startswith('rul')])
def test_rul_reproduces_the_official_figures(key):
    mu, logvar, fw, fb, labels, permutation = rul_inputs(0, int(key.split()[1][2:]))
    mu, logvar, fw, fb = leaves(mu, logvar, fw, fb)
    loss = R.rul(mu, logvar, fw, fb, labels, permutation)
    loss.backward()
    expected = OFFICIAL[key]
    assert close(float(loss.detach()), expected['loss'])
    assert close(abs_sum(mu.grad), expected['grad_mu_abs_sum'])
    assert close(abs_sum(logvar.grad), expected['grad_logvar_abs_sum'])


@pytest.mark.parametrize('literal', [True, False])
@pytest.mark.parametrize('key', [k for k in OFFICIAL if k.startswith('eac')])
def test_eac_reproduces_the_official_figures(key, literal):
    """Literal (grid_sample) and fixed (torch.flip) flip-backs both reproduce the official figures on 7 x 7 maps."""
    features, flipped, fw, fb, labels = eac_inputs(0, int(key.split()[1][2:]))
    features, flipped, fw, fb = leaves(features, flipped, fw, fb)
    loss = R.eac(features, flipped, fw, fb, labels, literal=literal)
    loss.backward()
    expected = OFFICIAL[key]
    assert close(float(loss.detach()), expected['loss'])
    assert close(abs_sum(features.grad), expected['grad_features_abs_sum'])
    assert close(abs_sum(flipped.grad), expected['grad_flipped_abs_sum'])
    assert close(abs_sum(fw.grad), expected['grad_fc_weight_abs_sum'])


@pytest.mark.parametrize('key', [k for k in OFFICIAL if k.startswith('nla')])
def test_nla_reproduces_the_official_figures(key):
    n, epoch = int(key.split()[1][2:]), int(key.split()[2][6:])
    logits, flipped, labels = nla_inputs(0, n)
    logits, flipped = leaves(logits, flipped)
    loss, weights = R.nla(logits, flipped, labels, epoch, 60, literal=True)
    loss.backward()
    expected = OFFICIAL[key]
    assert close(float(loss.detach()), expected['loss'])
    assert close(float(weights.detach().sum()), expected['weights_sum'])
    assert close(abs_sum(logits.grad), expected['grad_logits_abs_sum'])


# ----------------------------------------------------------------------- the fixed and the literal behaviours
def test_scn_fixed_and_literal_differ_only_on_a_batch_of_one():
    for n in (2, 3, 33):
        inputs = scn_inputs(1, n)
        assert torch.equal(R.scn(*inputs)[0], R.scn(*inputs, literal=True)[0])
    inputs = scn_inputs(1, 1)
    fixed, scaled_logits, _ = R.scn(*inputs)
    assert torch.allclose(fixed, F.cross_entropy(scaled_logits, inputs[-1]))
    assert torch.allclose(R.scn(*inputs, literal=True)[0], fixed + 0.15)


def test_scn_rank_term_is_a_hinge_on_the_group_means():
    features, aw, ab, fw, fb, labels = scn_inputs(2, 10)
    loss, scaled_logits, attention = R.scn(features, aw, ab, fw, fb, labels, beta=0.7, margin_1=0.15)
    a = sorted(attention.view(-1).tolist(), reverse=True)
    gap = sum(a[:7]) / 7 - sum(a[7:]) / 3
    expected = F.cross_entropy(scaled_logits, labels) + max(0.0, 0.15 - gap)
    assert float(loss) == pytest.approx(float(expected), abs=1e-6)


def test_scn_relabel_takes_the_arg_max_past_the_margin():
    scaled_logits = torch.log(torch.tensor([[0.5, 0.3, 0.2], [0.4, 0.35, 0.25], [0.2, 0.2, 0.6]]))
    labels = torch.tensor([1, 1, 2])
    assert R.scn_relabel(scaled_logits, labels, 0.2).tolist() == [1, 1, 2]    # 0.2 is not past 0.2; 0.05 neither
    assert R.scn_relabel(scaled_logits, labels, 0.1).tolist() == [0, 1, 2]


def test_rul_pairs_mix_by_relative_uncertainty():
    mu, logvar, fw, fb, labels, _ = rul_inputs(3, 6)
    assert torch.allclose(R.rul(mu, logvar, fw, fb, labels, torch.arange(6)),
                          F.cross_entropy(mu @ fw.t() + fb, labels))           # a sample paired with itself
    # the loss is unchanged when the batch is reordered together with its pairing
    permutation = torch.tensor([3, 0, 5, 1, 2, 4])
    order = torch.tensor([5, 2, 0, 4, 1, 3])
    inverse = torch.argsort(order)
    reordered = R.rul(mu[order], logvar[order], fw, fb, labels[order], inverse[permutation[order]])
    assert torch.allclose(reordered, R.rul(mu, logvar, fw, fb, labels, permutation))


def test_eac_flip_back_equals_the_grid_up_to_rounding_and_the_grid_is_tied_to_its_size():
    cams = torch.randn(5, 7, 7, 7, generator=generator(4))
    grid = R.flip_grid(7, 7).expand(5, -1, -1, -1)
    resampled = F.grid_sample(cams, grid, mode='bilinear', padding_mode='border', align_corners=True)
    assert (resampled - torch.flip(cams, dims=[3])).abs().max() < 1e-5
    features, flipped, fw, fb, labels = eac_inputs(0, 4, size=14)
    assert torch.isfinite(R.eac(features, flipped, fw, fb, labels))           # the fixed flip: any size
    with pytest.raises(RuntimeError):
        R.eac(features, flipped, fw, fb, labels, literal=True)                 # the official 7 x 7 grid
    assert torch.allclose(R.eac(features, flipped, fw, fb, labels, literal=True, grid_size=(14, 14)),
                          R.eac(features, flipped, fw, fb, labels), atol=1e-6)


def test_eac_cams_do_not_train_the_classifier():
    features, flipped, fw, fb, labels = eac_inputs(1, 3)
    fw = fw.clone().requires_grad_()
    R.eac(features, flipped, fw, fb, labels).backward()
    only_ce = fw.detach().clone().requires_grad_()
    F.cross_entropy(features.mean(dim=(2, 3)) @ only_ce.t() + fb, labels).backward()
    assert torch.allclose(fw.grad, only_ce.grad)


def test_nla_schedule_and_covariances():
    assert R.nla_eps(0, 60) == 0.0                                             # per epoch, 0-based: no correlation
    assert R.nla_eps(59, 60) == pytest.approx(1 - math.exp(-15 * 59 / 60))
    assert R.nla_eps(7, 60, schedule=False) == 1.0
    cov_t, cov_f = R.nla_covariances(1.0)
    assert cov_t == [[pytest.approx(0.80), pytest.approx(-0.48)], [pytest.approx(-0.48), pytest.approx(0.80)]]
    assert cov_f[0] == [pytest.approx(0.8511027777777779), pytest.approx(0.8050972222222222)]
    assert R.nla_covariances(0.0)[0][0][1] == 0.0


def test_nla_weight_is_the_gaussian_density_of_the_score_pair():
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.1], [0.5, 0.3, 0.2]]))
    labels = torch.tensor([0, 2])
    weights = R.nla_weights(logits, labels, eps=1.0)

    def density(x, y, mean, cov):
        d = torch.tensor([x - mean[0], y - mean[1]], dtype=torch.float64)
        c = torch.tensor(cov, dtype=torch.float64)
        return float(torch.exp(-0.5 * d @ torch.linalg.inv(c) @ d) / (2 * math.pi * torch.linalg.det(c).sqrt()))
    cov_t, cov_f = R.nla_covariances(1.0)
    assert float(weights[0]) == pytest.approx(density(0.6, 0.3, (0.5, 0.5), cov_t), rel=1e-5)  # label = arg max
    assert float(weights[1]) == pytest.approx(density(0.2, 0.5, (0.3, 0.15), cov_f), rel=1e-5)  # nearest negative
    assert weights.requires_grad is False and R.nla_weights(logits.requires_grad_(), labels, 1.0).requires_grad


def test_nla_consistency_fixed_is_the_jensen_shannon_divergence_and_literal_sums_over_the_batch():
    logits, flipped, _ = nla_inputs(5, 16)
    p, q = logits.softmax(1).double(), flipped.softmax(1).double()
    m = (p + q) / 2
    entropy = lambda d: -(d * d.log()).sum(1)
    jsd = (entropy(m) - (entropy(p) + entropy(q)) / 2).mean()
    assert float(R.nla_jsd(logits, flipped)) == pytest.approx(float(jsd), rel=1e-4)
    assert float(R.nla_jsd(logits, flipped)) <= math.log(2)
    doubled = [torch.cat([t, t]) for t in (logits, flipped)]
    assert torch.allclose(R.nla_jsd(*doubled), R.nla_jsd(logits, flipped))
    assert torch.allclose(R.nla_jsd(*doubled, literal=True), 2 * R.nla_jsd(logits, flipped, literal=True))


def test_nla_batch_of_one():
    logits, flipped, labels = nla_inputs(0, 1)
    loss, weights = R.nla(logits, flipped, labels, 0, 60)
    assert torch.isfinite(loss) and weights.shape == (1,)


def test_eac_literal_on_one_pixel_maps_is_the_identity():
    features, flipped, fw, fb, labels = eac_inputs(2, 3, size=1)
    assert torch.allclose(R.eac(features, flipped, fw, fb, labels, literal=True),
                          F.cross_entropy(features.mean(dim=(2, 3)) @ fw.t() + fb, labels)
                          + 5 * F.mse_loss(R.class_activation_maps(features, fw), R.class_activation_maps(flipped, fw)))
