"""HTTP routes, one module per concern: pose, classify, models, health (+ metrics), v2 (Open Inference Protocol)."""
