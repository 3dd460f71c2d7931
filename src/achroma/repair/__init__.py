"""Repair a folded, merged or grouped model (step 6): the registered repairs and their building blocks.

    >>> from achroma.repair import RepairJob, run_repair
    >>> fixed = run_repair(merged, "ls-refit+distill", RepairJob(train_set, teacher=color, teacher_normalize="cifar",
    ...                                                        reference=folded, merges=merges))
"""
from .base import (Repair, RepairConfig, RepairJob, RepairOutcome, check_repairs, get_repair, parse_repair_step, register_repair,
                   repair_help, repair_names, repair_with_guard, run_repair)
from .bn import bn_align, bn_recalibrate, bn_train
from .grouped_refit import grouped_forward_order, ls_refit_grouped
from .refit import RefitReport, changed_consumers, ls_refit
from .tie import ClusterTie
from .steps import BnAlign, BnStats, Centripetal, BnTrain, Distill, Finetune, FinetuneKD, LsRefit, NoRepair

__all__ = ["BnAlign", "BnStats", "Centripetal", "BnTrain", "Distill", "Finetune", "FinetuneKD", "LsRefit", "NoRepair", "RefitReport", "Repair",
           "RepairConfig", "RepairJob", "RepairOutcome", "bn_align", "bn_recalibrate", "bn_train", "changed_consumers", "check_repairs", "ClusterTie",
           "get_repair", "grouped_forward_order", "ls_refit", "ls_refit_grouped", "parse_repair_step",
           "register_repair", "repair_help", "repair_names", "repair_with_guard", "run_repair"]
