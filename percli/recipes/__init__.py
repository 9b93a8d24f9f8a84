"""Training and evaluation methods on the engine: each module pairs a typed `Config` with the task the
engine runs and a `run(cfg, ctx)`; `percli.jobs` registers them as commands."""
