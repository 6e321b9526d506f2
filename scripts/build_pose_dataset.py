#!/usr/bin/env python3
"""Build a COCO-17 keypoint dataset from OpenCV's pedestrian video (vtest.avi) with a pose teacher.

One command (any Python 3.9-3.12; only the standard library is needed to start):

    python3 scripts/build_pose_dataset.py --out datasets/vtest_pose

Pipeline (see docs/data.md):
  1. read every --frame-step'th frame of vtest.avi (Debian opencv-doc);
  2. person boxes from OpenCV's HOG people detector on the frame upscaled --hog-upscale times, raw windows merged by
     our own non-maximum suppression (IoU and containment), weak windows dropped;
  3. each box is cut out with context as a 3:4 portrait crop, enlarged to --crop-height pixels, and given to the
     mediapipe 0.10.21 BlazePose teacher (model_complexity=1, static images) twice: as is and mirrored;
  4. the 33 BlazePose landmarks are reduced to COCO-17, mapped back to frame pixels (pixel-center convention of
     models/keypoints.py), both passes averaged; poses are dropped when the teacher is unsure (mean visibility), when
     the mirrored pass disagrees (left/right swaps, hallucinated people), when the keypoints fall mostly outside the
     HOG box (the teacher locked onto a neighbour) and when two boxes produced the same person;
  5. time split: the last --val-fraction of the video is val; --gap-frames frames before it are dropped;
  6. COCO JSON (person_keypoints_{train,val}.json) and JPEG frames (only frames with a kept pose) are written.

mediapipe needs numpy<2 and protobuf<5, so it lives in its own virtual environment (--teacher-venv, default
.venv-teacher/, git-ignored). This script creates it when missing (pinned versions below) and re-runs itself inside it;
mediapipe is never a dependency of binpose.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_VENV = REPO / ".venv-teacher"
TEACHER_PACKAGES = [
    "mediapipe==0.10.21",
    "numpy==1.26.4",
    "protobuf==4.25.9",
    "opencv-python-headless==4.11.0.86",
    "opencv-contrib-python==4.11.0.86",  # mediapipe's own requirement; pinned to the same OpenCV build
    "tqdm",
]
VIDEO_DIR = Path("/usr/share/doc/opencv-doc/examples/data")
DATASET_VERSION = 1

# BlazePose (33 landmarks) -> COCO-17 order.
BLAZEPOSE_TO_COCO = [0, 2, 5, 7, 8, 11, 12, 13, 14, 15, 16, 23, 24, 25, 26, 27, 28]
COCO_KEYPOINTS = [
    "nose",
    "left_eye",
    "right_eye",
    "left_ear",
    "right_ear",
    "left_shoulder",
    "right_shoulder",
    "left_elbow",
    "right_elbow",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_knee",
    "right_knee",
    "left_ankle",
    "right_ankle",
]
# 1-based, exactly as in COCO's person_keypoints files.
COCO_SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
COCO_FLIP = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]
# COCO per-keypoint OKS sigmas (used only to find duplicate poses of one person).
COCO_SIGMAS = [
    0.026,
    0.025,
    0.025,
    0.035,
    0.035,
    0.079,
    0.079,
    0.072,
    0.072,
    0.062,
    0.062,
    0.107,
    0.107,
    0.087,
    0.087,
    0.089,
    0.089,
]


# ----------------------------------------------------------------------------------------------------------------------
# bootstrap: make sure we run inside the teacher venv
# ----------------------------------------------------------------------------------------------------------------------


def _in_venv(venv: Path) -> bool:
    return Path(sys.prefix).resolve() == venv.resolve()


def ensure_teacher_venv(venv: Path) -> Path:
    py = venv / "bin" / "python"
    marker = venv / ".binpose-teacher-ok"
    want = "\n".join(TEACHER_PACKAGES)
    if marker.exists() and marker.read_text() == want and py.exists():
        return py
    print(f"[build_pose_dataset] creating teacher venv {venv} ({', '.join(TEACHER_PACKAGES)})", file=sys.stderr)
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", *TEACHER_PACKAGES], check=True)
    subprocess.run([str(py), "-c", "import mediapipe, cv2, numpy; cv2.HOGDescriptor_getDefaultPeopleDetector()"], check=True)
    marker.write_text(want)
    return py


def limit_threads(n: int) -> None:
    for k in (
        "OMP_NUM_THREADS",
        "OPENBLAS_NUM_THREADS",
        "MKL_NUM_THREADS",
        "TF_NUM_INTEROP_THREADS",
        "TF_NUM_INTRAOP_THREADS",
    ):
        os.environ[k] = str(n)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("GLOG_minloglevel", "2")
    try:  # mediapipe's XNNPACK pool ignores OMP_NUM_THREADS; CPU affinity is what really holds it to n cores
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[-n:]))
    except (AttributeError, OSError):
        pass


# ----------------------------------------------------------------------------------------------------------------------
# stages (run inside the teacher venv)
# ----------------------------------------------------------------------------------------------------------------------


def find_video(path: str | None, tmpdir: Path) -> Path:
    cands = [Path(path)] if path else [VIDEO_DIR / "vtest.avi", VIDEO_DIR / "vtest.avi.gz"]
    for c in cands:
        if c.exists():
            if c.suffix == ".gz":
                out = tmpdir / c.stem
                with gzip.open(c, "rb") as f, open(out, "wb") as g:
                    shutil.copyfileobj(f, g)
                return out
            return c
    sys.exit(f"vtest.avi not found (looked at {', '.join(map(str, cands))}); apt-get install opencv-doc")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def nms(boxes, scores, iou_thr: float, contain_thr: float):
    """Greedy NMS on [x1,y1,x2,y2]; also drops a box mostly contained in a stronger one (HOG fires on body parts)."""
    import numpy as np

    order = np.argsort(-scores, kind="stable")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep = []
    while len(order):
        i, rest = order[0], order[1:]
        keep.append(int(i))
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(xx2 - xx1, 0, None) * np.clip(yy2 - yy1, 0, None)
        iou = inter / (area[i] + area[rest] - inter)
        contain = inter / np.minimum(area[i], area[rest])
        order = rest[(iou < iou_thr) & (contain < contain_thr)]
    return keep


def hog_detect(hog, frame, a):
    import cv2
    import numpy as np

    s = a.hog_upscale
    img = cv2.resize(frame, None, fx=s, fy=s, interpolation=cv2.INTER_LINEAR) if s != 1 else frame
    rects, weights = hog.detectMultiScale(
        img,
        hitThreshold=a.hog_hit_threshold,
        winStride=(a.hog_stride,) * 2,
        padding=(16, 16),
        scale=a.hog_scale,
        groupThreshold=0,
    )
    if len(rects) == 0:
        return np.zeros((0, 4)), np.zeros((0,))
    rects = np.asarray(rects, dtype=np.float64)
    boxes = np.stack([rects[:, 0], rects[:, 1], rects[:, 0] + rects[:, 2], rects[:, 1] + rects[:, 3]], 1)
    # HOG boxes live in upscaled pixel-edge coordinates; map edges back to frame pixel edges.
    boxes = boxes / s
    scores = np.asarray(weights, dtype=np.float64).ravel()
    keep = [i for i in nms(boxes, scores, a.nms_iou, a.nms_contain) if scores[i] >= a.hog_min_score]
    return boxes[keep], scores[keep]


class Teacher:
    def __init__(self, complexity: int):
        import mediapipe as mp

        self.pose = mp.solutions.pose.Pose(
            static_image_mode=True, model_complexity=complexity, enable_segmentation=False, min_detection_confidence=0.5
        )

    def run(self, rgb):
        """-> (17, 3) array of (x, y, visibility) in crop pixel-center coordinates, or None."""
        import numpy as np

        res = self.pose.process(rgb)
        if res.pose_landmarks is None:
            return None
        h, w = rgb.shape[:2]
        lm = res.pose_landmarks.landmark
        # mediapipe normalizes continuous coordinates: pixel-center x = x_norm * w - 0.5
        return np.array(
            [[lm[j].x * w - 0.5, lm[j].y * h - 0.5, lm[j].visibility] for j in BLAZEPOSE_TO_COCO], dtype=np.float64
        )


def teach_box(teacher, frame, box, a, aspect=0.75):
    """Run the teacher on an enlarged crop (width/height = aspect) around a HOG box, plain and mirrored.

    Returns the two (17, 3) keypoint arrays in frame pixels, or None when either pass finds nobody."""
    import cv2
    import numpy as np

    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5  # edges -> pixel-center coordinates
    ch = a.crop_context * (y2 - y1)
    cw = aspect * ch
    s = a.crop_height / ch
    out_w, out_h = int(round(cw * s)), int(a.crop_height)
    # dst = s * (src - (c - size/2)) in continuous coords; in pixel-center coords add 0.5*(s-1)
    tx = -s * (cx + 0.5 - cw / 2) + 0.5 * (s - 1)
    ty = -s * (cy + 0.5 - ch / 2) + 0.5 * (s - 1)
    M = np.array([[s, 0, tx], [0, s, ty]], dtype=np.float64)
    crop = cv2.warpAffine(
        frame, M, (out_w, out_h), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0)
    )
    rgb = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB)
    kp = teacher.run(rgb)
    if kp is None:
        return None
    kpf = teacher.run(np.ascontiguousarray(rgb[:, ::-1]))
    if kpf is None:
        return None
    kpf = kpf[COCO_FLIP]
    kpf[:, 0] = out_w - 1 - kpf[:, 0]
    to_frame = lambda k: np.stack([(k[:, 0] - tx) / s, (k[:, 1] - ty) / s, k[:, 2]], 1)  # noqa: E731
    return to_frame(kp), to_frame(kpf)


def make_annotation(box, hog_score, kpa, kpb, width, height, a):
    """Combine both teacher passes into a COCO annotation dict, or (None, reason)."""
    import numpy as np

    xy = (kpa[:, :2] + kpb[:, :2]) / 2
    vis = (kpa[:, 2] + kpb[:, 2]) / 2
    ext = xy.max(0) - xy.min(0)
    person_h = max(float(ext[1]), 1e-6)
    flip_err = np.linalg.norm(kpa[:, :2] - kpb[:, :2], axis=1) / person_h
    score = float(vis.mean())
    if score < a.min_pose_score:
        return None, "low_score"
    if float(np.median(flip_err)) > a.max_flip_err:
        return None, "flip_disagree"
    x1, y1, x2, y2 = box
    bw, bh = x2 - x1, y2 - y1
    mx, my = a.box_margin * bw, a.box_margin * bh
    inside_box = (xy[:, 0] >= x1 - mx) & (xy[:, 0] <= x2 + mx) & (xy[:, 1] >= y1 - my) & (xy[:, 1] <= y2 + my)
    if inside_box.mean() < a.min_inside_box:
        return None, "outside_box"
    # implausible size for the box: the teacher found something much smaller/larger than the HOG person
    if not (0.35 * bh <= person_h <= 1.3 * bh):
        return None, "size_mismatch"

    in_img = (xy[:, 0] >= 0) & (xy[:, 0] <= width - 1) & (xy[:, 1] >= 0) & (xy[:, 1] <= height - 1)
    labelled = in_img & (vis >= a.min_kp_score)
    v = np.where(labelled & (vis >= 0.5) & (flip_err <= 2 * a.max_flip_err), 2, np.where(labelled, 1, 0))
    if int((v > 0).sum()) < a.min_keypoints:
        return None, "few_keypoints"
    kps = []
    for (x, y), vi in zip(xy, v, strict=True):
        kps += [round(float(x), 2), round(float(y), 2), int(vi)] if vi > 0 else [0, 0, 0]

    # bbox: the labelled keypoints' extent, extended for the head above the eyes/ears, the feet below the ankles and
    # the body's width; clipped to the image. (HOG windows carry fixed padding and are often off-centre.)
    lab = xy[v > 0]
    kx1, ky1 = lab.min(0)
    kx2, ky2 = lab.max(0)
    kh = max(ky2 - ky1, 1.0)
    pad_x = max(0.1 * (kx2 - kx1), 0.12 * kh)
    bx1 = max(0.0, kx1 - pad_x)
    bx2 = min(float(width), kx2 + pad_x)
    by1 = max(0.0, ky1 - (0.12 if v[0] > 0 or v[1] > 0 else 0.3) * kh)
    by2 = min(float(height), ky2 + (0.06 if v[15] > 0 or v[16] > 0 else 0.3) * kh)
    bbox = [round(bx1, 2), round(by1, 2), round(bx2 - bx1, 2), round(by2 - by1, 2)]
    ann = {
        "category_id": 1,
        "iscrowd": 0,
        "bbox": bbox,
        "area": round(bbox[2] * bbox[3], 2),
        "num_keypoints": int((v > 0).sum()),
        "keypoints": kps,
        # extras (not in COCO): the teacher's evidence
        "score": round(score, 4),
        "keypoint_scores": [round(float(s), 4) for s in vis],
        "keypoint_flip_err": [round(float(e), 4) for e in flip_err],
        "hog_bbox": [round(float(x1), 2), round(float(y1), 2), round(float(bw), 2), round(float(bh), 2)],
        "hog_score": round(float(hog_score), 4),
    }
    return ann, "kept"


def oks(a1, a2):
    import numpy as np

    k1 = np.array(a1["keypoints"], dtype=np.float64).reshape(17, 3)
    k2 = np.array(a2["keypoints"], dtype=np.float64).reshape(17, 3)
    vis = (k1[:, 2] > 0) & (k2[:, 2] > 0)
    if not vis.any():
        return 0.0
    area = max(a1["area"], a2["area"])
    var = (2 * np.array(COCO_SIGMAS)) ** 2
    d2 = ((k1[:, :2] - k2[:, :2]) ** 2).sum(1)
    return float(np.exp(-d2 / (2 * area * var + 1e-9))[vis].mean())


def dedup(anns, thr):
    anns = sorted(anns, key=lambda x: -x["score"])
    kept = []
    for x in anns:
        if all(oks(x, k) < thr for k in kept):
            kept.append(x)
    return kept


def draw_samples(out_dir: Path, dst: Path, n_train: int = 3, n_val: int = 3):
    """Draw kept keypoints on a few frames of each split into one PNG (2 columns)."""
    import cv2
    import numpy as np

    tiles = []
    for split, n in (("train", n_train), ("val", n_val)):
        d = json.loads((out_dir / "annotations" / f"person_keypoints_{split}.json").read_text())
        by_img = {}
        for ann in d["annotations"]:
            by_img.setdefault(ann["image_id"], []).append(ann)
        imgs = sorted((im for im in d["images"] if im["id"] in by_img), key=lambda im: im["frame_index"])
        if not imgs:
            continue
        picks = [imgs[int(round(i))] for i in np.linspace(0, len(imgs) - 1, n + 2)[1:-1]]
        for im in picks:
            frame = cv2.imread(str(out_dir / "images" / split / im["file_name"]))
            for ann in by_img[im["id"]]:
                k = np.array(ann["keypoints"], dtype=np.float64).reshape(17, 3)
                x, y, w, h = ann["bbox"]
                cv2.rectangle(frame, (int(x), int(y)), (int(x + w), int(y + h)), (255, 255, 0), 1)
                for i, j in COCO_SKELETON:
                    if k[i - 1, 2] > 0 and k[j - 1, 2] > 0:
                        cv2.line(
                            frame,
                            tuple(k[i - 1, :2].astype(int)),
                            tuple(k[j - 1, :2].astype(int)),
                            (0, 255, 0),
                            1,
                            cv2.LINE_AA,
                        )
                for p in k:
                    if p[2] > 0:
                        cv2.circle(
                            frame, tuple(p[:2].astype(int)), 2, (0, 255, 255) if p[2] == 2 else (0, 0, 255), -1, cv2.LINE_AA
                        )
            cv2.putText(
                frame,
                f"{split} frame {im['frame_index']}  ({len(by_img[im['id']])} poses)",
                (8, 22),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.7,
                (255, 255, 255),
                2,
                cv2.LINE_AA,
            )
            tiles.append(frame)
    if len(tiles) % 2:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + 2], 1) for i in range(0, len(tiles), 2)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    sheet = np.concatenate(rows, 0)
    sheet = cv2.resize(sheet, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)  # keep the PNG small
    cv2.imwrite(str(dst), sheet, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    print(f"samples -> {dst}")


def build(a) -> None:
    import cv2
    from tqdm import tqdm

    cv2.setNumThreads(a.threads)
    out = Path(a.out)
    with tempfile.TemporaryDirectory() as td:
        video = find_video(a.video, Path(td))
        video_sha = sha256(video)
        cap = cv2.VideoCapture(str(video))
        frames = []
        while True:
            ok, f = cap.read()
            if not ok:
                break
            frames.append(f)
        cap.release()
    n_frames = len(frames)
    if n_frames == 0:
        sys.exit(f"could not decode {video}")
    height, width = frames[0].shape[:2]
    val_start = int(round(n_frames * (1 - a.val_fraction)))
    train_end = val_start - a.gap_frames
    limit = n_frames if a.limit_frames is None else min(n_frames, a.limit_frames)
    idx = [i for i in range(0, limit, a.frame_step) if i < train_end or i >= val_start]

    hog = cv2.HOGDescriptor()
    hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
    teacher = Teacher(a.model_complexity)

    stats = {
        "frames_total": n_frames,
        "frames_processed": len(idx),
        "hog_boxes": 0,
        "teacher_none": 0,
        "low_score": 0,
        "flip_disagree": 0,
        "outside_box": 0,
        "size_mismatch": 0,
        "few_keypoints": 0,
        "duplicate": 0,
        "kept": 0,
        "kept_on_retry": 0,
    }
    per_frame = {}
    for fi in tqdm(idx, desc="HOG + teacher", unit="frame", dynamic_ncols=True):
        boxes, scores = hog_detect(hog, frames[fi], a)
        stats["hog_boxes"] += len(boxes)
        anns = []
        for box, sc in zip(boxes, scores, strict=True):
            # a wide 3:4 crop first; if the teacher finds nobody, or somebody else (a neighbour: outside the box,
            # wrong size, unstable under mirroring), retry on a narrow 1:2 crop that leaves most neighbours out.
            for aspect in a.crop_aspects:
                res = teach_box(teacher, frames[fi], box, a, aspect)
                if res is None:
                    ann, why = None, "teacher_none"
                else:
                    ann, why = make_annotation(box, sc, res[0], res[1], width, height, a)
                if ann is not None:
                    break
            stats[why] += 1
            stats["kept_on_retry"] += int(ann is not None and aspect != a.crop_aspects[0])
            if ann is not None:
                anns.append(ann)
        kept = dedup(anns, a.dedup_oks)
        stats["duplicate"] += len(anns) - len(kept)
        stats["kept"] -= len(anns) - len(kept)
        if kept:
            per_frame[fi] = sorted(kept, key=lambda x: (x["bbox"][0], x["bbox"][1]))

    if out.exists():
        for sub in ("annotations", "images"):
            shutil.rmtree(out / sub, ignore_errors=True)
    categories = [
        {"id": 1, "name": "person", "supercategory": "person", "keypoints": COCO_KEYPOINTS, "skeleton": COCO_SKELETON}
    ]
    info = {
        "description": "vtest_pose: COCO-17 pseudo-labels on OpenCV's vtest.avi (HOG boxes + mediapipe BlazePose)",
        "version": DATASET_VERSION,
        "video": "vtest.avi (Debian opencv-doc)",
        "video_sha256": video_sha,
        "frames_total": n_frames,
        "val_start_frame": val_start,
        "train_end_frame": train_end,
        "teacher": f"mediapipe==0.10.21 pose, model_complexity={a.model_complexity}, static_image_mode=True, plain+mirrored",
        "detector": f"cv2.HOGDescriptor_getDefaultPeopleDetector (opencv {cv2.__version__})",
        "params": {k: v for k, v in sorted(vars(a).items()) if k not in ("out", "video", "samples")},
        "keypoint_coordinates": "pixels, pixel-center convention (center of pixel (i, j) is (i, j))",
        "extras": "annotation.score = mean teacher visibility; keypoint_scores = teacher visibility per keypoint "
        "(mean of plain and mirrored pass); keypoint_flip_err = |plain - mirrored| / person height; "
        "hog_bbox/hog_score = detector box (x, y, w, h) and SVM score; area = bbox w*h",
    }
    counts = {}
    enc = [cv2.IMWRITE_JPEG_QUALITY, a.jpeg_quality, cv2.IMWRITE_JPEG_OPTIMIZE, 1]
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        (out / "annotations").mkdir(parents=True, exist_ok=True)
        fis = [fi for fi in sorted(per_frame) if (fi >= val_start) == (split == "val")]
        images, anns = [], []
        for fi in tqdm(fis, desc=f"write {split}", unit="img", dynamic_ncols=True):
            name = f"vtest_{fi:06d}.jpg"
            cv2.imwrite(str(out / "images" / split / name), frames[fi], enc)
            images.append({"id": fi + 1, "file_name": name, "width": width, "height": height, "frame_index": fi})
            for ann in per_frame[fi]:
                anns.append({"id": len(anns) + 1 + (0 if split == "train" else 1_000_000), "image_id": fi + 1, **ann})
        d = {
            "info": {**info, "split": split},
            "licenses": [],
            "images": images,
            "annotations": anns,
            "categories": categories,
        }
        (out / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(d, separators=(",", ":")))
        counts[split] = {"images": len(images), "annotations": len(anns), "frames": [fis[0], fis[-1]] if fis else None}
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    summary = {"stats": stats, "splits": counts, "bytes": size}
    (out / "build_summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    print(json.dumps(summary, indent=1, sort_keys=True))
    if a.samples:
        draw_samples(out, Path(a.samples))


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--out", default=str(REPO / "datasets" / "vtest_pose"))
    p.add_argument("--video", default=None, help="vtest.avi (or .gz); default: the opencv-doc copy")
    p.add_argument("--teacher-venv", default=str(DEFAULT_VENV))
    p.add_argument("--threads", type=int, default=1, help="CPU cores to use")
    p.add_argument("--frame-step", type=int, default=2, help="use every n-th frame (10 fps video)")
    p.add_argument("--limit-frames", type=int, default=None, help="only the first n frames (for quick tests)")
    p.add_argument("--val-fraction", type=float, default=0.2, help="last fraction of the video used as val")
    p.add_argument("--gap-frames", type=int, default=30, help="frames dropped just before val (3 s)")
    p.add_argument("--hog-upscale", type=float, default=2.0, help="HOG finds people >= 128/upscale px tall")
    p.add_argument("--hog-stride", type=int, default=8)
    p.add_argument("--hog-scale", type=float, default=1.05)
    p.add_argument("--hog-hit-threshold", type=float, default=0.0)
    p.add_argument("--hog-min-score", type=float, default=0.3, help="SVM score of a window kept after NMS")
    p.add_argument("--nms-iou", type=float, default=0.3)
    p.add_argument("--nms-contain", type=float, default=0.7)
    p.add_argument("--crop-context", type=float, default=1.25, help="crop height / HOG box height")
    p.add_argument(
        "--crop-aspects",
        type=float,
        nargs="+",
        default=[0.75, 0.5],
        help="crop width/height tried in turn until a pose is kept",
    )
    p.add_argument("--crop-height", type=int, default=384, help="teacher crop height in pixels (upscaled ~3x)")
    p.add_argument("--model-complexity", type=int, default=1)
    p.add_argument("--min-pose-score", type=float, default=0.6, help="mean teacher visibility of the 17 keypoints")
    p.add_argument(
        "--max-flip-err", type=float, default=0.05, help="median |plain - mirrored| keypoint distance / person height"
    )
    p.add_argument("--min-kp-score", type=float, default=0.1, help="keypoints below this visibility get v=0")
    p.add_argument("--min-keypoints", type=int, default=8, help="labelled keypoints a kept pose needs")
    p.add_argument("--box-margin", type=float, default=0.15, help="HOG box margin for the inside-box test")
    p.add_argument("--min-inside-box", type=float, default=0.6, help="fraction of keypoints inside the HOG box")
    p.add_argument("--dedup-oks", type=float, default=0.5, help="two poses in a frame with OKS above are one person")
    p.add_argument("--jpeg-quality", type=int, default=85)
    p.add_argument("--samples", default=None, help="also draw sample frames with keypoints into this PNG")
    p.add_argument("--samples-only", action="store_true", help="only (re)draw --samples from an existing --out")
    return p.parse_args(argv)


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    a = parse_args(argv)
    venv = Path(a.teacher_venv)
    if not _in_venv(venv):
        py = ensure_teacher_venv(venv)
        limit_threads(a.threads)
        os.execv(str(py), [str(py), str(Path(__file__).resolve()), *argv])
    limit_threads(a.threads)
    if a.samples_only:
        draw_samples(Path(a.out), Path(a.samples))
        return
    build(a)


if __name__ == "__main__":
    main()
