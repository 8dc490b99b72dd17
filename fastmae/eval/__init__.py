"""Evaluating a pretrained MAE encoder: linear probe, fine-tuning and an online k-NN monitor.

    fastmae linprobe --model vit_base_patch16 --finetune encoder.pth --data_path /data/imagenet ...
    fastmae finetune --model vit_base_patch16 --finetune encoder.pth --data_path /data/imagenet ...

One module per job: :mod:`~fastmae.eval.vit` (the classifier on the encoder), :mod:`~fastmae.eval.weights`
(loading encoder.pth, official ``mae_pretrain_vit_*.pth`` or full checkpoints), :mod:`~fastmae.eval.lars`,
:mod:`~fastmae.eval.layer_decay`, :mod:`~fastmae.eval.drop_path`, :mod:`~fastmae.eval.mixup`,
:mod:`~fastmae.eval.randaugment`, :mod:`~fastmae.eval.erasing`, :mod:`~fastmae.eval.metrics`,
:mod:`~fastmae.eval.knn`, the evaluation images (:mod:`~fastmae.eval.data`), the recipes
(:mod:`~fastmae.eval.recipes`) and the loop they share (:mod:`~fastmae.eval.trainer`).
Nothing heavy is imported with the package.
"""
