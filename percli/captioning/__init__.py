"""Captioning: Altogether-style re-aligned captions (Xu et al., EMNLP 2024, arXiv 2410.17251).

`scenes` holds an embedded image / alt-text / true-caption set (no download) whose alt-texts are
web-like corruptions of captions that the image fully determines; `triples` turns scenes or JSONL
records into the two training stages' (prompt, target) pairs; `decode` holds greedy, nucleus and
beam decoding over a KV cache; `metrics` holds the caption scores (BLEU-4, CIDEr-D, CLIP-score)
that `percli eval caption` reports.
"""
