"""Neural architecture search on small offline proxy tasks (`percli search-arch`).

* `space`: discrete search spaces over percli's DINOv2 ViT (sample, mutate one choice, JSON keys);
* `proxy`: budgeted proxy training on scikit-learn's bundled 8x8 digits;
* `search`: random search and regularised (aging) evolution;
* `darts`: DARTS, a differentiable cell search with first-order bilevel updates;
* `plot`: search.png, drawn with matplotlib;
* `job`: the `percli search-arch` job (typed config, run dir, resume).
"""
