"""HiSD training: the objective (:mod:`.loss`) and the loop (:mod:`.trainer`)."""

from hisd_edge.train.loss import REGIMES, HisdLossConfig, HisdObjective, kd_kl
from hisd_edge.train.trainer import TrainConfig, TrainResult, evaluate, train

__all__ = ["REGIMES", "HisdLossConfig", "HisdObjective", "TrainConfig", "TrainResult", "evaluate", "kd_kl", "train"]
