"""faces.py, predict.py --faces / --cam and align-faces on real photographs (tests/data/README.md): the detector finds
the faces, alignment puts the landmarks on the template, every face and frame gets a row (batched frames as each
alone), tracks and --smooth are what they claim, video frames are turned upright, class maps are what they claim, and
bad input stops with one message before any work or is listed and skipped."""
import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import baselines
import dataset_tools
import faces
import formats
import genotypes
import predict
import recipes
import trained
import utils
from errors import UserError

pytestmark = pytest.mark.usefixtures('one_thread')
REPOSITORY = Path(__file__).parent.parent
DATA = Path(__file__).parent / 'data'
ASTRONAUT, TWO_FACES = DATA / 'astronaut.jpg', DATA / 'two_faces.jpg'
needs_detector = pytest.mark.skipif(faces.detector_missing() is not None, reason=str(faces.detector_missing()))
try:
    import av
except ImportError:
    av = None
needs_av = pytest.mark.skipif(av is None, reason=f'PyAV is not installed ({faces.VIDEO_INSTALL})')
# Re-detected on the aligned crop (MTCNN needs some context around a face: the crop is padded by PAD pixels),
# the eyes lie within EYE_TOLERANCE pixels of the 100x100 template and the mouth corners within MOUTH_TOLERANCE: the
# astronaut smiles, and no similarity transform puts a smile's corners on the template's neutral mouth (the
# least-squares fit leaves them 5.8 pixels off). Every landmark lies within LANDMARK_TOLERANCE of where the transform
# put the photo's own landmarks (MTCNN's landmarks move by about a pixel between two detections of one face).
PAD, EYE_TOLERANCE, MOUTH_TOLERANCE, LANDMARK_TOLERANCE = 20, 3.0, 8.0, 2.0


@pytest.fixture(scope='module')
def detector():
    return faces.Detector()


def photo(path):
    return np.array(Image.open(path).convert('RGB'))


def predict_main(argv, cwd, monkeypatch):
    monkeypatch.chdir(cwd)
    predict.main(predict.parse(argv), utils.Log())


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- detection and alignment

@needs_detector
def test_the_detector_finds_the_faces_and_the_aligned_crop_puts_them_on_the_template(detector):
    assert [len(detector(photo(p))) for p in (ASTRONAUT, TWO_FACES)] == [1, 2]
    face, = detector(photo(ASTRONAUT))
    crop, matrix = faces.align(photo(ASTRONAUT), face.landmarks)
    assert crop.shape == (faces.CROP_SIZE, faces.CROP_SIZE, 3) and crop.dtype == np.uint8
    again, = detector(np.pad(crop, ((PAD, PAD), (PAD, PAD), (0, 0))))
    found = again.landmarks - PAD
    distance = np.linalg.norm(found - faces.TEMPLATE, axis=1)
    assert distance[[0, 1]].max() < EYE_TOLERANCE and distance[[3, 4]].max() < MOUTH_TOLERANCE
    assert np.linalg.norm(found - faces.apply(matrix, face.landmarks), axis=1).max() < LANDMARK_TOLERANCE


@pytest.mark.parametrize('scale', [1.7, 0.4])  # a face smaller than the crop, and one shrunk (antialiased) first
def test_alignment_of_known_landmarks_is_exact(scale):
    """Landmarks placed by a known similarity: the fit recovers it, and dots drawn at them land on the template."""
    angle = np.deg2rad(17)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    landmarks = faces.TEMPLATE @ rotation / scale  # rows: R^T template / scale, then moved into the image
    landmarks += 40 - landmarks.min(0)
    matrix = faces.similarity_transform(landmarks, faces.TEMPLATE)
    np.testing.assert_allclose(matrix[:, :2], scale * rotation, atol=1e-9)
    np.testing.assert_allclose(faces.apply(matrix, landmarks), faces.TEMPLATE, atol=1e-9)
    size = int(np.ceil(landmarks.max() + 40))
    y, x = np.mgrid[:size, :size]
    sigma = 2.5 / scale  # 2.5 pixels of the crop
    dots = sum(np.exp(-((x - px) ** 2 + (y - py) ** 2) / (2 * sigma ** 2)) for px, py in landmarks)
    image = np.repeat((255 * dots).round().astype(np.uint8)[..., None], 3, axis=2)
    crop, _ = faces.align(image, landmarks)
    grey = crop[..., 0].astype(np.float64)
    v, u = np.mgrid[:faces.CROP_SIZE, :faces.CROP_SIZE]
    for tx, ty in faces.TEMPLATE:
        near = (u - tx) ** 2 + (v - ty) ** 2 < 6 ** 2
        weights = grey * near
        centre = (weights * u).sum() / weights.sum(), (weights * v).sum() / weights.sum()
        assert np.hypot(centre[0] - tx, centre[1] - ty) < 0.15


def test_without_the_detector_faces_says_what_to_install(monkeypatch):
    real = faces.importlib.util.find_spec
    monkeypatch.setattr(faces.importlib.util, 'find_spec', lambda name: None if name == 'facenet_pytorch' else
                        real(name))
    with pytest.raises(UserError, match='pip install --no-deps facenet-pytorch'):
        faces.Detector()


# ---------------------------------------------------------------- predict.py --faces

@needs_detector
def test_faces_of_photos_a_row_each_and_a_photo_without_a_face_says_so(runs, tmp_path, monkeypatch):
    noise = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / 'no_face.png')
    predict_main([runs['fgw_fer'], '--faces', str(TWO_FACES), str(tmp_path / 'no_face.png'), '--out', 'faces.csv',
                  '--annotate', 'annotated', '--cam', 'maps'], tmp_path, monkeypatch)
    rows = read_csv(tmp_path / 'faces.csv')
    assert [(Path(r['path']).name, r['face']) for r in rows] == [('two_faces.jpg', '0'), ('two_faces.jpg', '1'),
                                                                ('no_face.png', '')]
    boxes = [[float(r[k]) for k in ('x0', 'y0', 'x1', 'y1')] for r in rows[:2]]
    assert boxes[0][2] < boxes[1][0]  # left to right, apart
    assert all(r['prediction'] and float(r['score']) >= 0.9 for r in rows[:2])
    assert rows[2]['prediction'] == '' and rows[2]['error'].startswith('no face found')
    assert sorted(os.listdir(tmp_path / 'annotated')) == ['no_face.jpg', 'two_faces.jpg']
    assert sorted(os.listdir(tmp_path / 'maps')) == ['two_faces_face0.png', 'two_faces_face1.png']


@needs_detector
@needs_av
def test_a_video_gives_a_row_per_frame_and_face_in_order(runs, tmp_path, monkeypatch):
    frames = [np.roll(photo(TWO_FACES), 3 * i, axis=1) for i in range(4)]  # both faces drift right
    video = tmp_path / 'clip.mp4'
    with faces.VideoWriter(str(video), 10) as writer:
        for frame in frames:
            writer.write(frame)
    (tmp_path / 'frames').mkdir()
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(tmp_path / 'frames' / f'frame_{i + 1}.png')  # frame_10 would sort last
    predict_main([runs['fgw_fer'], '--faces', str(video), '--smooth', '3', '--out', 'video.csv', '--annotate', 'out'],
                 tmp_path, monkeypatch)
    rows = read_csv(tmp_path / 'video.csv')
    assert [(r['frame'], r['face'], r['track']) for r in rows] == [(str(f), str(i), str(i)) for f in range(4)
                                                                   for i in range(2)]
    assert [float(r['time']) for r in rows[::2]] == pytest.approx([0, 0.1, 0.2, 0.3])
    with av.open(str(tmp_path / 'out' / 'clip.mp4')) as annotated:
        assert sum(1 for _ in annotated.decode(video=0)) == 4
    predict_main([runs['fgw_fer'], '--faces', '--frames', str(tmp_path / 'frames'), '--out', 'frames.json'],
                 tmp_path, monkeypatch)
    predictions = json.load(open(tmp_path / 'frames.json'))['predictions']
    assert [(p['frame'], p['face']) for p in predictions] == [(f, i) for f in range(4) for i in range(2)]


def drifting_frames(folder, count=4):
    """A frame folder of the two faces drifting right, 3 pixels a frame."""
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.roll(photo(TWO_FACES), 3 * i, axis=1)).save(folder / f'frame_{i + 1}.png')
    return folder


def probabilities_by_face(path):
    """{(frame, face): (track, {class: probability})} of a --faces JSON file written with --topk of every class."""
    return {(p['frame'], p['face']): (p['track'], {t['class']: t['probability'] for t in p['top_k']})
            for p in json.load(open(path))['predictions']}


@needs_detector
def test_frames_are_detected_and_classified_a_batch_at_a_time_as_each_alone(runs, tmp_path, monkeypatch):
    """One MTCNN pass and one evaluation loader for the frames of a batch, not one per frame; the rows are those of the
    frames taken one at a time (up to float32 rounding: a batched convolution sums in another order)."""
    from facenet_pytorch import MTCNN
    frames = drifting_frames(tmp_path / 'frames')
    calls = {'detect': 0, 'loader': 0}

    def counted(name, function):
        def call(*args, **kwargs):
            calls[name] += 1
            return function(*args, **kwargs)
        return call
    monkeypatch.setattr(MTCNN, 'detect', counted('detect', MTCNN.detect))
    monkeypatch.setattr(faces.data_loader, 'evaluation_loader', counted('loader', faces.data_loader.evaluation_loader))
    argv = [runs['fgw_fer'], '--faces', '--frames', str(frames), '--topk', '7']
    predict_main([*argv, '--out', 'batched.json'], tmp_path, monkeypatch)
    assert calls == {'detect': 1, 'loader': 1}
    monkeypatch.setattr(faces, 'FRAMES_PER_BATCH', 1)
    predict_main([*argv, '--out', 'alone.json'], tmp_path, monkeypatch)
    assert calls == {'detect': 1 + 4, 'loader': 1 + 4}
    batched, alone = (json.load(open(tmp_path / name))['predictions'] for name in ('batched.json', 'alone.json'))
    assert len(batched) == 8
    for a, b in zip(batched, alone):
        assert (a['frame'], a['face'], a['track'], a['prediction']) == (b['frame'], b['face'], b['track'],
                                                                      b['prediction'])
        assert a['box'] == pytest.approx(b['box'], abs=0.1 + 1e-9)  # rounded to 0.1 pixel
        assert a['score'] == pytest.approx(b['score'], abs=1e-5)
        assert [t['probability'] for t in a['top_k']] == pytest.approx([t['probability'] for t in b['top_k']],
                                                                        abs=1e-5)


@needs_detector
def test_smooth_is_an_exponential_moving_average_along_each_track(runs, tmp_path, monkeypatch):
    frames = drifting_frames(tmp_path / 'frames')
    argv = [runs['fgw_fer'], '--faces', '--frames', str(frames), '--topk', '7']
    predict_main([*argv, '--out', 'raw.json'], tmp_path, monkeypatch)
    predict_main([*argv, '--smooth', '3', '--out', 'smooth.json'], tmp_path, monkeypatch)
    raw, smooth = probabilities_by_face(tmp_path / 'raw.json'), probabilities_by_face(tmp_path / 'smooth.json')
    weight = 2 / (3 + 1)  # the newest frame's
    expected, average = {}, {}
    for (frame, face), (track, p) in sorted(raw.items()):
        previous = average.get(track)
        average[track] = p if previous is None else {c: weight * p[c] + (1 - weight) * previous[c] for c in p}
        expected[frame, face] = track, average[track]
    assert smooth.keys() == expected.keys()
    for key, (track, p) in expected.items():
        assert smooth[key][0] == track and smooth[key][1] == pytest.approx(p, abs=1e-6)
    assert max(abs(smooth[key][1][c] - raw[key][1][c]) for key in raw for c in raw[key][1]) > 1e-6  # it smooths


def test_two_faces_that_cross_paths_keep_their_tracks():
    """Face 0 walks right, face 1 left, along one row; at frame 4 each box lies where the other's was: their last
    boxes alone would swap the tracks, their motion keeps them."""
    tracker = faces.Tracker()
    for t in range(7):
        right, left = (10 * t, 0, 10 * t + 40, 40), (70 - 10 * t, 0, 110 - 10 * t, 40)
        assert tracker([right, left]) == [0, 1]


@needs_detector
@needs_av
def test_a_video_without_frames_or_unreadable_gets_a_row_and_the_others_theirs(runs, tmp_path, monkeypatch):
    with av.open(str(tmp_path / 'empty.avi'), 'w') as empty:  # a video stream, and no frame in it
        stream = empty.add_stream('mpeg4', rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, 'yuv420p'
        empty.start_encoding()
    (tmp_path / 'broken.mp4').write_bytes(b'not a video at all')
    predict_main([runs['fgw_fer'], '--faces', str(tmp_path / 'empty.avi'), str(tmp_path / 'broken.mp4'),
                  str(TWO_FACES), '--out', 'rows.csv', '--annotate', 'annotated'], tmp_path, monkeypatch)
    rows = read_csv(tmp_path / 'rows.csv')
    assert [(Path(r['path']).name, r['face']) for r in rows] == [('empty.avi', ''), ('broken.mp4', ''),
                                                                ('two_faces.jpg', '0'), ('two_faces.jpg', '1')]
    assert rows[0]['error'].startswith(f'video {tmp_path / "empty.avi"} has no frames')
    assert 'cannot be read' in rows[1]['error']
    assert os.listdir(tmp_path / 'annotated') == ['two_faces.jpg']  # no video without a video stream


@needs_detector
def test_a_photo_smaller_than_min_face_gets_the_no_face_row(runs, tmp_path, monkeypatch):
    Image.fromarray(photo(ASTRONAUT)[80:92, 100:116]).save(tmp_path / 'tiny.png')  # 16x12, under --min_face 20
    predict_main([runs['fgw_fer'], '--faces', str(tmp_path / 'tiny.png'), str(TWO_FACES), '--out', 'rows.csv'],
                 tmp_path, monkeypatch)
    rows = read_csv(tmp_path / 'rows.csv')
    assert [(Path(r['path']).name, r['face']) for r in rows] == [('tiny.png', ''), ('two_faces.jpg', '0'),
                                                                ('two_faces.jpg', '1')]
    assert rows[0]['error'].startswith('no face found (none of at least 20 pixels')
    predict_main([runs['fgw_fer'], '--faces', str(TWO_FACES), '--min_face', '300', '--out', 'large.csv'], tmp_path,
                 monkeypatch)  # the photo is 474x256
    row, = read_csv(tmp_path / 'large.csv')
    assert row['error'].startswith('no face found (none of at least 300 pixels')


@needs_av
def test_video_frames_are_turned_upright_by_the_streams_rotation(tmp_path):
    """A phone stores a portrait video sideways, with a display matrix saying how to turn it (as a photo's EXIF
    orientation): the frames come out as the phone was held."""
    upright = np.zeros((64, 32, 3), dtype=np.uint8)  # portrait
    upright[:16, :16] = 255  # a white block at the top left
    stored = np.ascontiguousarray(np.rot90(upright, k=-1))  # landscape: the picture turned clockwise
    with av.open(str(tmp_path / 'portrait.mp4'), 'w') as video:
        stream = video.add_stream('mpeg4', rate=10)
        stream.width, stream.height, stream.pix_fmt = 64, 32, 'yuv420p'
        if not hasattr(stream, 'set_display_rotation'):
            pytest.skip(f'this PyAV ({av.__version__}) cannot write a display matrix')
        stream.set_display_rotation(90)  # to be shown turned 90 degrees counter-clockwise
        for _ in range(2):
            video.mux(stream.encode(av.VideoFrame.from_ndarray(stored, format='rgb24')))
        video.mux(stream.encode(None))
    frames = [image for _, _, image in faces.video_frames(tmp_path / 'portrait.mp4')]
    assert len(frames) == 2 and all(frame.shape == upright.shape for frame in frames)
    assert np.abs(frames[0].astype(int) - upright).mean() < 8  # a lossy codec: about equal


# ---------------------------------------------------------------- where the network looks

def tiny_network(name):
    torch.manual_seed(0)
    options = {'genotype': genotypes.GLA_FERNet, 'init_channels': 8, 'layers': 3} \
        if baselines.uses_genotype(name) else {}
    return baselines.create_model(name, 7, **options).eval()


class WithoutCAM(torch.nn.Module):
    """A network's two halves without its class_activation_maps, so that Grad-CAM is used."""

    def __init__(self, network):
        super().__init__()
        self.network = network

    def forward_features(self, x):
        return self.network.forward_features(x)

    def forward_head(self, features):
        return self.network.forward_head(features)


# at 32 px: the networks cut for one input size (frontier.py) are tested at theirs in tests/test_frontier.py
@pytest.mark.parametrize('name', [n for n, m in recipes.MODELS.items()
                                  if n != 'cores_se' and not m.fixed_image_size])
def test_a_cam_averages_to_the_class_logit_less_its_bias_and_grad_cam_agrees(name):
    network = tiny_network(name)
    x = torch.randn(2, 3, 32, 32)
    classes = torch.tensor([1, 4])
    maps, method = trained.activation_maps(network, x, classes)
    with torch.no_grad():
        features = network.forward_features(x)
        logits = network.forward_head(features)
        bias = network.forward_head(torch.zeros_like(features))  # a linear head after pooling gives its bias on 0
    assert method == 'CAM'
    torch.testing.assert_close(maps.mean((1, 2)), (logits - bias)[[0, 1], classes], rtol=1e-4, atol=1e-5)
    grad_cam, method = trained.activation_maps(WithoutCAM(network), x, classes)
    assert method == 'Grad-CAM' and torch.isfinite(grad_cam).all()
    if not isinstance(network, baselines.FGWFER):  # its 3x3 convolution to the classes sees the padding at the edges
        # For pooling then a linear map, the gradient is the class weights over the map's area: ReLU(CAM) / area.
        torch.testing.assert_close(grad_cam, maps.relu() / maps[0].numel(), rtol=1e-4, atol=1e-6)


def test_grad_cam_runs_on_a_network_without_a_cam():
    """CoRes-SE's features are pooled (a 1x1 map: docs/baselines.md), so its map is one non-negative value."""
    maps, method = trained.activation_maps(tiny_network('cores_se'), torch.randn(2, 3, 32, 32), torch.tensor([0, 6]))
    assert method == 'Grad-CAM' and maps.shape == (2, 1, 1) and torch.isfinite(maps).all() and (maps >= 0).all()


# ---------------------------------------------------------------- align-faces

@needs_detector
def test_align_faces_turns_ckplus_photos_into_a_class_folder_dataset_and_lists_the_faceless(tmp_path):
    root = tmp_path / 'CK+'
    noise = np.random.default_rng(1).integers(0, 256, (120, 120, 3), dtype=np.uint8)
    for sequence, code in (('001', 5), ('002', 3)):
        frames = root / formats.CKPLUS_IMAGE_DIR / 'S005' / sequence
        frames.mkdir(parents=True)
        for k in range(1, 5):
            name = frames / f'S005_{sequence}_{k:08d}.png'
            Image.fromarray(noise).save(name) if (sequence, k) == ('002', 4) else shutil.copy(ASTRONAUT, name)
        labels = root / formats.CKPLUS_LABEL_DIR / 'S005' / sequence
        labels.mkdir(parents=True)
        (labels / f'S005_{sequence}_00000004_emotion.txt').write_text(f'   {code}.0000000e+00\n')
    out = tmp_path / 'aligned'
    dataset_tools.main(['align-faces', '--data', str(root), '--out', str(out)])
    written = sorted(str(p.relative_to(out)) for p in out.rglob('*.png'))
    assert written == ['Disgust/S005_002_00000002.png', 'Disgust/S005_002_00000003.png',
                       'Happy/S005_001_00000002.png', 'Happy/S005_001_00000003.png', 'Happy/S005_001_00000004.png']
    assert Image.open(out / written[0]).size == (100, 100)
    assert (out / 'no_face.txt').read_text().splitlines()[1:] == [str(root / formats.CKPLUS_IMAGE_DIR / 'S005' / '002'
                                                                      / 'S005_002_00000004.png')]
    listing = formats.list_folder_pool(out, r'^([^_]+)_')  # what --dataset folder --folds reads
    assert listing.all_subjects == ['S005'] and len(listing.paths) == 5


def photo_dataset(root, corrupt=False):
    """A class-folder dataset of one photo (and a corrupt one)."""
    (root / 'happy').mkdir(parents=True)
    shutil.copy(ASTRONAUT, root / 'happy' / 'S1_a.jpg')
    if corrupt:
        (root / 'happy' / 'S1_b.jpg').write_bytes(b'\xff\xd8\xff\xe0 not a jpeg')
    return root


@needs_detector
def test_align_faces_lists_and_skips_a_corrupt_photo(tmp_path, capsys):
    data = photo_dataset(tmp_path / 'photos', corrupt=True)
    out = tmp_path / 'aligned'
    dataset_tools.main(['align-faces', '--data', str(data), '--out', str(out)])
    assert [str(p.relative_to(out)) for p in out.rglob('*.png')] == [os.path.join('happy', 'S1_a.png')]
    assert (out / 'unreadable.txt').read_text().splitlines()[1:] == [str(data / 'happy' / 'S1_b.jpg')]
    printed = capsys.readouterr().out
    assert f'skipped: image {data / "happy" / "S1_b.jpg"} is corrupt or truncated' in printed
    assert '1 unreadable images were skipped' in printed


@needs_detector
def test_align_faces_removes_the_temporary_folder_a_killed_run_left(tmp_path):
    data = photo_dataset(tmp_path / 'photos')
    out = tmp_path / 'aligned'
    killed = ('import os, signal, sys, run_folder\n'
              'build = run_folder.atomic_folder(sys.argv[1])\n'
              'tmp = build.__enter__()\n'
              "open(os.path.join(tmp, 'half.png'), 'w').close()\n"
              'os.kill(os.getpid(), signal.SIGKILL)\n')  # as a kill during the build: no clean-up runs
    result = subprocess.run([sys.executable, '-c', killed, str(out)], cwd=REPOSITORY, timeout=120)
    assert result.returncode == -signal.SIGKILL
    assert len([p for p in tmp_path.iterdir() if p.name.startswith('.aligned.')]) == 1
    dataset_tools.main(['align-faces', '--data', str(data), '--out', str(out)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ['aligned', 'photos']


@pytest.mark.parametrize('flag, value, message', [('--face_threshold', '0', 'must lie in (0, 1]'),
                                                  ('--face_threshold', '1.5', 'must lie in (0, 1]'),
                                                  ('--min_face', '0', 'must be a positive integer')])
def test_align_faces_refuses_detector_settings_out_of_range(flag, value, message, tmp_path, capsys):
    with pytest.raises(SystemExit):
        dataset_tools.main(['align-faces', '--data', str(tmp_path), '--out', str(tmp_path / 'out'), flag, value])
    assert f'argument {flag}: {message}, got {value}' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        predict.parse(['run', 'face.jpg', '--faces', flag, value])
    assert f'argument {flag}: {message}, got {value}' in capsys.readouterr().err


def test_a_face_threshold_of_1_is_legal():
    assert predict.parse(['run', 'face.jpg', '--faces', '--face_threshold', '1']).face_threshold == 1.0


# ---------------------------------------------------------------- bad input

@needs_av
def test_an_unreadable_video_stops_with_one_message(tmp_path):
    (tmp_path / 'broken.mp4').write_bytes(b'not a video at all')
    with pytest.raises(UserError, match=r'video .*broken.mp4 cannot be read'):
        next(faces.video_frames(tmp_path / 'broken.mp4'))


def test_a_frame_folder_of_mixed_sizes_stops_with_one_message(tmp_path):
    for i, size in enumerate([(40, 30), (40, 30), (30, 40)]):
        Image.new('RGB', size).save(tmp_path / f'{i}.png')
    with pytest.raises(UserError, match=r'frame .*2.png is 30x40, but .*0.png is 40x30; the frames of a frame folder'):
        list(faces.folder_frames(tmp_path))


@pytest.mark.parametrize('flag', ['--annotate', '--cam'])
def test_an_output_folder_that_is_a_file_is_refused_before_any_work(flag, tmp_path, capsys):
    (tmp_path / 'taken').write_text('a file')
    with pytest.raises(SystemExit):
        predict.parse(['run', 'face.jpg', '--faces', flag, str(tmp_path / 'taken')])
    assert f'argument {flag}: {tmp_path / "taken"} is a file, not a folder' in capsys.readouterr().err


def test_the_face_flags_default_to_faces_constants():
    """predict.py parses its flags before torch (and faces.py) is imported, and align-faces loads the detector only
    when it runs, so both write the defaults out."""
    args = predict.parse(['run', 'face.jpg', '--faces'])
    assert (args.min_face, args.face_threshold, args.fps) == (faces.MIN_FACE, faces.FACE_THRESHOLD, faces.DEFAULT_FPS)
    args = dataset_tools.command_parser().parse_args(['align-faces', '--data', 'photos', '--out', 'aligned'])
    assert (args.min_face, args.face_threshold) == (faces.MIN_FACE, faces.FACE_THRESHOLD)


@pytest.mark.parametrize('flag', ['--annotate', '--cam'])
def test_an_output_folder_that_cannot_be_created_is_refused_before_any_work(flag, tmp_path, monkeypatch, capsys):
    locked = tmp_path / 'locked'
    locked.mkdir()
    if os.geteuid() != 0:
        locked.chmod(0o555)
    else:  # root writes anywhere: the folder refuses as it would refuse another user
        real = os.mkdir

        def refused(path, *args, **kwargs):
            if Path(path).parent == locked:
                raise PermissionError(errno.EACCES, 'Permission denied', str(path))
            return real(path, *args, **kwargs)
        monkeypatch.setattr(os, 'mkdir', refused)
    try:
        with pytest.raises(SystemExit):
            predict.parse(['run', 'face.jpg', '--faces', flag, str(locked / 'out')])
    finally:
        locked.chmod(0o755)
    assert f'argument {flag}: cannot create {locked / "out"} (Permission denied)' in capsys.readouterr().err


@needs_detector
def test_a_frame_folder_of_mixed_sizes_is_refused_before_anything_is_written(runs, tmp_path, monkeypatch):
    (tmp_path / 'frames').mkdir()
    for i in range(5):
        Image.new('RGB', (40, 30) if i < 4 else (30, 40)).save(tmp_path / 'frames' / f'{i}.png')
    with pytest.raises(UserError, match=r'frame .*4.png is 30x40, but .*0.png is 40x30; the frames of a frame folder'):
        predict_main([runs['fgw_fer'], '--faces', '--frames', str(tmp_path / 'frames'), '--annotate', 'annotated'],
                     tmp_path, monkeypatch)
    assert not (tmp_path / 'annotated').exists() or not any((tmp_path / 'annotated').rglob('*'))


@needs_detector
def test_smooth_without_a_video_is_refused(runs, tmp_path, monkeypatch):
    with pytest.raises(UserError, match=r'--smooth 5 averages .* the inputs hold no video: drop --smooth'):
        predict_main([runs['fgw_fer'], '--faces', str(TWO_FACES), '--smooth', '5'], tmp_path, monkeypatch)


def test_data_loader_is_no_command_and_says_which_is(tmp_path):
    """The dataset commands have one entry point, dataset_tools.py, which nothing imports back."""
    result = subprocess.run([sys.executable, 'data_loader.py', 'make-noise', '--data', str(tmp_path), '--rate', '0.2'],
                            cwd=REPOSITORY, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and 'Traceback' not in result.stderr
    assert f'python dataset_tools.py make-noise --data {tmp_path} --rate 0.2' in result.stderr
