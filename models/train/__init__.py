"""binpose's training module: `binpose train classify|pose --config FILE.yaml [--set key=value ...]`.

Layout: ``config`` (defaults, YAML, overrides), ``data/`` (Fashion-MNIST IDX, ImageFolder, COCO keypoints top-down),
``losses``, ``evaluate`` (top-k, COCO keypoint AP through pycocotools), ``loop`` (the trainer: DDP, AMP, checkpoints,
metrics), ``cli``. The checkpoint format is documented in models/train/README.md and ``loop.save_checkpoint``.
"""
