"""Grounded multilingual representations: sentences in several languages tied to the same images.

Two methods build on this package: MHA-VSE, a multi-head attention visual-semantic embedding trained on
image-caption pairs in several languages at once (Huang, Chang and Hauptmann, "Multi-Head Attention with
Diversity for Learning Grounded Multilingual Multimodal Representations", EMNLP 2019), and unsupervised
multimodal machine translation with pseudo visual pivoting (Huang et al., "Unsupervised Multimodal Neural
Machine Translation with Pseudo Visual Pivoting", ACL 2020), which learns to translate from monolingual
captions of disjoint images, with the shared visual space as the pivot.

Data: :mod:`percli.grounding.scenes` renders an embedded Multi30K-style corpus (English, German, French);
:mod:`percli.grounding.multi30k` reads it and the real Multi30K layout; :mod:`percli.grounding.tokenizer`
holds the shared multilingual subword vocabulary.
"""
