"""CLIP-S4 (Ma et al., CVPR 2023), the method ``python -m train`` runs: pixel-segment
contrastive learning across two augmented views (``segments``, ``losses``), embedding
consistency with the frozen CLIP teacher's dense features, and semantic consistency
over the known classes' text prototypes and learned unknown prototypes
(``prototypes``). ``config`` is the one typed run configuration with its JSON presets
(``presets/``), ``data`` the image sources (a folder, or the toy world), ``augment``
the views, ``distributed`` the torchrun/DDP helpers, and ``loop`` the training loop
that ties them together, readable top to bottom."""
