"""The HTTP service (FastAPI): pose keypoints and image classes over REST and the Open Inference Protocol v2, with
micro-batching, Prometheus metrics and a demo page. `binpose serve` starts it; see service.app.create_app."""

__version__ = "0.1.0"
