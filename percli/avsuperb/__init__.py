"""AV-SUPERB (Tseng et al., ICASSP 2024): frozen audio-visual representations on 7 tasks.

`upstream` turns encoders into per-layer feature lists, `featurizer` mixes the layers, `heads`
holds the task heads; the task readers, runner and mini-benchmark build on those; `job` is the
`percli eval av-superb` job.
"""
