"""CIFAR-10 as cached uint8 tensors, and seeded on-device batch iterators."""

from normexp.data.loader import EvalBatches, TrainBatches, stratified_subset
from normexp.data.sources import CLASSES, CifarArrays, load_cifar10

__all__ = ["CLASSES", "CifarArrays", "EvalBatches", "TrainBatches", "load_cifar10", "stratified_subset"]
