"""`binpose score`: offline batch scoring with a progress bar, on local worker processes or on a Ray cluster.

    binpose score pose --annotations val.json --images val/ --out results.json --eval
    binpose score pose --images photos/ --boxes hog --out results.json
    binpose score classify --images photos/ --out classes.csv --top-k 5
    binpose score pose --annotations val.json --images val/ --out results.json --ray   # RAY_ADDRESS or a local Ray

Pose writes COCO keypoint results (JSON); classification writes the top-k classes (CSV or JSON). Images that cannot
be read or decoded are listed in the report (``--report``, default OUT.report.json), never fatal. Each worker loads
the model once (service.score_jobs); the stages are the service's own.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing as mp
import os
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from models.coco import coco_keypoint_eval
from service.score_coco import (
    annotation_keypoint_results,
    format_metrics,
    ground_truth_boxes,
    load_coco,
    read_detections,
)
from service.score_jobs import Row, ScoreConfig, make_scorer

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm"}
DEFAULT_MODELS = {"pose": "sbpn-r18", "classification": "resnet18"}


# -- arguments -----------------------------------------------------------------------------------------------------


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", type=Path, help="folder of images (recursive); with --annotations, the folder the "
                   "file names are relative to (default: the annotation file's folder)")  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="output file")
    p.add_argument("--report", type=Path, help="report JSON: counts, failed files, timings (default OUT.report.json)")
    p.add_argument("--model", help="registered model name")
    p.add_argument("--backend", default="auto", choices=["auto", "packed", "torch", "onnx"], help="default auto")
    p.add_argument("--weights-dir", type=Path, default=Path(os.environ.get("BINPOSE_WEIGHTS_DIR", "weights")),
                   help="folder of NAME.bnn / NAME.pt / NAME.onnx (BINPOSE_WEIGHTS_DIR, default weights)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of random-init weights when a model has none bundled")
    p.add_argument("--batch-size", type=int, default=16, help="network inputs per call (default 16)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="worker processes (Ray actors with --ray), each loading the model once; 0 = in this process "
                   "(default: the CPU count)")  # fmt: skip
    p.add_argument("--threads", type=int, default=1, help="intra-op threads per worker (default 1)")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="larger images are reported, not decoded")
    p.add_argument("--ray", action="store_true", help="run on Ray Data (pip install 'binpose[ray]'): the cluster at "
                   "--ray-address / RAY_ADDRESS, or a local Ray instance")  # fmt: skip
    p.add_argument("--ray-address", help="address of a Ray cluster (e.g. ray://head:10001 or auto)")
    p.add_argument("--ray-num-cpus", type=int, help="CPUs of the local Ray instance (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="binpose score", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    sub = parser.add_subparsers(dest="task", required=True, metavar="{pose,classify}")
    pose = sub.add_parser("pose", help="COCO keypoint results for a folder or a COCO annotation file")
    _common(pose)
    pose.add_argument("--annotations", type=Path, help="COCO keypoint annotation file: its images are scored")
    pose.add_argument("--boxes", default=None,
                      help="person boxes: gt (the annotations' boxes; default with --annotations), hog (OpenCV's "
                      "people detector; default otherwise), whole (the whole image is one person), or a COCO "
                      "detections JSON file")  # fmt: skip
    pose.add_argument("--det-min-score", type=float, default=0.0, help="detections below it are ignored")
    pose.add_argument("--max-persons", type=int, default=20, help="persons per image with hog (default 20)")
    pose.add_argument("--flip", action="store_true", help="flip test: average the crop's and its mirror's heatmaps")
    pose.add_argument("--score-threshold", type=float, default=0.2,
                      help="keypoint score counted in the instance score (default 0.2)")  # fmt: skip
    pose.add_argument("--eval", action="store_true", help="print COCO keypoint AP/AR (needs --annotations)")
    pose.add_argument("--keypoints-from-annotations", action="store_true",
                      help="no network: write the annotations' own keypoints as results (an oracle that checks the "
                      "results writer and the evaluator; its AP is 1)")  # fmt: skip
    cls = sub.add_parser("classify", help="top-k classes of every image in a folder, as CSV or JSON")
    _common(cls)
    cls.add_argument("--top-k", type=int, default=5, help="classes per image (default 5)")
    return parser


# -- inputs --------------------------------------------------------------------------------------------------------


def list_images(folder: Path) -> tuple[list[Path], list[str]]:
    """Image files under ``folder`` (sorted, recursive) and the other files, which are ignored."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images")
    images: list[Path] = []
    other: list[Path] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        (images if path.suffix.lower() in IMAGE_SUFFIXES else other).append(path)
    return images, [str(p.relative_to(folder)) for p in other]


def folder_image_ids(paths: Sequence[Path]) -> list[int]:
    """COCO-style numeric file stems (000000123456.jpg) when they are all numeric and distinct, else 1, 2, 3, ..."""
    stems = [p.stem for p in paths]
    if stems and all(s.isdigit() for s in stems) and len({int(s) for s in stems}) == len(stems):
        return [int(s) for s in stems]
    return list(range(1, len(paths) + 1))


def pose_rows(ns: argparse.Namespace, gt: dict[str, Any] | None) -> tuple[list[Row], dict[str, Any]]:
    """The job's rows (one per image, with its boxes) and what the report says about the inputs."""
    boxes_mode = ns.boxes or ("gt" if gt is not None else "hog")
    if gt is not None:
        root = ns.images or ns.annotations.parent
        entries = [(int(im["id"]), root / str(im["file_name"])) for im in gt["images"]]
        info: dict[str, Any] = {"annotations": str(ns.annotations), "images_dir": str(root)}
    else:
        if ns.images is None:
            raise ValueError("give --images FOLDER or --annotations FILE")
        paths, ignored = list_images(ns.images)
        entries = list(zip(folder_image_ids(paths), paths, strict=True))
        info = {"images_dir": str(ns.images), "ignored_files": ignored,
                "image_ids": [{"id": i, "file_name": str(p.relative_to(ns.images))} for i, p in entries]}  # fmt: skip
    boxes: dict[int, list[tuple[list[float], float]]] | None
    if boxes_mode == "gt":
        if gt is None:
            raise ValueError("--boxes gt needs --annotations")
        boxes = ground_truth_boxes(gt)
    elif boxes_mode in ("hog", "whole"):
        boxes = None
    else:
        boxes = read_detections(boxes_mode, ns.det_min_score)
        info["detections"] = boxes_mode
    info["boxes"] = boxes_mode if boxes_mode in ("gt", "hog", "whole") else "detections"
    rows = []
    for index, (image_id, path) in enumerate(entries):
        box_text = "" if boxes is None else json.dumps([[*b, s] for b, s in boxes.get(image_id, [])])
        rows.append({"index": index, "path": str(path), "image_id": image_id, "boxes": box_text})
    return rows, info


# -- runners -------------------------------------------------------------------------------------------------------

_worker_scorer: Any = None
_worker_error: BaseException | None = None


def _init_worker(config: ScoreConfig) -> None:
    # A failing initializer would make the pool respawn workers forever: keep the error for the first task to raise.
    global _worker_scorer, _worker_error
    try:
        _worker_scorer = make_scorer(config)
    except Exception as exc:
        _worker_error = exc


def _score_chunk(rows: list[Row]) -> list[Row]:
    if _worker_error is not None:
        raise _worker_error
    return list(_worker_scorer.score_rows(rows))


def run_local(config: ScoreConfig, rows: list[Row], workers: int) -> Iterator[list[Row]]:
    """Score ``rows`` in chunks of ``batch_size`` images on ``workers`` processes (0 = here); yields finished chunks."""
    chunks = [rows[i : i + config.batch_size] for i in range(0, len(rows), config.batch_size)]
    if workers <= 0 or not chunks:
        scorer = make_scorer(config) if chunks else None
        for chunk in chunks:
            yield scorer.score_rows(chunk)  # type: ignore[union-attr]
        return
    # spawn: a fresh interpreter per worker (forking a process that holds torch's thread pools can deadlock).
    ctx = mp.get_context("spawn")
    with ctx.Pool(min(workers, len(chunks)), initializer=_init_worker, initargs=(config,)) as pool:
        yield from pool.imap_unordered(_score_chunk, chunks)


def run_ray(config: ScoreConfig, rows: list[Row], workers: int, address: str | None,
            num_cpus: int | None) -> Iterator[list[Row]]:  # fmt: skip
    """The same job on Ray Data: rows -> map_batches(the model-holding class, one actor per worker) -> rows back here,
    where the output is written exactly as in the local run."""
    try:
        import ray
        import ray.data
    except ImportError:
        raise SystemExit("--ray needs Ray Data: pip install 'binpose[ray]' (or 'ray[data]')") from None
    from service.score_jobs import SCORERS, rows_from_columns

    started_here = not ray.is_initialized()
    if started_here:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(address=address, **kwargs)
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # ours counts images
        ds = ray.data.from_items(rows, override_num_blocks=max(1, min(len(rows), 4 * max(1, workers))))
        scored = ds.map_batches(
            SCORERS[config.task],
            fn_constructor_kwargs={"config": config.to_dict()},
            batch_size=config.batch_size,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=max(1, workers)),
            num_cpus=max(1, config.threads),
        )
        for batch in scored.iter_batches(batch_size=config.batch_size, batch_format="numpy"):
            yield rows_from_columns(batch)
    finally:
        if started_here:
            ray.shutdown()


def score_all(config: ScoreConfig, rows: list[Row], ns: argparse.Namespace) -> list[Row]:
    """Every row scored, in input order, with a progress bar over images."""
    from tqdm import tqdm

    if ns.ray:
        chunks = run_ray(config, rows, ns.workers, ns.ray_address, ns.ray_num_cpus)
    else:
        chunks = run_local(config, rows, ns.workers)
    done: list[Row] = []
    with tqdm(total=len(rows), unit="img", desc=f"score {config.task}", disable=ns.no_progress) as bar:
        for chunk in chunks:
            done.extend(chunk)
            bar.update(len(chunk))
    done.sort(key=lambda r: int(r["index"]))
    if len(done) != len(rows):
        raise RuntimeError(f"{len(rows)} images were sent and {len(done)} came back")
    return done


# -- outputs -------------------------------------------------------------------------------------------------------


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_classes(path: Path, done: list[Row], root: Path) -> None:
    """CSV (file, rank, class_index, class_name, probability) or JSON [{file, top_k}], by the file's suffix."""
    records = [{"file": str(Path(r["path"]).relative_to(root)), "top_k": json.loads(r["results"])}
               for r in done if not r["error"]]  # fmt: skip
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records))
        return
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "rank", "class_index", "class_name", "probability"])
        for rec in records:
            for rank, c in enumerate(rec["top_k"], 1):
                w.writerow([rec["file"], rank, c["index"], c["name"], f"{c['probability']:.6g}"])


def main(argv: Sequence[str] | None = None) -> int:
    ns = build_parser().parse_args(list(argv) if argv is not None else None)
    task = "classification" if ns.task == "classify" else "pose"
    report_path = ns.report or ns.out.with_suffix(".report.json")
    started = time.perf_counter()
    gt = load_coco(ns.annotations) if task == "pose" and ns.annotations else None
    if task == "pose" and ns.eval and gt is None:
        raise SystemExit("--eval needs --annotations (the ground truth)")
    report: dict[str, Any] = {"task": task, "output": str(ns.out), "engine": "ray" if ns.ray else "local"}

    if task == "pose" and ns.keypoints_from_annotations:
        if gt is None:
            raise SystemExit("--keypoints-from-annotations needs --annotations")
        results = annotation_keypoint_results(gt)
        done: list[Row] = []
        report.update(model="annotations (oracle)", images=len(gt["images"]))
    else:
        if task == "pose":
            rows, info = pose_rows(ns, gt)
        else:
            if ns.images is None:
                raise SystemExit("classify needs --images FOLDER")
            paths, ignored = list_images(ns.images)
            rows = [{"index": i, "path": str(p), "image_id": i} for i, p in enumerate(paths)]
            info = {"images_dir": str(ns.images), "ignored_files": ignored}
        config = ScoreConfig(
            task=task, model=ns.model or DEFAULT_MODELS[task], backend=ns.backend, weights_dir=str(ns.weights_dir),
            seed=ns.seed, threads=ns.threads, batch_size=max(1, ns.batch_size),
            detector="whole" if getattr(ns, "boxes", None) == "whole" else "hog",
            flip=getattr(ns, "flip", False), score_threshold=getattr(ns, "score_threshold", 0.2),
            max_persons=getattr(ns, "max_persons", 20), max_image_pixels=ns.max_image_pixels,
            top_k=getattr(ns, "top_k", 5),
        )  # fmt: skip
        logger.info("scoring %d images with %s (%s) on %s", len(rows), config.model, config.backend,
                    f"Ray ({ns.workers} actors)" if ns.ray else f"{ns.workers} local workers")  # fmt: skip
        done = score_all(config, rows, ns)
        report.update(info)
        report.update(model=config.model, backend=sorted({r["backend"] for r in done}), workers=ns.workers,
                      images=len(rows))  # fmt: skip
        results = [res for r in done if not r["error"] for res in json.loads(r["results"])]

    failed = [{"file": r["path"], "error": r["error"]} for r in done if r["error"]]
    report.update(scored=report["images"] - len(failed), failed=failed)
    if task == "pose":
        results.sort(key=lambda r: int(r["image_id"]))  # stable: each image keeps its best-first order
        write_json(ns.out, results)
        with_persons = {r["image_id"] for r in results}
        report.update(persons=len(results), images_without_persons=report["scored"] - len(with_persons))
        if ns.eval:
            assert gt is not None
            metrics = coco_keypoint_eval(gt, results)
            report["metrics"] = metrics
            sys.stdout.write(format_metrics(metrics) + "\n")
    else:
        write_classes(ns.out, done, ns.images)
    elapsed = time.perf_counter() - started
    report.update(elapsed_s=round(elapsed, 3), images_per_s=round(report["images"] / max(elapsed, 1e-9), 2))
    write_json(report_path, report)
    for f in failed:
        logger.warning("not scored: %s (%s)", f["file"], f["error"])
    logger.info("%d of %d images scored, %d failed; wrote %s and %s", report["scored"], report["images"], len(failed),
                ns.out, report_path)  # fmt: skip
    return 1 if report["images"] and not report["scored"] else 0
