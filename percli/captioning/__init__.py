"""Captioning: Altogether-style re-aligned captions (Xu et al., EMNLP 2024, arXiv 2410.17251).

`scenes` holds an embedded image / alt-text / true-caption set (no download) whose alt-texts are
web-like corruptions of captions that the image fully determines; `triples` turns scenes or JSONL
records into the two training stages' (prompt, target) pairs; `batch_caption` captions image shards
chunk by chunk (resumable); `metrics` holds the caption scores (BLEU-4, CIDEr-D, CLIP-score). The
jobs: `caption_job` is `percli caption altogether`, `eval_job` is `percli eval caption`. Decoding
(greedy, nucleus, beam over a KV cache) lives with the models, in `percli.models.text_decoding`.
"""
