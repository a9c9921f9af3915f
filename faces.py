"""Faces in photographs and videos: detection with five landmarks (MTCNN, an optional extra), alignment onto the 100x100
geometry of RAF-DB's aligned images by a similarity transform, face tracks across frames, and video frames (PyAV)."""
import contextlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import formats
import run_folder
from data_loader import SOURCE_SIZE, decode_image
from errors import UserError

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
TRACK_IOU = 0.3  # a face continues the track of the previous frame's face it overlaps at least this much
DEFAULT_FPS = 25  # frame folders carry no frame rate


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

    def __call__(self, image):
        """The faces of an H x W x 3 uint8 RGB image."""
        with torch.no_grad():
            boxes, scores, points = self.mtcnn.detect(Image.fromarray(image), landmarks=True)
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
    """Face tracks across the frames of one video: each face continues the track of the previous frame's face it
    overlaps most (intersection over union at least TRACK_IOU, each track taken once, best pairs first); the others
    start new tracks. A face missed for a frame starts a new track when it returns."""

    def __init__(self):
        self.previous, self.next_id = [], 0  # (track id, box) of the previous frame

    def __call__(self, boxes):
        pairs = sorted(((box_iou(box, old), i, track) for i, box in enumerate(boxes) for track, old in self.previous),
                       reverse=True)
        tracks, taken = [None] * len(boxes), set()
        for iou, i, track in pairs:
            if iou >= TRACK_IOU and tracks[i] is None and track not in taken:
                tracks[i] = track
                taken.add(track)
        for i, track in enumerate(tracks):
            if track is None:
                tracks[i], self.next_id = self.next_id, self.next_id + 1
        self.previous = list(zip(tracks, boxes))
        return tracks


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


def video_frames(path):
    """Yield (frame index, time in seconds, H x W x 3 uint8 RGB) of each frame of a video file, in order."""
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
                yield index, time, frame.to_ndarray(format='rgb24')
        except av.error.FFmpegError as e:
            raise UserError(f'video {path} is corrupt or truncated ({e}); {fix}') from None


def folder_frames(folder, fps=DEFAULT_FPS):
    """Yield (frame index, time in seconds at `fps`, H x W x 3 uint8 RGB) of the images of a frame folder in natural
    name order (frame_2 before frame_10); its frames must have one size, as a video's."""
    paths = sorted(formats.image_files(Path(folder)), key=formats.natural_key)
    if not paths:
        raise UserError(f'frame folder {folder} holds no images ({", ".join(formats.IMAGE_EXTENSIONS)})')
    first = None
    for index, path in enumerate(paths):
        frame = decode_image(path)
        if first is None:
            first = path, frame.shape
        elif frame.shape != first[1]:
            raise UserError(f'frame {path} is {frame.shape[1]}x{frame.shape[0]}, but {first[0]} is '
                            f'{first[1][1]}x{first[1][0]}; the frames of a frame folder must have one size, as a '
                            f'video\'s')
        yield index, index / fps, frame


class VideoWriter:
    """Frames encoded into a video file (H.264 in MP4 with PyAV), written under a temporary name and renamed when
    closed, so that an interrupted run never leaves a truncated video under the final name."""

    def __init__(self, path, fps):
        self.av = import_av()
        run_folder.check_output_folder(path)
        self.path, self.fps, self.stream = path, Fraction(fps).limit_denominator(1001), None
        handle, self.tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.tmp',
                                            dir=os.path.dirname(os.path.abspath(path)))
        os.close(handle)
        self.container = self.av.open(self.tmp, 'w', format='mp4')

    def write(self, image):
        height, width = (s - s % 2 for s in image.shape[:2])  # 4:2:0 chroma needs even sizes
        if self.stream is None:
            codec = 'libx264' if 'libx264' in self.av.codecs_available else 'mpeg4'
            self.stream = self.container.add_stream(codec, rate=self.fps)
            self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, 'yuv420p'
        frame = self.av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:height, :width]), format='rgb24')
        self.container.mux(self.stream.encode(frame))

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        """Finish the file and give it its name; after an error (or Ctrl-C) remove it instead."""
        try:
            if kind is None and self.stream is not None:
                self.container.mux(self.stream.encode(None))
            self.container.close()
            if kind is None:
                os.replace(self.tmp, self.path)
        finally:
            with contextlib.suppress(OSError):
                os.remove(self.tmp)
