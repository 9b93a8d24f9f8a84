"""DiffMAE fine-tuning for classification: MAE's fine-tuning ViT (mean-pooled patch tokens, ``fc_norm``, linear
head) over a DiffMAE encoder, trained with the same recipe as `percli finetune hiera` (AdamW, layer decay,
label smoothing, RandAugment, mixup / cutmix, random erasing). ``model.checkpoint`` is a `percli pretrain
diffmae` run or checkpoint: its encoder is loaded, its decoder dropped.

The paper fine-tunes as MAE (ViT-L: 50 epochs, batch 1024); its IN-1K top-1: ViT-B 83.9, ViT-L 85.8, ViT-H 86.9.

Examples:
  percli finetune diffmae                                        # tiny preset from scratch, embedded shapes
  percli finetune diffmae model.checkpoint=runs/pretrain-diffmae-X
  percli finetune diffmae --preset none model.name=diffmae_vit_large_patch16_cls optim.layer_decay=0.75 \\
      model.checkpoint=runs/pretrain-diffmae-in1k data.source=/data/imagenet/train data.val_source=/data/imagenet/val
"""

from percli.recipes.hiera_classify import ClassifyTask, Config, run, validate  # noqa: F401  the same recipe
