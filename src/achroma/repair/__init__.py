"""Repair a folded or merged model: BN-only training, BN statistics re-estimation, least-squares
refit of the layers that read merged channels, and of grouped pointwise convs (step 6)."""
from .bn import bn_recalibrate, bn_train
from .grouped_refit import grouped_forward_order, ls_refit_grouped
from .refit import RefitReport, changed_consumers, ls_refit

__all__ = ["RefitReport", "bn_recalibrate", "bn_train", "changed_consumers", "grouped_forward_order", "ls_refit",
           "ls_refit_grouped"]
