"""Faces in photographs and videos: detection with five landmarks (MTCNN, an optional extra), alignment onto the 100x100
geometry of RAF-DB's aligned images by a similarity transform, face tracks across frames, video frames (PyAV), and
predict.py --faces: a row per face, annotated images and videos, and the class activation maps of faces."""
import contextlib
import importlib.util
import io
import os
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

import data_loader
import formats
import run_folder
import utils
import visualize
from data_loader import SOURCE_SIZE, decode_image
from errors import UserError
from trained import activation_maps, display_maps, network_on, predict_probabilities

# The 5-point template of ArcFace / insightface (Deng et al. 2019, insightface's `arcface_dst`) for 112x112 crops:
# left eye, right eye, nose tip, left and right mouth corners (left = the image's left), in pixels. RAF-DB aligns its
# 100x100 images by a similarity transform of 5 landmarks too, but does not publish its template; this one, scaled by
# 100/112 about the origin (the same framing, a tight face), is the most widely used.
ARCFACE_TEMPLATE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                        (70.7299, 92.2041))
CROP_SIZE = SOURCE_SIZE  # 100, the size of RAF-DB's aligned images and of the dataset cache
TEMPLATE = np.array(ARCFACE_TEMPLATE_112) * (CROP_SIZE / 112)
LANDMARK_NAMES = ('left eye', 'right eye', 'nose', 'left mouth corner', 'right mouth corner')

DETECTOR_INSTALL = 'pip install requests tqdm && pip install --no-deps facenet-pytorch'
DETECTOR_PACKAGES = ('facenet_pytorch', 'requests', 'tqdm')  # its __init__ imports the last two
VIDEO_INSTALL = 'pip install av'
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.webm', '.m4v', '.mpg', '.mpeg', '.wmv', '.flv')  # a .gif is an image
MIN_FACE = 20  # pixels; MTCNN's own default smallest face
FACE_THRESHOLD = 0.9  # the final stage's face probability a detection needs
MTCNN_STAGE_THRESHOLDS = (0.6, 0.7, 0.7)  # MTCNN's defaults for its three networks
TRACK_IOU = 0.3  # a face continues the track of a face of the previous frame it overlaps at least this much
DEFAULT_FPS = 25  # frame folders carry no frame rate
FRAMES_PER_BATCH = 8  # frames of a video detected in one MTCNN call, whose faces are classified together
EXIF_ORIENTATION = 0x0112  # the EXIF tag by which decode_image turns a photo upright
ANNOTATED_JPEG_QUALITY = 90  # annotated photos and frames: JPEG, as photos are; a class map is a PNG figure


# ---------------------------------------------------------------- detection

def detector_missing():
    """None if the detector can be imported, else the message that says what to install."""
    missing = [name for name in DETECTOR_PACKAGES if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f'face detection needs the optional package facenet-pytorch (MTCNN, its weights inside the package; '
            f'{", ".join(missing)} missing): {DETECTOR_INSTALL} (--no-deps: its metadata pins an old torch)')


@dataclass
class Face:
    box: tuple  # x0, y0, x1, y1 in pixels of the image
    score: float  # the detector's face probability
    landmarks: np.ndarray  # 5 x 2, (x, y) in the order of LANDMARK_NAMES


class Detector:
    """MTCNN (Zhang et al. 2016, facenet-pytorch's port): faces of at least `min_face` pixels whose probability is at
    least `threshold`, left to right, each with 5 landmarks."""

    def __init__(self, min_face=MIN_FACE, threshold=FACE_THRESHOLD, device='cpu'):
        problem = detector_missing()
        if problem:
            raise UserError(problem)
        from facenet_pytorch import MTCNN
        # The last stage's threshold is lowered to ours when ours is lower, so that --face_threshold decides alone.
        stages = [*MTCNN_STAGE_THRESHOLDS[:2], min(MTCNN_STAGE_THRESHOLDS[2], threshold)]
        self.mtcnn = MTCNN(keep_all=True, min_face_size=min_face, thresholds=stages, device=device)
        self.min_face, self.threshold = min_face, threshold

    @property
    def missed(self):
        """What the row of an image without a face says."""
        return f'no face found (none of at least {self.min_face} pixels with probability {self.threshold:g} or more)'

    def __call__(self, image):
        """The faces of an H x W x 3 uint8 RGB image."""
        return self.detect([image])[0]

    def detect(self, images):
        """The faces of each of a list of H x W x 3 uint8 RGB images of one size, found in one pass of MTCNN."""
        if min(images[0].shape[:2]) < self.min_face:
            return [[] for _ in images]  # MTCNN's image pyramid starts at min_face: it would hold no image at all
        with torch.no_grad():
            boxes, scores, points = self.mtcnn.detect(np.stack(images), landmarks=True)
        return [self.kept(*found) for found in zip(boxes, scores, points)]

    def kept(self, boxes, scores, points):
        """The faces MTCNN found in one image (its boxes, scores and landmarks, None for none) that are large and
        likely enough."""
        if boxes is None:
            return []
        faces = [Face(tuple(float(v) for v in box), float(score), np.asarray(landmarks, dtype=np.float64))
                 for box, score, landmarks in zip(boxes, scores, points)
                 if score >= self.threshold and min(box[2] - box[0], box[3] - box[1]) >= self.min_face]
        return sorted(faces, key=lambda face: face.box[0])


# ---------------------------------------------------------------- alignment

def similarity_transform(source, target):
    """The 2 x 3 matrix [sR | t] of the rotation R, uniform scale s and translation t that map the points `source`
    onto `target` with the least squared error (Umeyama 1991; a reflection is never chosen)."""
    source, target = np.asarray(source, dtype=np.float64), np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(0), target.mean(0)
    a, b = source - source_mean, target - target_mean
    u, singular, vt = np.linalg.svd(b.T @ a / len(a))
    d = np.array([1.0, np.sign(np.linalg.det(u) * np.linalg.det(vt)) or 1.0])
    rotation = u @ np.diag(d) @ vt
    scale = (singular * d).sum() / (a ** 2).sum(1).mean()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]])


def apply(matrix, points):
    """Points (N x 2) mapped by a 2 x 3 affine matrix."""
    points = np.asarray(points, dtype=np.float64)
    return points @ matrix[:, :2].T + matrix[:, 2]


def warp(image, matrix, size):
    """The size x size image whose pixel (u, v) is `image` at the point matrix^-1 (u, v) (bilinear; outside: black).
    Pixel centres lie at integer coordinates, as the landmarks'. image: 1 x 3 x H x W float."""
    inverse = np.linalg.inv(np.vstack([matrix, [0, 0, 1]]))[:2]
    v, u = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                          indexing='ij')
    x = inverse[0, 0] * u + inverse[0, 1] * v + inverse[0, 2]
    y = inverse[1, 0] * u + inverse[1, 1] * v + inverse[1, 2]
    height, width = image.shape[-2:]
    # grid_sample's coordinates with align_corners=False: -1 and 1 are the outer edges of the border pixels
    grid = torch.stack([(2 * x + 1) / width - 1, (2 * y + 1) / height - 1], -1)[None].float()
    return F.grid_sample(image, grid, mode='bilinear', padding_mode='zeros', align_corners=False)


def align(image, landmarks, size=CROP_SIZE):
    """(the size x size x 3 uint8 crop of the face whose 5 landmarks are given, the 2 x 3 matrix mapping the image's
    pixel coordinates to the crop's). A face larger than the crop is first shrunk with an antialiased resize, so
    that the warp never skips pixels (aliasing), as the dataset cache's Pillow resize does not either."""
    matrix = similarity_transform(landmarks, TEMPLATE * (size / CROP_SIZE))
    pixels = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None]
    scale = float(np.hypot(*matrix[:, 0]))
    to_pixels = matrix
    if scale < 1:
        height, width = image.shape[:2]
        new = max(1, round(height * scale)), max(1, round(width * scale))
        pixels = F.interpolate(pixels, size=new, mode='bilinear', antialias=True, align_corners=False)
        sy, sx = new[0] / height, new[1] / width
        # a pixel centre p of the image lies at (p + 0.5) s - 0.5 in the resized one
        resized = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        to_pixels = matrix @ np.linalg.inv(resized)
    crop = warp(pixels.float(), to_pixels, size)
    return crop[0].round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy(), matrix


# ---------------------------------------------------------------- tracks across frames

def box_iou(a, b):
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - width * height
    return width * height / union if union > 0 else 0.0


class Tracker:
    """Face tracks across the frames of one video: each face continues the track whose box, moved on as it moved
    between its last two frames (constant velocity), it overlaps most (intersection over union at least TRACK_IOU, each
    track taken once, best pairs first); the others start new tracks. So two faces that cross paths keep their tracks,
    where their last boxes alone would swap them. A face missed for a frame starts a new track when it returns."""

    def __init__(self):
        self.previous, self.next_id = [], 0  # (track id, box, its move since the frame before) of the previous frame

    def __call__(self, boxes):
        expected = [(track, tuple(v + d for v, d in zip(box, move))) for track, box, move in self.previous]
        pairs = sorted(((box_iou(box, guess), i, track) for i, box in enumerate(boxes) for track, guess in expected),
                       reverse=True)
        tracks, taken = [None] * len(boxes), set()
        for iou, i, track in pairs:
            if iou >= TRACK_IOU and tracks[i] is None and track not in taken:
                tracks[i] = track
                taken.add(track)
        for i, track in enumerate(tracks):
            if track is None:
                tracks[i], self.next_id = self.next_id, self.next_id + 1
        last = {track: box for track, box, _ in self.previous}
        self.previous = [(track, box, tuple(v - w for v, w in zip(box, last[track])) if track in last else (0,) * 4)
                         for track, box in zip(tracks, boxes)]
        return tracks


class Smoother:
    """The tracks of one video's faces and each track's probabilities, averaged over its frames with --smooth N: an
    exponential moving average, the newest frame weighted 2/(N+1) (about N frames' memory); N = 0: each frame alone."""

    def __init__(self, smooth):
        self.tracker, self.averages = Tracker(), {}
        self.weight = 2 / (smooth + 1) if smooth else 1.0

    def __call__(self, boxes, probabilities):
        """(the track of each face, its probabilities smoothed along its track)."""
        tracks = self.tracker(boxes)
        for track, p in zip(tracks, probabilities):
            previous = self.averages.get(track)
            self.averages[track] = p if previous is None else self.weight * p + (1 - self.weight) * previous
        return tracks, [self.averages[track] for track in tracks]


# ---------------------------------------------------------------- video frames

def import_av():
    try:
        import av
    except ImportError:
        raise UserError(f'reading and writing videos needs the optional package PyAV: {VIDEO_INSTALL}') from None
    return av


def is_video(path):
    return os.path.isfile(path) and Path(path).suffix.lower() in VIDEO_EXTENSIONS


def video_rate(path):
    """The frame rate of a video file (frames per second), for its annotated copy."""
    av = import_av()
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate if container.streams.video else None
    except (av.error.FFmpegError, OSError):
        rate = None  # video_frames says why
    return float(rate) if rate else DEFAULT_FPS


def upright(image, rotation):
    """An H x W x 3 frame turned as its video's display matrix says (`rotation`: degrees counter-clockwise, as PyAV's
    VideoFrame.rotation gives it): a phone's portrait video is stored sideways, as its photos are with an EXIF
    orientation. Multiples of 90 degrees; a rotation between them is rounded to the nearest."""
    return np.ascontiguousarray(np.rot90(image, k=round(rotation / 90) % 4))


def frame_rotation(frame, stream):
    """Degrees counter-clockwise that a decoded frame is to be turned by: its display matrix (PyAV >= 13), else the
    'rotate' tag (clockwise degrees) of the stream in files of older FFmpeg versions."""
    rotation = getattr(frame, 'rotation', None)
    if rotation is not None:
        return rotation
    try:
        return -float(stream.metadata.get('rotate', 0))
    except ValueError:
        return 0


def video_frames(path):
    """Yield (frame index, time in seconds, H x W x 3 uint8 RGB, turned upright) of each frame of a video file, in
    order."""
    av = import_av()
    fix = 'give a video file PyAV (FFmpeg) can decode, such as .mp4 or .avi'
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError, UnicodeDecodeError) as e:
        raise UserError(f'video {path} cannot be read ({e}); {fix}') from None
    with container:
        if not container.streams.video:
            raise UserError(f'{path} holds no video stream; {fix}')
        stream = container.streams.video[0]
        rate = float(stream.average_rate) if stream.average_rate else DEFAULT_FPS
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = float(frame.time) if frame.time is not None else index / rate
                yield index, time, upright(frame.to_ndarray(format='rgb24'), frame_rotation(frame, stream))
        except av.error.FFmpegError as e:
            raise UserError(f'video {path} is corrupt or truncated ({e}); {fix}') from None


def frame_folder(folder):
    """The images of a frame folder in natural name order (frame_2 before frame_10), after checking, from their
    headers alone, that it holds some and that they have one size (as displayed, EXIF orientation applied), as a
    video's frames: so that a folder of mixed sizes is refused before anything is written."""
    paths = sorted(formats.image_files(Path(folder)), key=formats.natural_key)
    if not paths:
        raise UserError(f'frame folder {folder} holds no images ({", ".join(formats.IMAGE_EXTENSIONS)})')
    first = None
    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
                if image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8):  # a quarter turn: decode_image swaps them
                    width, height = height, width
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise UserError(f'frame {path} cannot be read ({e}); replace it with a readable image or remove it from '
                            f'the frame folder') from None
        if first is None:
            first = path, (width, height)
        elif (width, height) != first[1]:
            raise UserError(f'frame {path} is {width}x{height}, but {first[0]} is {first[1][0]}x{first[1][1]}; the '
                            f'frames of a frame folder must have one size, as a video\'s')
    return paths


def folder_frames(folder, fps=DEFAULT_FPS):
    """Yield (frame index, time in seconds at `fps`, H x W x 3 uint8 RGB) of the images of a frame folder (checked by
    frame_folder before the first is decoded)."""
    for index, path in enumerate(frame_folder(folder)):
        yield index, index / fps, decode_image(path)


class VideoWriter:
    """Frames encoded into a video file (H.264 in MP4 with PyAV), written as one atomic write (run_folder.atomic_file)
    that starts with the first frame: an interrupted run never leaves a truncated video under the final name, and a
    video of no frames leaves no file at all."""

    def __init__(self, path, fps):
        self.av = import_av()
        run_folder.check_output_folder(path)
        self.path, self.fps = path, Fraction(fps).limit_denominator(1001)
        self.file, self.container, self.stream = contextlib.ExitStack(), None, None

    def write(self, image):
        height, width = (s - s % 2 for s in image.shape[:2])  # 4:2:0 chroma needs even sizes
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format='rgb24')
        try:
            if self.container is None:
                tmp = self.file.enter_context(run_folder.atomic_file(self.path))
                self.container = self.file.enter_context(self.av.open(tmp, 'w', format='mp4'))
                codec = 'libx264' if 'libx264' in self.av.codecs_available else 'mpeg4'
                self.stream = self.container.add_stream(codec, rate=self.fps)
                self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, 'yuv420p'
            self.container.mux(self.stream.encode(frame))
        except OSError as e:  # a full disk: the file goes (__exit__), the error says what to do
            raise run_folder.write_error(self.path, e) from None

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """Finish the file and give it its name; after an error (or Ctrl-C) remove it instead, and let the error go
        on as it is."""
        if kind is None and self.stream is not None:
            try:
                self.container.mux(self.stream.encode(None))
            except OSError as e:
                self.file.__exit__(type(e), e, e.__traceback__)
                raise run_folder.write_error(self.path, e) from None
        try:
            return self.file.__exit__(kind, error, traceback)
        except OSError as e:  # closing or renaming the finished file
            if kind is not None:
                raise
            raise run_folder.write_error(self.path, e) from None


# ---------------------------------------------------------------- predict.py --faces: a row per face

FACE_COLUMNS = ['frame', 'time', 'face', 'track', 'x0', 'y0', 'x1', 'y1', 'score']  # CSV columns after the path


def face_cells(row):
    """The FACE_COLUMNS of a row, '' where it has none (an image has no frame, a row without a face no box)."""
    cells = [row.get('frame'), row.get('time'), row.get('face'), row.get('track'), *row.get('box', [None] * 4),
             row.get('score')]
    return ['' if v is None else v for v in cells]


def classify_faces(trained, paths, detector, device, args, log):
    """Yield, in order, one row per face of each image, video frame or frame of a frame folder: {'path', 'frame',
    'time', 'face', 'track', 'box', 'score', 'top'}; a row {'path', 'frame', 'time', 'no_face', 'error'} for an image
    or frame without a face; a row {'path', 'frame', 'time', 'error'} for an unreadable image, a video without frames
    and an unreadable or truncated video (logged and skipped; the rows of the frames read before stay). Faces are
    numbered left to right; in a video, `track` follows a face across frames and --smooth averages each track's
    probabilities over frames (Smoother)."""
    model = network_on(trained, device)
    seconds = dict.fromkeys(('detection', 'alignment', 'classification'), 0.0)
    counts = dict.fromkeys(('frames', 'faces', 'no face', 'unreadable'), 0)
    names = OutputNames()
    for path in paths:
        try:
            video, frames = face_frames(path, args.fps)
        except UserError as e:  # an image that cannot be decoded; a video says so when its frames are read
            problem = str(e)
        else:
            problem = yield from input_rows(trained, model, detector, path, video, frames, names(path), device, args,
                                            seconds, counts)
        if problem:
            log(f'skipped: {problem}')
            counts['unreadable'] += 1
            yield {'path': path, 'frame': None, 'time': None, 'error': problem}
    per_face = lambda what: f'{1000 * seconds[what] / max(counts["faces"], 1):.1f} ms'
    log(f'{counts["faces"]} faces in {counts["frames"]} images or frames ({counts["no face"]} without a face'
        + (f', {counts["unreadable"]} unreadable or empty, listed above' if counts['unreadable'] else '') + f') on '
        f'{device}: detection {1000 * seconds["detection"] / max(counts["frames"], 1):.1f} ms per image, alignment '
        f'{per_face("alignment")} and classification {per_face("classification")} per face'
        + (f'; predictions in {args.out}' if args.out else ''))


def input_rows(trained, model, detector, path, video, frames, name, device, args, seconds, counts):
    """Yield the rows of one image, video or frame folder (classify_faces), writing its annotated frames and class
    maps; return why its frames could not all be read, or None. The frames of a video are detected and classified
    FRAMES_PER_BATCH at a time: one MTCNN pass, one forward pass of their faces."""
    annotated = annotation_output(args.annotate, path, name)
    smoother, topk, read = Smoother(args.smooth), min(args.topk, len(trained.class_names)), 0
    with annotated if isinstance(annotated, VideoWriter) else contextlib.nullcontext():
        for batch in frame_batches(frames):
            if isinstance(batch, UserError):
                return str(batch)
            found, sources, probabilities = classify_frames(trained, model, detector, [image for _, _, image in batch],
                                                            device, args.batch_size, seconds)
            rows = []
            for (index, time_s, image), faces, p in zip(batch, found, probabilities.split([len(f) for f in found])):
                tracks, p = smoother([face.box for face in faces], p) if video else ([None] * len(faces), p)
                frame_rows = face_rows(path, index, time_s, faces, tracks, p, trained.class_names, topk, detector)
                if annotated is not None:
                    boxes = [(row['box'], face_label(row, video)) for row in frame_rows if 'box' in row]
                    write_annotated(annotated, visualize.draw_faces(image, boxes),
                                    name if index is None else f'{index:06d}')
                rows += frame_rows
            if args.cam and sources is not None:
                classified = [row for row in rows if 'box' in row]
                write_class_maps(trained, sources, [row['top'][0][0] for row in classified], device,
                                 [os.path.join(args.cam, map_name(name, row)) for row in classified])
            read += len(batch)
            counts['frames'] += len(batch)
            counts['faces'] += len(probabilities)
            counts['no face'] += sum(not faces for faces in found)
            yield from rows
    if video and not read:
        return f'video {path} has no frames (its video stream is empty); there is nothing to classify'
    return None


def map_name(name, row):
    """The file of a face's class map: <name>_face<i>.png, <name>_frame<n>_face<i>.png in a video."""
    frame = '' if row['frame'] is None else f'_frame{row["frame"]:06d}'
    return f'{name}{frame}_face{row["face"]}.png'


def face_frames(path, fps):
    """(is a video, the frames of an image, video file or frame folder as (index, time, H x W x 3 uint8)); an image's
    one frame has index and time None."""
    if os.path.isdir(path):
        return True, folder_frames(path, fps)
    if is_video(path):
        return True, video_frames(path)
    return False, [(None, None, decode_image(path))]


def frame_batches(frames):
    """Lists of up to FRAMES_PER_BATCH consecutive frames of one size; where reading the frames fails (an unreadable
    or truncated video), the UserError that says so, last."""
    batch = []
    try:
        for frame in frames:
            if batch and (len(batch) == FRAMES_PER_BATCH or frame[2].shape != batch[0][2].shape):
                yield batch
                batch = []
            batch.append(frame)
    except UserError as e:
        if batch:
            yield batch
        yield e
        return
    if batch:
        yield batch


def classify_frames(trained, model, detector, images, device, batch_size, seconds):
    """(the faces of each image of a list of images of one size, the uint8 source images of their aligned crops in
    that order as the evaluation holds its images (N x 3 x S x S, None without a face), their class probabilities on
    the CPU (N x classes)), adding the time of each step to `seconds`."""
    start = time.perf_counter()
    found = detector.detect(images)
    detected = time.perf_counter()
    crops = [align(image, face.landmarks)[0] for image, faces in zip(images, found) for face in faces]
    aligned = time.perf_counter()
    sources, probabilities = None, torch.zeros(0, len(trained.class_names))
    if crops:
        sources = torch.stack([torch.from_numpy(as_source(crop, trained.input)).permute(2, 0, 1) for crop in crops])
        amp_dtype, _ = utils.amp_settings(device, trained.args.amp)
        probabilities = predict_probabilities(model, sources, trained.args, device, trained.args.batch_size
                                              if batch_size is None else batch_size, amp_dtype).cpu()
    seconds['detection'] += detected - start
    seconds['alignment'] += aligned - detected
    seconds['classification'] += time.perf_counter() - aligned
    return found, sources, probabilities


def face_rows(path, index, time_s, faces, tracks, probabilities, class_names, topk, detector):
    """The rows of one image or frame: one per face with its `topk` likeliest classes, or one saying it has none."""
    rows = []
    for i, (face, track, p) in enumerate(zip(faces, tracks, probabilities)):
        values, indices = p.topk(topk)
        rows.append({'path': path, 'frame': index, 'time': time_s, 'face': i, 'track': track,
                     'box': [round(v, 1) for v in face.box], 'score': face.score,
                     'top': [(class_names[c], q) for c, q in zip(indices.tolist(), values.tolist())]})
    if not faces:
        rows.append({'path': path, 'frame': index, 'time': time_s, 'no_face': True, 'error': detector.missed})
    return rows


def as_source(crop, run_input):
    """An aligned crop as the run's evaluation decodes an image: through data_loader.decode_image itself (grey for a
    grey run, resized to its source size), from the crop's lossless PNG, so that the two can never differ."""
    encoded = io.BytesIO()
    Image.fromarray(crop).save(encoded, format='PNG')
    return decode_image(encoded, run_input['source_size'], run_input['grayscale'])


def face_label(row, track=False):
    """The text drawn beside a face: its index (its track in a video) and its likeliest class."""
    (name, p), = row['top'][:1]
    return f'{"track" if track else "face"} {row["track"] if track else row["face"]}: {name} {100 * p:.0f}%'


class OutputNames:
    """File names in an output folder, one per input: the input's name, with -2, -3, ... for a repeated one."""

    def __init__(self):
        self.used = set()

    def __call__(self, path):
        stem = Path(path).stem or Path(path).name
        name, n = stem, 1
        while name in self.used:
            n += 1
            name = f'{stem}-{n}'
        self.used.add(name)
        return name


def annotation_output(folder, path, name):
    """Where the annotated frames of `path` go: None without --annotate; a VideoWriter for a video file (at its own
    frame rate; no file for a video without frames); a sub-folder of `folder` for a frame folder; `folder` itself for
    an image."""
    if folder is None:
        return None
    if is_video(path):
        return VideoWriter(os.path.join(folder, f'{name}.mp4'), video_rate(path))
    if os.path.isdir(path):
        os.makedirs(os.path.join(folder, name), exist_ok=True)
        return os.path.join(folder, name)
    return folder


def write_annotated(output, image, name):
    if isinstance(output, VideoWriter):
        output.write(np.asarray(image))
    else:
        run_folder.atomic_write(os.path.join(output, f'{name}.jpg'),
                                lambda tmp: image.save(tmp, format='JPEG', quality=ANNOTATED_JPEG_QUALITY))


# ---------------------------------------------------------------- where the network looks: class activation maps

def write_class_maps(trained, sources, predicted, device, paths):
    """For each uint8 source image (N x 3 x S x S, as the evaluation's cache holds it) the map of its predicted class
    (a class name), drawn over the image as the network saw it (grey for a grey run) into `paths`."""
    classes = torch.tensor([trained.class_names.index(name) for name in predicted], device=device)
    loader = data_loader.evaluation_loader(sources, torch.zeros(len(sources), dtype=torch.int64), trained.args, device,
                                           batch_size=len(sources))
    x, _ = next(iter(loader))
    maps, method = activation_maps(network_on(trained, device), x.float(), classes)
    for image, heat, name, path in zip(sources, display_maps(maps, sources.shape[-1]).cpu(), predicted, paths):
        visualize.plot_class_map(image.permute(1, 2, 0).numpy(), heat.numpy(), path, f'{name}: {method}' + (
            ' (1x1 feature map: uniform)' if maps.shape[-2:] == (1, 1) else ''))


def write_image_maps(trained, rows, device, folder):
    """The class maps of whole images (predict.py --cam without --faces), a batch at a time."""
    names = OutputNames()
    batch = trained.args.batch_size
    for first in range(0, len(rows), batch):
        part = rows[first:first + batch]
        sources = torch.stack([torch.from_numpy(decode_image(
            row['path'], trained.input['source_size'], trained.input['grayscale'])).permute(2, 0, 1) for row in part])
        write_class_maps(trained, sources, [row['top'][0][0] for row in part], device,
                         [os.path.join(folder, f'{names(row["path"])}.png') for row in part])
