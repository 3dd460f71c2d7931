"""Repair a folded or merged model: BN-only training, BN statistics re-estimation (step 6)."""
from .bn import bn_recalibrate, bn_train

__all__ = ["bn_recalibrate", "bn_train"]
