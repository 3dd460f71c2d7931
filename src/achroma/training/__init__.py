"""Training and evaluation: `train(model, train_set, TrainConfig(...))`, `evaluate(model, test_set)`."""
from .evaluate import count_parameters, evaluate, first_conv_in_channels
from .trainer import TrainConfig, classification_loss, lr_at, make_optimizer, train, train_step

__all__ = ["TrainConfig", "classification_loss", "count_parameters", "evaluate", "first_conv_in_channels",
           "lr_at", "make_optimizer", "train", "train_step"]
