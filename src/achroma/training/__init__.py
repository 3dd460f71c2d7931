"""Training and evaluation: `train(model, train_set, TrainConfig(...))`, `evaluate(model, test_set)`."""
from .evaluate import count_parameters, evaluate, first_conv_in_channels
from .early_stopping import SELECT_BY, EarlyStopping, best_summary, validation_record
from .trainer import (OPTIMIZERS, TrainConfig, balanced_class_weights, classification_loss, lr_at, make_optimizer,
                      train, train_step, weighted_classification_loss)

__all__ = ["EarlyStopping", "OPTIMIZERS", "SELECT_BY", "TrainConfig", "balanced_class_weights", "best_summary",
           "classification_loss", "count_parameters", "evaluate", "first_conv_in_channels", "lr_at", "make_optimizer",
           "train", "train_step", "validation_record", "weighted_classification_loss"]
