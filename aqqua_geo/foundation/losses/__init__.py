"""DINOv2 loss terms, one per module: DINO CLS, iBOT masked patch, KoLeo, teacher centring."""

from aqqua_geo.foundation.losses.centering import SoftmaxCentering, sinkhorn_knopp
from aqqua_geo.foundation.losses.dino_clstoken import DINOLoss
from aqqua_geo.foundation.losses.ibot_patch import IBOTPatchLoss
from aqqua_geo.foundation.losses.koleo import KoLeoLoss

__all__ = ["DINOLoss", "IBOTPatchLoss", "KoLeoLoss", "SoftmaxCentering", "sinkhorn_knopp"]
