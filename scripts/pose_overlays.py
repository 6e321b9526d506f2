"""Overlays of the served pose model on still photos of people that were never used for training or model selection:
starts the real service (`binpose serve`) on a loopback port with the bundled weights, posts each photo to
/v1/pose/render (people found by OpenCV's HOG detector, or the whole image where HOG finds nobody) and saves the PNGs.

    python scripts/pose_overlays.py --out docs/pose_overlays
    python scripts/pose_overlays.py --photo /path/to/astronaut.png --photo /path/to/person.jpg   # more photos

The default photos are the ones found on this machine: OpenCV's samples (Debian opencv-doc), matplotlib's Grace
Hopper, Debian darknet's person.jpg and scikit-image's astronaut.png where those are installed.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from service.process import ServiceProcess  # noqa: E402

OPENCV = Path("/usr/share/doc/opencv-doc/examples/data")


def photos(extra: list[Path]) -> list[Path]:
    import importlib.util

    import matplotlib

    candidates = [OPENCV / "messi5.jpg", OPENCV / "basketball1.png", OPENCV / "basketball2.png",
                  Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
                  Path("/usr/share/darknet/data/person.jpg")]  # fmt: skip
    skimage = importlib.util.find_spec("skimage")
    if skimage is not None and skimage.origin is not None:
        candidates.append(Path(skimage.origin).parent / "data" / "astronaut.png")
    for p in extra:
        if not p.is_file():
            raise SystemExit(f"no such photo: {p}")
    found = [p for p in candidates if p.exists()]
    return found + [p for p in extra if p.name not in {f.name for f in found}]


def render(url: str, image: Path, detector: str) -> tuple[bytes, int]:
    query = urllib.parse.urlencode({"detector": detector, "format": "png", "flip": "true"})
    ctype = "image/png" if image.suffix == ".png" else "image/jpeg"
    req = urllib.request.Request(f"{url}/v1/pose/render?{query}", data=image.read_bytes(),
                                 headers={"Content-Type": ctype}, method="POST")  # fmt: skip
    with urllib.request.urlopen(req, timeout=60) as resp:
        return resp.read(), int(resp.headers["X-Binpose-Persons"])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "pose_overlays")
    parser.add_argument("--model", default="sbpn-r18")
    parser.add_argument("--backend", default="auto", choices=["auto", "packed", "torch", "onnx"])
    parser.add_argument("--weights-dir", type=Path, default=None,
                        help="weights other than the bundled ones (NAME.bnn, or NAME.pt for --backend torch)")  # fmt: skip
    parser.add_argument("--photo", dest="extra", type=Path, action="append", default=[], help="another photo (repeatable)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {}
    env = {"BINPOSE_MODELS": args.model, "BINPOSE_BACKEND": args.backend}
    if args.weights_dir is not None:
        env["BINPOSE_WEIGHTS_DIR"] = str(args.weights_dir.resolve())
    with ServiceProcess(env=env) as server:
        info = json.loads(urllib.request.urlopen(f"{server.url}/v1/models/{args.model}", timeout=30).read())
        for image in photos(args.extra):
            png, persons = render(server.url, image, "hog")
            detector = "hog"
            if persons == 0:
                png, persons = render(server.url, image, "whole")
                detector = "whole"
            out = args.out / f"{image.stem}.png"
            out.write_bytes(png)
            summary[image.name] = {"source": str(image), "persons": persons, "detector": detector, "file": out.name}
            print(f"{image.name}: {persons} person(s) via {detector} -> {out}")
    (args.out / "summary.json").write_text(
        json.dumps(
            {
                "model": info.get("name"),
                "backend": info.get("backend"),
                "sha256": info.get("weights_sha256"),
                "photos": summary,
            },
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
