"""Training on in-memory splits: the study's workflow, run files, checkpoints, evaluation.

``train`` receives modules and tensors and never imports ``torchliquid.nn`` or ``.data``::

    from torchliquid.train import TrainConfig, fit
    result = fit(model, splits, "regression", TrainConfig(epochs=5, batch_size=64),
                 out_dir="runs/example", run_info={"model": {"name": "cfc", ...}})
"""

from torchliquid.config import TrainConfig
from torchliquid.train.batches import EpochBatches, Split, TrainData, eval_slices
from torchliquid.train.checkpoint import (CheckpointError, CheckpointFallbackWarning,
                                          load_checkpoint, load_first_good, save_checkpoint,
                                          write_csv, write_json)
from torchliquid.train.evaluate import (evaluate_checkpoint, evaluate_split, load_run,
                                        recorded_result)
from torchliquid.train.loop import NonFiniteLossError, Trainer, fit
from torchliquid.train.records import (CHECKPOINT, CONFIG, METRICS, PREVIOUS_CHECKPOINT, RESULT,
                                       metric_columns, samples_name)
from torchliquid.train.tasks import TASKS, Task, get_task

__all__ = [
    "CHECKPOINT", "CONFIG", "METRICS", "PREVIOUS_CHECKPOINT", "RESULT", "TASKS",
    "CheckpointError", "CheckpointFallbackWarning", "EpochBatches", "NonFiniteLossError", "Split",
    "Task", "TrainConfig", "TrainData", "Trainer", "eval_slices",
    "evaluate_checkpoint", "evaluate_split", "fit", "get_task", "load_checkpoint",
    "load_first_good", "load_run", "metric_columns", "recorded_result", "samples_name",
    "save_checkpoint", "write_csv", "write_json",
]
