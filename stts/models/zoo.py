"""The published model zoo as data: configurations, accuracy and cost (torchvision's weight `meta`).

Sources: the STTS authors' README (Kinetics-400 top-1, "README GFLOPs") and fvcore run on the authors'
own code with their configs (`tests/fixtures/official_flops.json`). Two README figures (MViT 23.3 and
12.1 GFLOPs) cannot be reproduced by the official code itself; both figures are kept, and
`official_gflops` is the yardstick our FLOP count is tested against. GFLOPs are multiply-adds per
224x224 view (the fvcore convention of PySlowFast).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ZooEntry", "ZOO"]


@dataclass(frozen=True)
class ZooEntry:
    name: str  # registry name
    base: str  # the dense registry name it is built from
    plan: str | None  # selection plan with the exact ratios of the official config
    frames_kept: str  # temporal tokens kept / total
    anchor: int | None  # anchor size a (spatial selection), None without
    top1: float | None  # Kinetics-400 top-1 (%), README
    readme_gflops: float | None
    official_gflops: float  # fvcore on the official code
    official_gflops_hooks: float  # mmcv-style hook count (misses the attention matmuls)
    official_config: str


_ROWS = [
    # MViT-B 16x4 (PySlowFast MViT v1) and the five published STTS models.
    ZooEntry("mvit_b_16x4", "mvit_b_16x4", None, "8/8", None, 78.4, 70.5, 70.804, 56.262,
             "PySlowFast MVIT_B_16x4_CONV"),
    ZooEntry("mvit_b_16x4_stts_t0.9_s0.9", "mvit_b_16x4", "T0_0.875-S4_0.863", "7/8", 13, 78.1, 56.4, 56.386,
             45.840, "MViT/configs/Kinetics/t0_0.9_s4_0.9.yaml"),
    ZooEntry("mvit_b_16x4_stts_t0.8_s0.9", "mvit_b_16x4", "T0_0.75-S4_0.863", "6/8", 13, 77.9, 47.2, 47.211,
             39.448, "MViT/configs/Kinetics/t0_0.8_s4_0.9.yaml"),
    ZooEntry("mvit_b_16x4_stts_t0.6_s0.9", "mvit_b_16x4", "T0_0.625-S4_0.863", "5/8", 13, 77.5, 38.1, 38.462,
             33.057, "MViT/configs/Kinetics/t0_0.6_s4_0.9.yaml"),
    ZooEntry("mvit_b_16x4_stts_t0.5_s0.7", "mvit_b_16x4", "T0_0.5-S4_0.7367", "4/8", 12, 76.6, 23.3, 26.947,
             23.965, "MViT/configs/Kinetics/t0_0.5_s4_0.7.yaml"),
    ZooEntry("mvit_b_16x4_stts_t0.4_s0.6", "mvit_b_16x4", "T0_0.375-S4_0.6174", "3/8", 11, 75.6, 12.1, 18.458,
             16.841, "MViT/configs/Kinetics/t0_0.4_s4_0.6.yaml"),
    # Video Swin 32x2 (temporal tokens 16) and the five published STTS models (selection before stage 0).
    ZooEntry("swin3d_b", "swin3d_b", None, "16/16", None, None, 282.0, 281.923, 242.553, "swin_base.py"),
    ZooEntry("swin3d_b_stts_t0.9", "swin3d_b", "T0_0.875", "14/16", None, 81.9, 252.5, 261.508, 222.180,
             "VideoSwin/configs/Kinetics/t0_0.875.py"),
    ZooEntry("swin3d_b_stts_t0.8", "swin3d_b", "T0_0.75", "12/16", None, 81.6, 223.4, 241.092, 201.805,
             "VideoSwin/configs/Kinetics/t0_0.75.py"),
    ZooEntry("swin3d_b_stts_t0.6", "swin3d_b", "T0_0.625", "10/16", None, 81.4, 181.4, 220.676, 181.431,
             "VideoSwin/configs/Kinetics/t0_0.625.py"),
    ZooEntry("swin3d_b_stts_t0.5", "swin3d_b", "T0_0.5625", "9/16", None, 81.1, 121.6, 210.468, 171.244,
             "VideoSwin/configs/Kinetics/t0_0.5625.py"),
    ZooEntry("swin3d_b_stts_t0.4", "swin3d_b", "T0_0.375", "6/16", None, 80.7, 91.4, 102.470, 91.357,
             "VideoSwin/configs/Kinetics/t0_0.375.py"),
    ZooEntry("swin3d_t", "swin3d_t", None, "16/16", None, None, 88.0, 88.062, 69.951, "swin_tiny.py"),
]

ZOO: dict[str, ZooEntry] = {row.name: row for row in _ROWS}

