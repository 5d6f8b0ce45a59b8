"""arc-state's own training command line (``state tx train``) driven from this repository: the data config it
reads, tiny model sizes, a small world to train on, and the demo world's baseline run dirs.

Usage::

    python -m tools.arcstate.driver --h5ad tiny.h5ad --out runs --name st --model state --test jurkat:RPL3
    python -m tools.arcstate.baselines                  # rebuild tools/demo/runs/{perturb_mean,context_mean,embed_sum}
"""
