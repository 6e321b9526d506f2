"""The work of `binpose score`, shared by its two runners: a model-holding callable class that turns a batch of rows
(one image each) into a batch of result rows. The local runner calls it in worker processes; the Ray runner hands the
class to Ray Data's ``map_batches``. Both therefore run the same code on the same inputs.

Rows are flat (ints and strings) so that they travel as Arrow columns on Ray:

- in:  ``index`` (position in the job), ``path``, ``image_id``, ``boxes`` (JSON [[x1, y1, x2, y2, score], ...] or ""
  to find people with the detector; pose only)
- out: ``index``, ``path``, ``image_id``, ``backend``, ``error`` ("" when scored), ``results`` (JSON: COCO keypoint
  results for pose, top-k classes for classification)

The stages are the service's own (service.pipeline): decode with limits, boxes, crops, network, decoding.
Every network call has the same shape (the crops are padded up to ``batch_size``), so a crop's output does not
depend on which other crops share its call: local and Ray runs give identical results whatever their batching.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.backends import LoadedModel, LoadOptions, load_model
from service.errors import ApiError
from service.pipeline import PosePlan, finish_classify, finish_pose, plan_classify, plan_pose
from service.schemas import PoseOptions
from service.score_coco import keypoint_result

logger = logging.getLogger(__name__)

Row = dict[str, Any]
OUTPUT_COLUMNS = ("index", "path", "image_id", "backend", "error", "results")


@dataclass(frozen=True)
class ScoreConfig:
    """What every worker needs to load the model once and score rows. Plain values: it is pickled to workers."""

    task: str  # "pose" | "classification"
    model: str
    backend: str = "auto"
    weights_dir: str = "weights"
    seed: int = 0
    threads: int = 1
    batch_size: int = 16
    detector: str = "hog"
    flip: bool = False
    score_threshold: float = 0.2
    max_persons: int = 20
    max_image_pixels: int = 40_000_000
    top_k: int = 5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def run_network(model: LoadedModel, inputs: np.ndarray, batch_size: int) -> np.ndarray:
    """The network on ``inputs`` [N, C, H, W] in calls of exactly ``batch_size`` (the last one zero-padded)."""
    if len(inputs) == 0:
        return np.zeros((0,), np.float32)
    outputs = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        n = len(chunk)
        if n < batch_size:
            pad = np.zeros((batch_size - n, *chunk.shape[1:]), dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        outputs.append(np.asarray(model.infer(np.ascontiguousarray(chunk, dtype=np.float32)))[:n])
    return np.concatenate(outputs)


def rows_from_columns(batch: dict[str, Any]) -> list[Row]:
    """Ray Data's column batch (dict of arrays) -> rows of plain Python values."""
    columns = {k: (v.tolist() if hasattr(v, "tolist") else list(v)) for k, v in batch.items()}
    n = len(next(iter(columns.values()))) if columns else 0
    return [{k: values[i] for k, values in columns.items()} for i in range(n)]


def columns_from_rows(rows: Sequence[Row]) -> dict[str, list[Any]]:
    return {k: [row[k] for row in rows] for k in OUTPUT_COLUMNS}


class Scorer:
    """Loads the model once (in its worker), then scores batches of rows. Subclasses: one per task."""

    task = ""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = ScoreConfig(**config)
        if self.config.task != self.task:
            raise ValueError(f"{type(self).__name__} scores {self.task}, not {self.config.task}")
        c = self.config
        options = LoadOptions(weights_dir=Path(c.weights_dir), threads=c.threads, seed=c.seed)
        self.model = load_model(c.model, c.backend, options)
        if self.model.spec.task != self.task:
            raise ValueError(f"model {c.model!r} is a {self.model.spec.task} model, not a {self.task} model")

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        """Ray Data's entry point: a column batch in, a column batch out."""
        return columns_from_rows(self.score_rows(rows_from_columns(batch)))

    def score_rows(self, rows: Sequence[Row]) -> list[Row]:
        raise NotImplementedError

    def _out(self, row: Row, results: Any = None, error: str = "") -> Row:
        return {"index": int(row["index"]), "path": str(row["path"]), "image_id": int(row.get("image_id", -1)),
                "backend": self.model.backend, "error": error,
                "results": "" if error else json.dumps(results)}  # fmt: skip


def read_failure(exc: Exception) -> str:
    """A one-line reason an image could not be scored."""
    if isinstance(exc, ApiError):
        return f"{exc.code}: {exc.message}"
    if isinstance(exc, OSError):
        return f"unreadable: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"


class PoseScorer(Scorer):
    task = "pose"

    def _plan(self, row: Row) -> PosePlan:
        c = self.config
        data = Path(row["path"]).read_bytes()
        boxes_text = str(row.get("boxes") or "")
        if boxes_text:
            scored = json.loads(boxes_text)
            options = PoseOptions(boxes=[b[:4] for b in scored], flip=c.flip, score_threshold=c.score_threshold,
                                  max_persons=max(1, len(scored)))  # fmt: skip
            plan = plan_pose(data, options, self.model.spec, c.max_image_pixels, max(1, len(scored)))
            plan.box_scores = [float(b[4]) if len(b) > 4 else 1.0 for b in scored][: len(plan.boxes)]
        else:
            options = PoseOptions(detector=c.detector, flip=c.flip, score_threshold=c.score_threshold,  # type: ignore[arg-type]
                                  max_persons=c.max_persons)  # fmt: skip
            plan = plan_pose(data, options, self.model.spec, c.max_image_pixels, c.max_persons)
        plan.rgb = None  # the pixels are not needed any more; a batch of plans stays small
        return plan

    def score_rows(self, rows: Sequence[Row]) -> list[Row]:
        c = self.config
        out: list[Row | None] = [None] * len(rows)
        plans: list[tuple[int, PosePlan]] = []
        for i, row in enumerate(rows):
            try:
                plans.append((i, self._plan(row)))
            except (ApiError, OSError, ValueError) as exc:
                out[i] = self._out(row, error=read_failure(exc))
                logger.warning("cannot score %s: %s", row["path"], out[i]["error"])  # type: ignore[index]
        inputs = [plan.inputs for _, plan in plans if len(plan.inputs)]
        heatmaps = run_network(self.model, np.concatenate(inputs), c.batch_size) if inputs else np.zeros((0,))
        start = 0
        for i, plan in plans:
            n = len(plan.inputs)
            persons = finish_pose(plan, heatmaps[start : start + n], self.model.spec, c.score_threshold) if n else []
            start += n
            image_id = int(rows[i]["image_id"])
            results = []
            for p in persons:
                # Instance score: keypoint quality x box score (1 for ground-truth boxes, the detector's score for a
                # detections file; HOG margins are not probabilities and are left out).
                box_score = p.box_score if p.box_source == "client" else 1.0
                results.append(keypoint_result(image_id, [(k.x, k.y, k.score) for k in p.keypoints], p.score * box_score))
            out[i] = self._out(rows[i], results)
        return [r for r in out if r is not None]


class ClassifyScorer(Scorer):
    task = "classification"

    def score_rows(self, rows: Sequence[Row]) -> list[Row]:
        c = self.config
        out: list[Row | None] = [None] * len(rows)
        kept: list[tuple[int, np.ndarray]] = []
        for i, row in enumerate(rows):
            try:
                x, _ = plan_classify(Path(row["path"]).read_bytes(), self.model.spec, c.max_image_pixels)
                kept.append((i, x))
            except (ApiError, OSError, ValueError) as exc:
                out[i] = self._out(row, error=read_failure(exc))
                logger.warning("cannot score %s: %s", row["path"], out[i]["error"])  # type: ignore[index]
        if kept:
            logits = run_network(self.model, np.concatenate([x for _, x in kept]), c.batch_size)
            for (i, _), z in zip(kept, logits, strict=True):
                top = finish_classify(z, self.model.spec, c.top_k)
                out[i] = self._out(rows[i], [t.model_dump() for t in top])
        return [r for r in out if r is not None]


SCORERS: dict[str, type[Scorer]] = {"pose": PoseScorer, "classification": ClassifyScorer}


def make_scorer(config: ScoreConfig) -> Scorer:
    return SCORERS[config.task](config.to_dict())
