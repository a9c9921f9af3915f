"""frontier.py: DDAMFN and EfficientFace against their official code (exact sizes, key names, unused parameters, input
sizes, DDAMFN's attention loss), their MS-Celeb-1M files, and a tiny train.py run of each.

The official figures were counted with the official model classes, run unchanged under torch 2.14.1 outside this
repository: DDAMNet(num_class, num_head=2, pretrained=False) of github.com/SainingZhang/DDAMFN at commit cebfe5c5969b
(networks/DDAM.py, networks/MixedFeatureNet.py) and efficient_face() with fc = Linear(1024, classes) of
github.com/zengqunzhao/EfficientFace at commit 8d195375fb6a (models/EfficientFace.py, models/modulator.py): the sum of
p.numel() over model.parameters(), len(model.state_dict()), and as DDAMFN's unused parameters those that get no
gradient from a training-mode forward and backward of logits and attention maps. Our networks loaded each official
state dict strictly (same keys, same order) and gave the same outputs."""
import sys
import types

import pytest
import torch
import torch.nn.functional as F

import baselines
import frontier
import noise
import recipes
import reproduce
import utils
from errors import UserError

pytestmark = pytest.mark.usefixtures('one_thread')

SIZES = {'ddamfn': 112, 'efficientface': 224}
# (model, classes): (parameters, state-dict entries, parameters the official forward never uses)
OFFICIAL = {('ddamfn', 7): (4_187_421, 1190, 81_422), ('ddamfn', 8): (4_187_936, 1190, 81_424),
            ('efficientface', 7): (1_275_293, 418, 0), ('efficientface', 8): (1_276_318, 418, 0)}
OFFICIAL_KEYS = {  # a few of the official state dicts' keys
    'ddamfn': ['features.0.conv.weight', 'features.0.prelu.weight', 'features.2.conv_dw.mixed_depthwise_conv.2.weight',
               'features.3.model.8.CA.conv3.bias', 'features.6.conv_dw.bn.running_var', 'features.8.prelu.weight',
               'cat_head1.CoordAtt.Linear_h.conv.weight', 'cat_head0.CoordAtt.Linear.bn.num_batches_tracked',
               'Linear.conv.weight', 'fc.bias', 'bn.running_mean'],
    'efficientface': ['conv1.0.weight', 'stage2.0.branch1.0.weight', 'stage4.3.branch2.6.num_batches_tracked',
                      'local.conv4_2.weight', 'local.bn1_1.running_mean',
                      'modulator.channel_att.gate_c.gate_c_bn_1.weight',
                      'modulator.spatial_att.gate_s.gate_s_conv_di_1.bias', 'conv5.1.bias', 'fc.weight']}


def build(name, classes=7, seed=0):
    torch.manual_seed(seed)
    return baselines.create_model(name, classes)


@pytest.fixture(scope='module')
def networks():
    return {name: build(name) for name in SIZES}


@pytest.mark.parametrize('name, classes', list(OFFICIAL))
def test_parameter_counts_and_keys_equal_the_official_code(name, classes):
    params, entries, unused = OFFICIAL[(name, classes)]
    net = build(name, classes)
    assert utils.count_parameters(net) == params and len(net.state_dict()) == entries
    assert set(OFFICIAL_KEYS[name]) <= set(net.state_dict())
    kept = noise.CrossEntropy.unused_parameters(net, SIZES[name])  # what a run leaves out of its counts
    assert sum(p.numel() for p in kept) == unused
    assert utils.count_parameters(net, kept) == params - unused


def test_ddamfns_unused_parameters_are_those_its_training_forward_gives_no_gradient(networks):
    net = networks['ddamfn'].train()
    logits, attention = net(torch.randn(2, 3, 112, 112))
    params = list(net.parameters())
    grads = torch.autograd.grad(logits.sum() + attention, params, allow_unused=True)
    assert {id(p) for p, g in zip(params, grads) if g is None} == {id(p) for p in net.unused_parameters()}
    net.eval()


@pytest.mark.parametrize('name', list(SIZES))
def test_a_state_dict_in_the_official_names_loads_strictly_and_gives_the_same_outputs(name, networks, tmp_path):
    import run_folder
    net = networks[name].eval()
    torch.save({'iter': 3, 'model_state_dict': net.state_dict()}, tmp_path / 'official.pth')  # DDAMFN's layout
    other = build(name, seed=1).eval()
    other.load_state_dict(run_folder.load_file(str(tmp_path / 'official.pth'))['model_state_dict'], strict=True)
    x = torch.randn(2, 3, SIZES[name], SIZES[name])
    with torch.no_grad():
        torch.testing.assert_close(other(x), net(x))


@pytest.mark.parametrize('name, channels', [('ddamfn', 512), ('efficientface', 1024)])
def test_features_are_the_last_7x7_map_and_the_head_gives_the_logits(name, channels, networks):
    net = networks[name].eval()
    x = torch.randn(2, 3, SIZES[name], SIZES[name])
    with torch.no_grad():
        features = net.forward_features(x)
        logits = net(x)
        assert features.shape == (2, channels, 7, 7) and logits.shape == (2, 7)
        torch.testing.assert_close(net.forward_head(features), logits)
        assert recipes.MODELS[name].class_activation_maps == hasattr(net, 'class_activation_maps')
        if name == 'efficientface':  # pooling then a linear layer: the CAM's mean is the logit less the bias
            maps = net.class_activation_maps(features)
            torch.testing.assert_close(maps.mean((2, 3)), logits - net.fc.bias, rtol=1e-4, atol=1e-5)


def test_ddamfn_has_no_cam_and_gets_a_grad_cam(networks):
    import trained
    maps, method = trained.activation_maps(networks['ddamfn'].eval(), torch.randn(2, 3, 112, 112),
                                           torch.tensor([0, 3]))
    assert method == 'Grad-CAM' and maps.shape == (2, 7, 7) and torch.isfinite(maps).all()


@pytest.mark.parametrize('name, size, wrong', [('ddamfn', 112, 100), ('efficientface', 224, 112)])
def test_a_wrong_input_size_is_refused_naming_the_size_needed(name, size, wrong, networks, capsys):
    import cli
    import train
    message = f'{name} takes {size}x{size} inputs only'
    with pytest.raises(UserError, match=message):
        baselines.create_model(name, 7, image_size=wrong)
    with pytest.raises(UserError, match=f'{message}.*got {wrong}'):
        networks[name].eval()(torch.zeros(1, 3, wrong, size))
    with pytest.raises(SystemExit):
        cli.parse(train.parser, train.check_args, train.recipe, ['--model', name, '--image_size', str(wrong)])
    assert f'argument --image_size: {message}' in capsys.readouterr().err
    assert recipes.fitting_image_size(name, 16) == size  # reproduce.py --scale smoke keeps it
    assert reproduce.smoke_flags({'dataset': 'rafdb', 'model': name}, 'eval')['image_size'] == size


def test_ddamfns_training_loss_is_cross_entropy_plus_its_weighted_attention_loss(networks):
    import argparse
    net = networks['ddamfn'].train()
    x, y = torch.randn(4, 3, 112, 112), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(0)
    outputs = net(x)
    logits, term = outputs
    assert term.dim() == 0
    with torch.no_grad():  # the official AttentionLoss of the heads' maps: 1 pair / (MSE + machine epsilon)
        maps = net.attention_maps(net.forward_features(x))
        expected = 1 / (F.mse_loss(maps[0], maps[1]) + sys.float_info.epsilon)
    torch.testing.assert_close(term.detach(), 0.1 * expected, rtol=1e-4, atol=0)
    method = noise.CrossEntropy(argparse.Namespace(label_smoothing=0.0, auxiliary_weight=0.4), y, None, None)
    loss, returned, _ = method.loss(outputs, y)
    ce = F.cross_entropy(logits, y)
    assert returned is logits and not torch.isclose(loss, ce)
    torch.testing.assert_close(loss, ce + term)
    net.eval()
    with torch.no_grad():  # evaluation and prediction get the logits alone
        assert isinstance(net(x), torch.Tensor) and utils.main_logits(net(x)).shape == (4, 7)
    assert frontier.attention_loss(maps[:1]) == 0  # one head: no attention loss, as the official one


def pickled_as_the_official_file(network, path, monkeypatch):
    """Save `network` whole as MFN_msceleb.pth holds MixedFeatureNet: each of its modules of our classes as an object
    of a class of the official module networks/MixedFeatureNet.py (made here, with its names)."""
    official = types.ModuleType('networks.MixedFeatureNet')
    names = {frontier.MixedBlock: 'Mix_Depth_Wise', frontier.MixedStage: 'Mix_Residual',
             frontier.MixedDepthwiseConv: 'MDConv', frontier.CoordinateAttention: 'CoordAtt',
             torch.nn.Module: 'MixedFeatureNet'}
    for ours, name in names.items():
        setattr(official, name, type(name, (ours,), {'__module__': official.__name__, '__qualname__': name}))
    for module in network.modules():
        if type(module) in names:
            module.__class__ = getattr(official, names[type(module)])
    monkeypatch.setitem(sys.modules, 'networks', types.ModuleType('networks'))
    monkeypatch.setitem(sys.modules, official.__name__, official)
    torch.save(network, path)
    monkeypatch.delitem(sys.modules, official.__name__)  # the loader has no such module, as ours has not


def mixed_feature_net_with_its_face_head():
    """MixedFeatureNet as the official file holds it: our backbone's modules under its names, and its face head."""
    torch.manual_seed(2)
    network = torch.nn.Module()
    for name, module in zip(frontier.MIXED_FEATURE_NET, frontier.mixed_feature_net()):
        network.add_module(name, module)
    network.conv_6_dw = frontier.face_conv(512, 512, 7, groups=512, prelu=False)
    network.linear = torch.nn.Linear(512, 256, bias=False)
    network.bn = torch.nn.BatchNorm1d(256)
    return network


def test_ddamfn_loads_the_pickled_ms_celeb_mixed_feature_net_naming_what_does_not_load(tmp_path, monkeypatch):
    source = mixed_feature_net_with_its_face_head()
    path = tmp_path / 'MFN_msceleb.pth'
    pickled_as_the_official_file(source, path, monkeypatch)
    net = build('ddamfn', seed=3)
    head_before = net.cat_head0.CoordAtt.conv1.weight.clone()
    lines = []
    baselines.load_pretrained(net, 'ddamfn', str(path), lines.append)
    assert torch.equal(net.features[5].model[15].conv_dw.mixed_depthwise_conv[1].weight,
                       source.conv_4.model[15].conv_dw.mixed_depthwise_conv[1].weight)
    assert torch.equal(net.features[8].prelu.weight, source.conv_6_sep.prelu.weight)
    assert torch.equal(net.cat_head0.CoordAtt.conv1.weight, head_before)  # the heads start anew
    face_head = ['bn.bias', 'bn.num_batches_tracked', 'bn.running_mean', 'bn.running_var', 'bn.weight',
                 'conv_6_dw.bn.bias', 'conv_6_dw.bn.num_batches_tracked', 'conv_6_dw.bn.running_mean',
                 'conv_6_dw.bn.running_var', 'conv_6_dw.bn.weight', 'conv_6_dw.conv.weight', 'linear.weight']
    assert lines == [f'loaded 1119 tensors of MFN_msceleb.pth into ddamfn; its cat_head, Linear, fc, bn start anew; '
                     f'not loaded: {", ".join(face_head)}']
    # the same weights as a state dict load the same; a file of another network is refused
    torch.save(source.state_dict(), tmp_path / 'mfn_state.pth')
    baselines.load_pretrained(build('ddamfn'), 'ddamfn', str(tmp_path / 'mfn_state.pth'), lines.append)
    assert lines[-1] == lines[0].replace('MFN_msceleb.pth', 'mfn_state.pth')
    torch.save({'state_dict': build('efficientface').state_dict()}, tmp_path / 'other.pth')
    with pytest.raises(UserError, match=r'other.pth does not hold the weights of ddamfn \(980 missing'):
        baselines.load_pretrained(net, 'ddamfn', str(tmp_path / 'other.pth'))


def test_a_pickled_file_of_other_classes_is_refused_unread(tmp_path, monkeypatch):
    network = mixed_feature_net_with_its_face_head()
    pickled_as_the_official_file(network, tmp_path / 'MFN_msceleb.pth', monkeypatch)
    stranger = type('Payload', (torch.nn.Module,), {'__module__': 'networks.MixedFeatureNet',
                                                     '__qualname__': 'Payload'})
    network.conv1.__class__ = stranger  # a class the official module does not have
    module = types.ModuleType('networks.MixedFeatureNet')
    for cls in {type(m) for m in network.modules()}:
        setattr(module, cls.__qualname__, cls)
    monkeypatch.setitem(sys.modules, module.__name__, module)
    torch.save(network, tmp_path / 'payload.pth')
    monkeypatch.delitem(sys.modules, module.__name__)
    with pytest.raises(UserError, match=r'\(networks.MixedFeatureNet.Payload\), which cannot be loaded safely'):
        baselines.load_pretrained(build('ddamfn'), 'ddamfn', str(tmp_path / 'payload.pth'))
    with pytest.raises(UserError, match='has no ImageNet backbone .*give its face-recognition checkpoint file '
                                        r'\(MFN_msceleb.pth\)'):
        baselines.load_pretrained(build('ddamfn'), 'ddamfn', 'imagenet')


def test_efficientface_loads_its_ms_celeb_tar_from_dataparallel_with_a_12666_class_classifier(tmp_path):
    torch.manual_seed(4)
    face = frontier.EfficientFace(12666)  # Pretrained_EfficientFace.tar: its MS-Celeb-1M identities
    torch.save({'state_dict': {f'module.{k}': v for k, v in face.state_dict().items()}},
               tmp_path / 'Pretrained_EfficientFace.tar')
    net, lines = build('efficientface'), []
    baselines.load_pretrained(net, 'efficientface', str(tmp_path / 'Pretrained_EfficientFace.tar'), lines.append)
    assert torch.equal(net.local.conv3_2.weight, face.local.conv3_2.weight)
    assert net.fc.weight.shape == (7, 1024)
    assert lines == ['loaded 416 tensors of Pretrained_EfficientFace.tar into efficientface; its classifier is '
                     'replaced']


@pytest.fixture(scope='module')
def tiny_dataset(tmp_path_factory):
    from synthetic import make_synthetic
    root = tmp_path_factory.mktemp('data') / 'tiny'
    make_synthetic(str(root), n_train=21, n_test=21, seed=3, log=lambda *a: None)
    return str(root)


@pytest.mark.parametrize('name', list(SIZES))
def test_a_tiny_run_of_each_trains_at_its_size_and_counts_the_parameters_it_uses(name, tiny_dataset, tmp_path):
    import json

    import train
    from conftest import make_run
    folder = make_run(train, ['--data', tiny_dataset, '--model', name, '--epochs', '1', '--image_size',
                              str(SIZES[name]), '--batch_size', '8', '--flip_noise'], tmp_path)
    metrics = json.load(open(f'{folder}/metrics.json'))
    params, _, unused = OFFICIAL[(name, 7)]
    assert metrics['complete'] and metrics['model'] == name and metrics['params'] == params - unused
    log = open(f'{folder}/log.txt').read()
    assert (f'not counted: {unused:,} parameters that training never uses (with them: {params:,})' in log) == \
        bool(unused)


def teacher_file(path, classes=7):
    """A label distribution generator file as EfficientFace's main.py loads it (saved from DataParallel); ResNet-18
    here for speed (the official one is a ResNet-50: the loader reads the depth from the keys)."""
    import torchvision
    torch.manual_seed(5)
    teacher = torchvision.models.resnet18(num_classes=classes).eval()
    torch.save({'state_dict': {f'module.{k}': v for k, v in teacher.state_dict().items()}}, path)
    return teacher


def test_efficientfaces_teacher_gives_the_official_loss_on_its_soft_labels(tmp_path, networks):
    import argparse

    import data_loader
    teacher = teacher_file(tmp_path / 'Pretrained_LDG.tar')
    generator = frontier.LabelDistributionGenerator(str(tmp_path / 'Pretrained_LDG.tar'), 7, 'rafdb', 'cpu')
    raw = torch.rand(2, 3, 224, 224)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (data_loader.IMAGENET_MEAN, data_loader.IMAGENET_STD))
    x, y = (raw - mean) / std, torch.tensor([1, 5])  # as our loader normalises
    same, targets = generator(x, y)
    assert same is x
    official_mean, official_std = (torch.tensor(v).view(1, 3, 1, 1) for v in frontier.EFFICIENTFACE_STATISTICS['rafdb'])
    with torch.no_grad():  # what main.py computes: the teacher's softmax on its own normalisation of the image
        p = torch.softmax(teacher((raw - official_mean) / official_std), dim=1)
    torch.testing.assert_close(targets * 7, p, rtol=1e-4, atol=1e-5)
    logits = networks['efficientface'].eval()(x)
    method = noise.CrossEntropy(argparse.Namespace(label_smoothing=0.0, auxiliary_weight=0.4), y, None, None)
    loss, _, _ = method.loss(logits, targets)
    torch.testing.assert_close(loss, torch.mean(-p * torch.log(torch.softmax(logits, dim=1))), rtol=1e-4, atol=1e-6)
    teacher_file(tmp_path / 'eight.tar', classes=8)
    with pytest.raises(UserError, match='classifies 8 classes and the dataset has 7'):
        frontier.LabelDistributionGenerator(str(tmp_path / 'eight.tar'), 7, 'rafdb', 'cpu')
    import torchvision  # the official generator's ResNet-50 (23,522,375 parameters with 7 classes) is recognised
    resnet50 = frontier.resnet_of(torchvision.models.resnet50(num_classes=7).state_dict(), 'Pretrained_LDG.tar')
    assert utils.count_parameters(resnet50) == 23_522_375
    torch.save(networks['efficientface'].state_dict(), tmp_path / 'student.pth')
    with pytest.raises(UserError, match='holds no torchvision ResNet'):
        frontier.LabelDistributionGenerator(str(tmp_path / 'student.pth'), 7, 'rafdb', 'cpu')


def test_efficientface_trains_on_its_teachers_soft_labels_and_the_teacher_is_refused_elsewhere(tiny_dataset,
                                                                                               tmp_path, capsys):
    import cli
    import train
    from conftest import make_run
    teacher_file(tmp_path / 'Pretrained_LDG.tar')
    ldg = str(tmp_path / 'Pretrained_LDG.tar')
    folder = make_run(train, ['--data', tiny_dataset, '--model', 'efficientface', '--epochs', '1', '--image_size',
                              '224', '--batch_size', '8', '--efficientface_teacher', ldg], tmp_path)
    assert f'label distribution generator: ResNet {ldg} (11,180,103 parameters, frozen)' in \
        open(f'{folder}/log.txt').read()
    for argv, message in ((['--model', 'ddamfn'], 'argument --efficientface_teacher: applies to --model efficientface'),
                          (['--model', 'efficientface', '--noise_method', 'nla'],
                           "its soft labels are the loss's targets, which --noise_method nla would change")):
        with pytest.raises(SystemExit):
            cli.parse(train.parser, train.check_args, train.recipe, argv + ['--efficientface_teacher', ldg])
        assert message in capsys.readouterr().err
