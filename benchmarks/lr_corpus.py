"""The LR-suggestion corpus: every benchmark task with its family, step budget and LR grid.

Families group tasks that share a model kind, so that leaving one family out tests a rule on problems
unlike the ones it was chosen on. ``held_out`` marks tasks written after the default rule was fixed.
"""

from __future__ import annotations

import lr_tasks as a
import lr_tasks_late as c
import lr_tasks_wide as b
from lr_tasks import BenchTask
from lr_tasks import log_grid as _log_grid

from gradpilot.examples import example_task


def log_grid(lo: float, hi: float) -> tuple[float, ...]:
    return _log_grid(lo, hi, per_decade=6)  # fine enough to read any LR's metric off by interpolation


TASKS: tuple[BenchTask, ...] = (
    # multilayer perceptrons on classification
    BenchTask("spirals-mlp-adamw", example_task, 200, log_grid(1e-4, 1.0), "mlp"),
    BenchTask("digits-bnmlp-adam", a.digits_mlp_adam_bn, 60, log_grid(1e-5, 1.0), "mlp"),
    BenchTask("moons-mlp-nesterov", a.moons_mlp_nesterov, 100, log_grid(1e-4, 3.0), "mlp"),
    BenchTask("classes-mlp-sgd-wd", a.classes_mlp_sgd_wd, 100, log_grid(1e-4, 3.0), "mlp"),
    BenchTask("digits-mlp-adamw-wd", b.digits_mlp_adamw_wd, 100, log_grid(1e-5, 1.0), "mlp"),
    # convolutional networks
    BenchTask("digits-cnn-sgdm", a.digits_cnn_sgdm, 100, log_grid(1e-4, 1.0), "cnn"),
    BenchTask("digits-bncnn-adamw", a.digits_bncnn_adamw, 60, log_grid(1e-5, 1.0), "cnn"),
    BenchTask("waves-conv1d-adam", a.waves_conv1d_adam, 100, log_grid(1e-5, 0.3), "cnn"),
    BenchTask("digits-resnet-nesterov", b.digits_resnet_nesterov, 100, log_grid(1e-4, 3.0), "cnn"),
    # regression
    BenchTask("friedman-mlp-sgd", a.friedman_mlp_sgd, 300, log_grid(1e-4, 1.0), "regression"),
    BenchTask("wave-deepmlp-adam", a.wave_deepmlp_adam, 300, log_grid(1e-5, 0.1), "regression"),
    BenchTask("regression-mlp-nadam", a.regression_mlp_nadam, 150, log_grid(1e-5, 0.3), "regression"),
    BenchTask("diabetes-mlp-adam", b.diabetes_mlp_adam, 600, log_grid(1e-5, 0.3), "regression"),
    # recurrent sequence models
    BenchTask("count-gru-rmsprop", a.count_gru_rmsprop, 150, log_grid(1e-5, 0.1), "recurrent"),
    BenchTask("digits-rowlstm-adamw", a.digits_rowlstm_adamw, 100, log_grid(1e-5, 0.3), "recurrent"),
    BenchTask("seqmean-gru-sgdm", b.seqmean_gru_sgdm, 200, log_grid(1e-4, 3.0), "recurrent"),
    # language models
    BenchTask("charlm-lstm-adam", a.charlm_lstm_adam, 150, log_grid(1e-5, 0.3), "language-model"),
    BenchTask("markov-transformer-adamw", b.markov_transformer_adamw, 200, log_grid(1e-5, 0.3), "language-model"),
    # transformers trained from scratch
    BenchTask("max-transformer-adamw", a.max_transformer_adamw, 150, log_grid(1e-5, 0.1), "transformer"),
    BenchTask("digits-vit-adamw", b.digits_vit_adamw, 150, log_grid(1e-5, 0.3), "transformer"),
    # fine-tuning a pretrained transformer
    BenchTask("minilm-finetune-adamw", a.minilm_finetune_adamw, 40, log_grid(1e-6, 1e-2), "fine-tuning"),
    BenchTask("minilm-head-adam", b.minilm_head_adam, 60, log_grid(1e-5, 1.0), "fine-tuning"),
    # convex models
    BenchTask("digits-logreg-sgd", a.digits_logreg_sgd, 60, log_grid(1e-4, 10.0), "linear"),
    BenchTask("classes-logreg-adam", b.classes_logreg_adam, 150, log_grid(1e-5, 3.0), "linear"),
    # written after the default rule was fixed (lr_tasks_late.py)
    BenchTask("blobs-mlp-adagrad", c.blobs_mlp_adagrad, 100, log_grid(1e-4, 10.0), "mlp", held_out=True),
    BenchTask("circles-mlp-sgdm-wd", c.circles_mlp_sgdm_wd, 150, log_grid(1e-4, 3.0), "mlp", held_out=True),
    BenchTask("sine-lstm-adam", c.sine_lstm_adam, 200, log_grid(1e-5, 0.3), "recurrent", held_out=True),
    BenchTask("friedman2-mlp-adamw-wd", c.friedman2_mlp_adamw_wd, 200, log_grid(1e-5, 0.3), "regression",
              held_out=True),
    BenchTask("markov-transformer-sgdm", c.markov_transformer_sgdm, 200, log_grid(1e-4, 3.0), "language-model",
              held_out=True),
)
