"""MAE pretraining: the ``fastmae pretrain`` / ``fastmae visualize`` commands and their pieces.

Modules, one job each: ``args`` (CLI and resolved settings), ``schedule`` (lr), ``optim``
(weight-decay groups, AdamW), ``step`` (the compiled train step), ``checkpoint``, ``distributed``,
``progress`` (console, TensorBoard, log.txt), ``batches`` (data sources), ``modeling`` (model
factory), ``pretrain`` (the loop), ``visualize``, ``demo``. Nothing heavy is imported here.
"""
