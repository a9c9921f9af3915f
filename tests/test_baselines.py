"""baselines.py: the hand-designed FER networks against docs/baselines.md (exact sizes, building blocks, inference rules),
their ImageNet weights, and benchmark.py measuring one of them alone."""
import json

import pytest
import torch

import baselines
import benchmark
import cli
import genotypes
import recipes
import utils
from errors import UserError
from operations import StridedPointwise, channel_shuffle

pytestmark = pytest.mark.usefixtures('one_thread')


@pytest.mark.parametrize('name, options, params, weights', [
    ('fgw_fer', {}, 64_176, None),
    ('fgw_fer', {'all_conv': True}, 321_696, None),  # the paper's 321,816 is 120 more (docs/baselines.md "FGW-FER")
    ('shufflenet_v2', {}, 1_260_779, 1_244_592),  # RLR-CNet Table 3's "1.24" counts conv+FC weights
    ('rlr_cnet', {}, 1_027_457, 1_014_344),
    ('rlr_cnet', {'split': 'literal'}, 1_746_849, 1_727_976),
])
def test_parameter_counts_match_the_papers(name, options, params, weights):
    net = baselines.create_model(name, 7, **options)
    assert utils.count_parameters(net) == params
    if weights is not None:
        assert utils.count_weights(net) == weights


@pytest.mark.parametrize('size', [64, 25])
def test_strided_pointwise_convolution_equals_the_strided_one_and_trains_channels_last(size):
    torch.manual_seed(0)
    sliced = StridedPointwise(8, 16, 2)
    strided = torch.nn.Conv2d(8, 16, 1, stride=2, bias=False)
    strided.weight = sliced.weight
    x = torch.randn(2, 8, size, size)
    torch.testing.assert_close(sliced(x), strided(x))
    # PyTorch 2.14's channels-last CPU backward of the strided convolution corrupts memory at 64x64 with 8 input
    # channels (FGW-FER's first shortcut on 100x100 RAF-DB images): the sliced one must train there.
    net = baselines.create_model('fgw_fer', 7).to(memory_format=torch.channels_last)
    net(torch.randn(2, 3, 2 * size, 2 * size).contiguous(memory_format=torch.channels_last)).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_every_model_is_rebuilt_from_a_runs_arguments():
    """predict.py and benchmark.py rebuild a network from args.json alone; a run from before a model's flags existed
    gets their defaults (cli.resumed_args), and every model's pretrained backbones name torchvision weights."""
    import train
    for name, entry in recipes.MODELS.items():
        args = cli.resumed_args(train.parser, {'model': name}, argv=[])
        options = baselines.model_options(args, genotypes.GLA_FERNet)
        assert set(options) == set(entry.options) | ({'genotype'} if entry.genotype else set())
        assert len(baselines.pretrained_weights(name)) == len(entry.pretrained)
    assert [n for n, m in recipes.MODELS.items() if m.two_branch] == ['rlr_cnet']


def test_beta_mish_values():
    x = torch.tensor([-10, -3, -1, -0.5, 0, 0.5, 1, 3, 10], dtype=torch.float64)
    expected = [-0.024155, -0.123866, -0.264646, -0.207327, 0, 0.387100, 0.893247, 2.990189, 9.999884]
    assert baselines.BetaMish()(x).tolist() == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize('channels, groups', [(116, 2), (64, 8)])
def test_shuffle_attention_has_3c_over_g_parameters_and_keeps_the_shape(channels, groups):
    attention = baselines.ShuffleAttention(channels, groups)
    assert utils.count_parameters(attention) == 3 * channels // groups
    x = torch.randn(2, channels, 5, 6)
    assert attention(x).shape == x.shape
    with torch.no_grad():  # initialised, both gates are sigmoid(1) everywhere: x scaled, then channel-shuffled
        assert torch.allclose(attention(x), channel_shuffle(x * torch.sigmoid(torch.tensor(1.0)), 2), atol=1e-6)
    with pytest.raises(UserError, match='divisible by 8'):
        baselines.ShuffleAttention(116, 4)


def test_cumulative_alpha_at_the_first_middle_and_last_epoch():
    assert baselines.cumulative_alpha(0, 300) == 1
    assert baselines.cumulative_alpha(150, 300) == 0.75
    assert baselines.cumulative_alpha(299, 300) == pytest.approx(1 - (299 / 300) ** 2)  # 0.0066


def test_rlr_cnet_inference_computes_the_trunk_once_and_adds_both_branches():
    torch.manual_seed(0)
    net = baselines.create_model('rlr_cnet', 7).eval()
    calls = []
    net.trunk.register_forward_hook(lambda module, inputs, output: calls.append(output))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        logits = net(x)
        assert len(calls) == 1
        f1, f2 = (net.branch_features(branch, calls[0]) for branch in (net.branch1, net.branch2))
        w1, w2 = net.classifier.weight.split(baselines.SHUFFLENET_LAST, dim=1)
        assert torch.allclose(logits, f1 @ w1.T + f2 @ w2.T + net.classifier.bias, atol=1e-5)
        # Training mixes the uniform batch's features with the reversed batch's: W [alpha f1(x); (1-alpha) f2(x2)] + b
        x2 = torch.randn(3, 3, 32, 32)
        f2_reversed = net.branch_features(net.branch2, net.trunk(x2))
        expected = 0.75 * f1 @ w1.T + 0.25 * f2_reversed @ w2.T + net.classifier.bias
        assert torch.allclose(net(x, x2, 0.75), expected, atol=1e-5)


@pytest.fixture(scope='module')
def cores_se():
    torch.manual_seed(0)
    return baselines.create_model('cores_se', 7).eval()


def test_cores_se_parameter_counts_and_224_pixel_shapes(cores_se):
    assert utils.count_parameters(cores_se) == 53_763_751
    # 8 classes: one more row of the last Linear (512 weights and a bias)
    assert cores_se.classifier[-1].in_features == 512 and 53_763_751 + 512 + 1 == 53_764_264
    with torch.no_grad():
        x = torch.randn(1, 3, 224, 224)
        assert cores_se.resnet(x).shape == (1, 2048) and cores_se.convnext(x).shape == (1, 768, 1, 1)
        assert cores_se(x).shape == (1, 7)


def test_cores_se_prediction_depends_on_the_rest_of_the_batch_only_with_the_notebook_gate(cores_se):
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cores_se(x[:1]), cores_se(x)[:1], atol=1e-5)
        cores_se.gate = 'batch'
        try:
            assert not torch.allclose(cores_se(x[:1]), cores_se(x)[:1], atol=1e-3)
        finally:
            cores_se.gate = 'sample'


def test_pretrained_weights_load_from_a_folder_of_torchvision_files(tmp_path):
    import torchvision
    imagenet = torch.nn.Module()
    imagenet.net = torchvision.models.shufflenet_v2_x1_0()  # 1000 classes, as torchvision's file
    file_name = baselines.pretrained_file_names('shufflenet_v2')[0]
    torch.save(imagenet.net.state_dict(), tmp_path / file_name)
    net = baselines.create_model('shufflenet_v2', 7)
    messages = []
    baselines.load_pretrained(net, 'shufflenet_v2', str(tmp_path), messages.append)
    assert torch.equal(net.conv1[0].weight, imagenet.net.conv1[0].weight)
    assert net.fc.weight.shape == (7, 1024)  # the FER classifier stays new
    assert messages == [f'loaded ImageNet weights {file_name} into shufflenet_v2']
    with pytest.raises(UserError, match=r'resnet50-\w+.pth does not exist; the folder must hold torchvision'):
        baselines.load_pretrained(net, 'cores_se', str(tmp_path))
    with pytest.raises(UserError, match='fgw_fer has no ImageNet backbone'):
        baselines.load_pretrained(net, 'fgw_fer', str(tmp_path))



def older_torchvision_file(network):
    """A state dict as torchvision saved it before torch 0.4.1: no BatchNorm num_batches_tracked."""
    return {k: v for k, v in network.state_dict().items() if not k.endswith('num_batches_tracked')}


def test_pretrained_files_without_num_batches_tracked_load_and_other_missing_keys_are_named(tmp_path):
    import torchvision
    face, imagenet = torchvision.models.resnet18(num_classes=8631), torchvision.models.resnet18()
    torch.save({'state_dict': older_torchvision_file(face)}, tmp_path / 'resnet18_msceleb.pth')
    folder = tmp_path / 'imagenet'
    folder.mkdir()
    torch.save(older_torchvision_file(imagenet), folder / baselines.pretrained_file_names('resnet18')[0])
    for source, expected in ((tmp_path / 'resnet18_msceleb.pth', face), (folder, imagenet)):
        net = baselines.create_model('resnet18', 7)
        baselines.load_pretrained(net, 'resnet18', str(source), lambda line: None)
        assert torch.equal(net.layer4[1].conv2.weight, expected.layer4[1].conv2.weight), source
    state = older_torchvision_file(face)
    del state['layer1.0.bn1.running_mean']
    torch.save(state, tmp_path / 'other.pth')
    with pytest.raises(UserError, match=r'\(1 missing or of another shape, e.g. layer1.0.bn1.running_mean: a '):
        baselines.load_pretrained(baselines.create_model('resnet18', 7), 'resnet18', str(tmp_path / 'other.pth'))


def test_a_weights_file_holding_objects_is_refused_without_advice_to_run_its_code(tmp_path):
    import argparse

    import run_folder
    net = baselines.create_model('resnet18', 7)
    path = tmp_path / 'resnet18_msceleb.pth'
    torch.save({'state_dict': net.state_dict(), 'args': argparse.Namespace(lr=0.1)}, path)  # as many repositories do
    for load in (lambda: baselines.load_pretrained(net, 'resnet18', str(path)),  # --pretrained
                 lambda: run_folder.load_file(str(path), 'cannot resume: ')):  # --resume, predict.py
        with pytest.raises(UserError) as refused:
            load()
        message = str(refused.value)
        assert str(path) in message and '(argparse.Namespace), which cannot be loaded safely' in message
        assert 'torch.save(model.state_dict(), path)' in message
        assert 'weights_only' not in message and 'can still be loaded' not in message  # torch's advice, cut
    path.write_text('notes about the run\n')  # not of torch.save: torch's message for it gives the same advice
    with pytest.raises(UserError) as refused:
        run_folder.load_file(str(path))
    assert 'is not a readable checkpoint or weights file (UnpicklingError: Unsupported operand' in str(refused.value)
    assert 'weights_only' not in str(refused.value)


def test_benchmark_measures_one_network_alone(tmp_path):
    args = benchmark.parser.parse_args(['--device', 'cpu', '--model', 'rlr_cnet', '--skip_search', '--batch_size', '2',
                                        '--image_size', '16', '--steps', '1', '--repeats', '1',
                                        '--json', str(tmp_path / 'benchmark.json')])
    benchmark.main(args, print)
    results = json.load(open(tmp_path / 'benchmark.json'))
    net = baselines.create_model('rlr_cnet', 7)
    assert (results['eval_params'], results['eval_weights']) == (1_027_457, 1_014_344)
    assert results['eval_flops'] == utils.count_flops(net, 16) == 2 * results['eval_macs']
    for key in ['train_step_img_s', 'eval_img_s', 'latency_bs1_ms']:
        assert 0 < results[key] < float('inf'), key
    assert 'search_step_img_s' not in results and 'data_img_s' not in results
    assert results['config']['model'] == 'rlr_cnet'


# at 32 px: the networks cut for one input size (frontier.py) are tested at theirs in tests/test_frontier.py
@pytest.mark.parametrize('name', [n for n, m in recipes.MODELS.items()
                                  if n != 'cores_se' and not m.fixed_image_size])
def test_features_then_head_is_the_network_and_cams_average_to_the_logits(name):
    torch.manual_seed(0)
    options = {'genotype': genotypes.GLA_FERNet, 'init_channels': 8, 'layers': 3, 'image_size': 32} \
        if name == 'gla_fernet' else {}
    net = baselines.create_model(name, 7, **options).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        features = net.forward_features(x)
        logits = utils.main_logits(net(x))
        assert features.dim() == 4 and torch.allclose(net.forward_head(features), logits, atol=1e-5)
        # CAM: the classifier at every position; its spatial mean is the logit less the classifier's bias
        bias = (net.head[1] if name == 'fgw_fer' else getattr(net, 'classifier', None) or net.fc).bias
        maps = net.class_activation_maps(features)
        assert maps.shape[:2] == (2, 7) and torch.allclose(maps.mean((2, 3)), logits - bias, atol=1e-4)


def test_cores_se_features_are_its_pooled_channels_and_its_head_the_gated_mlp(cores_se):
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        features = cores_se.forward_features(x)
        assert features.shape == (2, 2816, 1, 1)
        assert torch.equal(cores_se.forward_head(features), cores_se(x))
    assert not hasattr(cores_se, 'class_activation_maps')
