"""The HTTP service against a real uvicorn server on a loopback port: every endpoint, results checked against an
independent reference (the seeded network run directly in this process), batching across requests, and the
bad-input corpus."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
import torch
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

import models
from models.complexity import profile
from models.keypoints import box_to_center_scale, crop_person, decode_heatmaps, flip_heatmaps
from models.spec import COCO_KEYPOINT_NAMES, COCO_SKELETON
from service.pipeline import finish_pose, plan_pose
from service.process import ServiceProcess
from service.schemas import PoseOptions

DATA = Path("/usr/share/doc/opencv-doc/examples/data")
POSE, CLS = "sbpn-r18", "resnet18-small"
BODY_LIMIT = 2_000_000


def photo(name: str) -> np.ndarray:
    path = DATA / name
    if not path.exists():
        pytest.skip(f"{path} is missing: apt-get install opencv-doc")
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def png_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    log = tmp_path_factory.mktemp("service") / "server.log"
    env = {
        "BINPOSE_MODELS": f"{POSE},{CLS}",
        "BINPOSE_BACKEND": "torch",
        "BINPOSE_MAX_BATCH_SIZE": "8",
        "BINPOSE_MAX_WAIT_MS": "15",
        "BINPOSE_MAX_BODY_BYTES": str(BODY_LIMIT),
        "BINPOSE_THREADS": "1",  # the test process computes references beside it on 2 cores
    }
    with ServiceProcess(env=env, log_path=log) as proc:
        yield proc
    print(f"server log: {log}")


@pytest.fixture(scope="module")
def client(server: ServiceProcess) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.nn.Module]:
    """The networks the server runs, built here the same documented way: seed 0, random init, eval mode."""
    nets = {}
    for name in (POSE, CLS):
        torch.manual_seed(0)
        nets[name] = models.build(name).eval()
    return nets


def normalized(rgb_crop: np.ndarray, spec: models.ModelSpec) -> torch.Tensor:
    x = (rgb_crop.astype(np.float32) / 255.0 - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None]))


def reference_pose(net: torch.nn.Module, rgb: np.ndarray, box: list[float], flip: bool = False) -> tuple[Any, Any]:
    spec = net.spec
    h, w = spec.input_size
    x1, y1, x2, y2 = box
    center, scale = box_to_center_scale([x1, y1, x2 - x1, y2 - y1], w / h)
    crop = crop_person(rgb, center, scale, 0.0, (h, w))
    with torch.inference_mode():
        hm = net(normalized(crop, spec)).numpy()
        if flip:
            hm_flipped = net(normalized(np.ascontiguousarray(crop[:, ::-1]), spec)).numpy()
            hm = 0.5 * (hm + flip_heatmaps(hm_flipped, spec.flip_pairs))
    coords, scores = decode_heatmaps(hm, center[None], scale[None], spec.input_size)
    return coords[0], scores[0]


def as_arrays(person: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    kp = person["keypoints"]
    return np.array([[k["x"], k["y"]] for k in kp]), np.array([k["score"] for k in kp])


def metric_samples(client: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def sample(samples: dict[Any, float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


# -- health, models, docs ------------------------------------------------------------------------------------------


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json()["status"] == "alive"
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["models"] == {POSE: "ready", CLS: "ready"}
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    assert client.get("/v2").json()["name"] == "binpose"
    assert client.get(f"/v2/models/{POSE}/ready").json()["ready"] is True


def test_models_report_spec_and_complexity(client: httpx.Client, reference: dict[str, torch.nn.Module]) -> None:
    listed = client.get("/v1/models").json()
    assert listed["ready"] is True
    assert [m["name"] for m in listed["models"]] == [POSE, CLS]
    for name, net in reference.items():
        info = client.get(f"/v1/models/{name}").json()
        expected = profile(net).to_dict()
        assert info["task"] == net.spec.task and info["input_size"] == list(net.spec.input_size)
        assert info["backend"] == "torch" and info["provenance"] == "random-init"
        for key in ("params_binary", "params_float", "bops", "flops", "packed_bytes"):
            assert info[key] == expected[key], key
        assert info["ops"] == pytest.approx(info["bops"] / 64 + info["flops"])
        assert info["load_seconds"] > 0 and info["warmup_seconds"] > 0
    pose_info = client.get(f"/v1/models/{POSE}").json()
    assert pose_info["keypoint_names"] == list(COCO_KEYPOINT_NAMES)
    assert pose_info["skeleton"] == [list(p) for p in COCO_SKELETON]
    assert pose_info["default_for"] == ["pose"]


def test_openapi_documents_every_route(client: httpx.Client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/pose", "/v1/pose/render", "/v1/classify", "/v1/models", "/v1/models/{name}", "/healthz",
                 "/readyz", "/metrics", "/v2/models/{name}/infer"):  # fmt: skip
        assert path in paths, path
    content = paths["/v1/pose"]["post"]["requestBody"]["content"]
    assert {"multipart/form-data", "application/json", "image/*"} <= set(content)
    assert client.get("/docs").status_code == 200


# -- pose ----------------------------------------------------------------------------------------------------------


def test_pose_with_client_box_matches_reference(client: httpx.Client, reference: dict[str, torch.nn.Module]) -> None:
    rgb = photo("messi5.jpg")
    box = [190.0, 40.0, 360.0, 340.0]
    r = client.post("/v1/pose", files={"image": ("messi.png", png_bytes(rgb), "image/png")},
                    data={"boxes": json.dumps([box]), "model": POSE})  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == POSE and body["backend"] == "torch"
    assert body["image_size"] == {"width": rgb.shape[1], "height": rgb.shape[0]}
    (person,) = body["persons"]
    assert person["box"] == box and person["box_source"] == "client"
    assert [k["name"] for k in person["keypoints"]] == list(COCO_KEYPOINT_NAMES)
    coords, scores = as_arrays(person)
    ref_coords, ref_scores = reference_pose(reference[POSE], rgb, box)
    np.testing.assert_allclose(coords, ref_coords, atol=1e-2)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)
    t = body["timings"]
    assert t["inference_ms"] > 0 and t["total_ms"] >= t["inference_ms"]


def test_pose_json_raw_and_multipart_agree(client: httpx.Client) -> None:
    rgb = photo("messi5.jpg")
    data = png_bytes(rgb)
    boxes = [[190.0, 40.0, 360.0, 340.0], [0.0, 0.0, 120.0, 200.0]]
    multipart = client.post("/v1/pose", files={"image": ("a.png", data, "image/png")}, data={"boxes": json.dumps(boxes)})
    as_json = client.post("/v1/pose", json={"image": base64.b64encode(data).decode(), "boxes": boxes})
    raw = client.post("/v1/pose", content=data, headers={"content-type": "image/png"},
                      params={"boxes": json.dumps(boxes)})  # fmt: skip
    results = [r.json()["persons"] for r in (multipart, as_json, raw)]
    assert all(len(p) == 2 for p in results)
    for persons in results[1:]:
        for a, b in zip(sorted(results[0], key=lambda p: p["box"]), sorted(persons, key=lambda p: p["box"]), strict=True):
            np.testing.assert_allclose(as_arrays(a)[0], as_arrays(b)[0], atol=1e-2)


def test_pose_flip_test_matches_reference(client: httpx.Client, reference: dict[str, torch.nn.Module]) -> None:
    rgb = photo("messi5.jpg")
    box = [190.0, 40.0, 360.0, 340.0]
    r = client.post("/v1/pose", json={"image": base64.b64encode(png_bytes(rgb)).decode(), "boxes": [box], "flip": True})
    coords, scores = as_arrays(r.json()["persons"][0])
    ref_coords, ref_scores = reference_pose(reference[POSE], rgb, box, flip=True)
    np.testing.assert_allclose(coords, ref_coords, atol=1e-2)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-4, atol=1e-5)


def test_pose_detects_people_with_hog(client: httpx.Client) -> None:
    rgb = photo("basketball1.png")
    r = client.post("/v1/pose", files={"image": ("b.jpg", jpeg_bytes(rgb), "image/jpeg")})
    assert r.status_code == 200, r.text
    persons = r.json()["persons"]
    assert len(persons) >= 1
    h, w = rgb.shape[:2]
    for p in persons:
        x1, y1, x2, y2 = p["box"]
        assert p["box_source"] == "hog" and 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        assert len(p["keypoints"]) == 17
    assert r.json()["timings"]["detect_ms"] > 0


def test_pose_whole_image_and_clipped_box(client: httpx.Client) -> None:
    rgb = photo("messi5.jpg")
    h, w = rgb.shape[:2]
    r = client.post("/v1/pose", files={"image": ("m.jpg", jpeg_bytes(rgb), "image/jpeg")}, data={"detector": "whole"})
    (person,) = r.json()["persons"]
    assert person["box"] == [0, 0, w, h] and person["box_source"] == "whole"
    r = client.post("/v1/pose", json={"image": base64.b64encode(jpeg_bytes(rgb)).decode(),
                                      "boxes": [[-20, -10, 100, 120]]})  # fmt: skip
    assert r.json()["persons"][0]["box"] == [0, 0, 100, 120]


def test_pose_decodes_jpeg_with_large_boxes_at_reduced_scale(
    client: httpx.Client, reference: dict[str, torch.nn.Module]
) -> None:
    # 400 x 342 -> 400 x 533 -> a 500 x 667 px region, 2.6 x the 256 x 192 input: /v1/pose decodes at 1/2 scale and
    # answers in pixels of the image sent (tests/integration/test_service_decode.py checks the geometry and accuracy).
    rgb = photo("messi5.jpg")
    data, box = jpeg_bytes(rgb), [100.0, 0.0, 500.0, 342.0]
    r = client.post("/v1/pose", files={"image": ("m.jpg", data, "image/jpeg")}, data={"boxes": json.dumps([box])})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["image_size"] == {"width": rgb.shape[1], "height": rgb.shape[0]} and body["persons"][0]["box"] == box
    net = reference[POSE]
    plan = plan_pose(data, PoseOptions(boxes=[box]), net.spec, 10**8, 20, reduce=True)
    assert plan.decode_scale == 2
    with torch.inference_mode():
        heatmaps = net(torch.from_numpy(plan.inputs)).numpy()
    (expected,) = finish_pose(plan, heatmaps, net.spec, 0.2)
    np.testing.assert_allclose(as_arrays(body["persons"][0])[0], [[k.x, k.y] for k in expected.keypoints], atol=1e-2)


def test_pose_render_draws_on_the_image(client: httpx.Client) -> None:
    rgb = photo("messi5.jpg")
    for fmt in ("png", "jpeg"):
        r = client.post("/v1/pose/render", files={"image": ("m.png", png_bytes(rgb), "image/png")},
                        data={"boxes": "[[190, 40, 360, 340]]", "score_threshold": "0", "format": fmt})  # fmt: skip
        assert r.status_code == 200 and r.headers["content-type"] == f"image/{fmt}"
        drawn = np.asarray(Image.open(io.BytesIO(r.content)).convert("RGB"))
        assert drawn.shape == rgb.shape
        changed = np.abs(drawn.astype(int) - rgb.astype(int)).max(axis=2) > 60
        assert changed.sum() > 500  # a box and a skeleton were drawn
        assert r.headers["x-binpose-persons"] == "1"
    # A JPEG with a box that /v1/pose decodes at reduced scale (1/2 for a 256 x 192 input): drawn at full size.
    r = client.post("/v1/pose/render", files={"image": ("m.jpg", jpeg_bytes(rgb), "image/jpeg")},
                    data={"boxes": "[[100, 0, 500, 342]]", "format": "png"})  # fmt: skip
    assert r.status_code == 200
    assert np.asarray(Image.open(io.BytesIO(r.content))).shape[:2] == rgb.shape[:2]


# -- classify and v2 -----------------------------------------------------------------------------------------------


def test_classify_matches_reference(client: httpx.Client, reference: dict[str, torch.nn.Module]) -> None:
    rgb = photo("messi5.jpg")
    net = reference[CLS]
    r = client.post("/v1/classify", files={"image": ("m.png", png_bytes(rgb), "image/png")}, data={"top_k": "3"})
    assert r.status_code == 200, r.text
    classes = r.json()["classes"]
    assert len(classes) == 3
    h, w = net.spec.input_size
    small = cv2.resize(rgb, (w, h), interpolation=cv2.INTER_AREA)  # inputs under 64 px are resized whole
    with torch.inference_mode():
        probs = torch.softmax(net(normalized(small, net.spec)), dim=1)[0].numpy()
    top = np.argsort(-probs)[:3]
    assert [c["index"] for c in classes] == top.tolist()
    np.testing.assert_allclose([c["probability"] for c in classes], probs[top], rtol=1e-4)


def test_v2_metadata_and_infer_match_reference(client: httpx.Client, reference: dict[str, torch.nn.Module]) -> None:
    meta = client.get(f"/v2/models/{CLS}").json()
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"][0]["name"] == "logits"
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    body = {"id": "q1", "inputs": [{"name": "input", "shape": [2, 3, 32, 32], "datatype": "FP32",
                                    "data": x.reshape(-1).tolist()}]}  # fmt: skip
    r = client.post(f"/v2/models/{CLS}/infer", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["id"] == "q1" and out["model_name"] == CLS
    (tensor,) = out["outputs"]
    with torch.inference_mode():
        expected = reference[CLS](torch.from_numpy(x)).numpy()
    assert tensor["shape"] == list(expected.shape)
    np.testing.assert_allclose(np.array(tensor["data"]).reshape(expected.shape), expected, rtol=1e-4, atol=1e-4)


# -- batching and metrics ------------------------------------------------------------------------------------------


def test_concurrent_requests_share_batches(server: ServiceProcess, client: httpx.Client) -> None:
    before = metric_samples(client)
    data = jpeg_bytes(photo("messi5.jpg"))
    boxes = json.dumps([[190, 40, 360, 340], [10, 10, 200, 300]])

    def one(_: int) -> int:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            r = c.post("/v1/pose", files={"image": ("m.jpg", data, "image/jpeg")}, data={"boxes": boxes})
            return r.status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(8)))
    assert statuses == [200] * 8
    after = metric_samples(client)
    batches = sample(after, "binpose_batch_size_count", model=POSE) - sample(before, "binpose_batch_size_count", model=POSE)
    crops = sample(after, "binpose_batch_size_sum", model=POSE) - sample(before, "binpose_batch_size_sum", model=POSE)
    le2 = "binpose_batch_size_bucket"
    small = sample(after, le2, model=POSE, le="2.0") - sample(before, le2, model=POSE, le="2.0")
    assert crops == 16
    assert batches < 8, f"{batches} network calls for 16 crops of 8 requests: no batching"
    assert batches - small >= 1, "no batch held crops of more than one request"


def test_metrics_names_units_and_labels(client: httpx.Client) -> None:
    client.get("/v1/models")
    text = client.get("/metrics").text
    for name in ("binpose_requests_total", "binpose_request_duration_seconds_bucket", "binpose_requests_in_flight",
                 "binpose_queue_wait_seconds_bucket", "binpose_compute_seconds_bucket", "binpose_batch_size_bucket",
                 "binpose_persons_per_request_bucket", "binpose_model_info", "binpose_model_bops", "binpose_model_flops",
                 "binpose_model_ops", "binpose_model_load_seconds", "binpose_model_warmup_seconds"):  # fmt: skip
        assert name in text, name
    samples = metric_samples(client)
    assert sample(samples, "binpose_requests_total", endpoint="/v1/pose", model=POSE, status_class="2xx") >= 1
    assert sample(samples, "binpose_requests_total", endpoint="/v1/models", model="", status_class="2xx") >= 1
    net_ops = sample(samples, "binpose_model_ops", model=POSE)
    assert net_ops == pytest.approx(sample(samples, "binpose_model_bops", model=POSE) / 64
                                    + sample(samples, "binpose_model_flops", model=POSE))  # fmt: skip
    # raw paths never become labels, only route templates
    endpoints = {dict(labels).get("endpoint") for _, labels in samples}
    assert "/v1/models/{name}" in endpoints and f"/v1/models/{POSE}" not in endpoints


# -- bad inputs: each gets its 4xx JSON and the server keeps answering ---------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg() -> bytes:
    return jpeg_bytes(np.full((240, 320, 3), 120, np.uint8))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _chunks(size: int) -> Iterator[bytes]:
    for _ in range(size // 65536 + 1):
        yield b"\xff" * 65536


BAD_INPUTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    ("empty body", "/v1/pose", {"content": b"", "headers": {"content-type": "image/jpeg"}}, 422, "empty_image"),
    ("empty upload", "/v1/pose", {"files": {"image": ("e.jpg", b"", "image/jpeg")}}, 422, "empty_image"),
    ("no content type", "/v1/pose", {"content": b""}, 415, "unsupported_media_type"),
    ("truncated jpeg", "/v1/pose", {"files": {"image": ("t.jpg", _jpeg()[:600], "image/jpeg")}}, 422, "undecodable_image"),
    ("png declaring 50000x50000", "/v1/pose", {"files": {"image": ("big.png", png_declaring(50000, 50000), "image/png")}},
     413, "image_too_large"),
    ("text as image", "/v1/pose", {"files": {"image": ("x.jpg", b"hello, I am text" * 20, "image/jpeg")}}, 415,
     "not_an_image"),
    ("text content type", "/v1/pose", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     "unsupported_media_type"),
    ("text part type", "/v1/classify", {"files": {"image": ("x.txt", _jpeg(), "text/plain")}}, 415,
     "unsupported_media_type"),
    ("box with NaN", "/v1/pose", {"content": b'{"image": "%s", "boxes": [[NaN, 0, 10, 10]]}' % _b64(_jpeg()).encode(),
                                  "headers": {"content-type": "application/json"}}, 422, "invalid_request"),
    ("box with NaN in form", "/v1/pose", {"files": {"image": ("a.jpg", _jpeg(), "image/jpeg")},
                                          "data": {"boxes": "[[0, 0, NaN, 10]]"}}, 422, "invalid_request"),
    ("negative box", "/v1/pose", {"json": {"image": _b64(_jpeg()), "boxes": [[-500, -400, -100, -50]]}}, 400,
     "box_outside_image"),
    ("huge box", "/v1/pose", {"json": {"image": _b64(_jpeg()), "boxes": [[0, 0, 1e9, 1e9]]}}, 400, "box_outside_image"),
    ("inverted box", "/v1/pose", {"json": {"image": _b64(_jpeg()), "boxes": [[100, 100, 50, 50]]}}, 422,
     "invalid_request"),
    ("box of 3 numbers", "/v1/pose", {"json": {"image": _b64(_jpeg()), "boxes": [[1, 2, 3]]}}, 422, "invalid_request"),
    ("unknown model", "/v1/pose", {"json": {"image": _b64(_jpeg()), "model": "nope"}}, 404, "model_not_found"),
    ("unknown model info", "/v1/models/nope", {}, 404, "model_not_found"),
    ("wrong task", "/v1/classify", {"json": {"image": _b64(_jpeg()), "model": POSE}}, 400, "wrong_task"),
    ("unknown field", "/v1/pose", {"json": {"image": _b64(_jpeg()), "colour": "red"}}, 422, "invalid_request"),
    ("bad base64", "/v1/pose", {"json": {"image": "%%%not base64%%%"}}, 422, "invalid_base64"),
    ("bad json", "/v1/pose", {"content": b"{nope", "headers": {"content-type": "application/json"}}, 422,
     "invalid_json"),
    ("oversized body", "/v1/pose", {"content": b"\xff" * (BODY_LIMIT + 1), "headers": {"content-type": "image/jpeg"}},
     413, "body_too_large"),
    ("oversized chunked body", "/v1/pose", {"content": _chunks(BODY_LIMIT + 1), "headers": {"content-type": "image/jpeg"}},
     413, "body_too_large"),
    ("unknown route", "/v1/nothing-here", {"json": {}}, 404, "not_found"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "kwargs", "status", "code"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_gets_its_json_error(
    client: httpx.Client, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    method = "GET" if path.startswith("/v1/models/") else "POST"
    r = client.request(method, path, **kwargs)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert error["code"] == code and isinstance(error["message"], str) and error["message"]
    assert client.get("/healthz").status_code == 200


def test_v2_errors_use_the_protocol_shape(client: httpx.Client) -> None:
    bad = {"inputs": [{"name": "input", "shape": [1, 3, 8, 8], "datatype": "FP32", "data": [0.0] * 192}]}
    r = client.post(f"/v2/models/{CLS}/infer", json=bad)
    assert r.status_code == 400 and isinstance(r.json()["error"], str) and "shape" in r.json()["error"]
    r = client.post("/v2/models/nope/infer", json=bad)
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = client.post(f"/v2/models/{CLS}/infer", json={"inputs": []})
    assert r.status_code == 422 and isinstance(r.json()["error"], str)
    assert client.get("/readyz").status_code == 200
