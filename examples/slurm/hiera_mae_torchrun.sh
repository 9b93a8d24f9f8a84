#!/bin/bash
# The same job with torchrun instead of accelerate launch (one node, 8 GPUs).
# percli's engine reads the torch.distributed environment torchrun sets up.
torchrun --nproc_per_node 8 -m percli.cli pretrain hiera-mae --preset in1k \
  data.source=/datasets/imagenet/train train.batch_size=128 train.grad_accum_steps=4 train.mixed_precision=bf16
