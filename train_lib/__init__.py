"""Everything that turns (config, workdir) into a run.

    from train_lib import modes
    result = modes.run("train", config, "runs/default")   # or "eval", "sample", "ablate",
    # "shardings", "sanity" (raises ChecksFailed, exit code 1, if a check fails), "lr_range"

The folders say what is what: the core is train_lib/*.py; tasks/ and evaluators/ hold
plug-ins; tools/ holds the researcher's tools (capsule, diagnosis, plots, sanity, lr_range,
ablate, sample), which build on the core and are never imported by it. modes.py is where
the two meet: it picks the mode.

Errors a user can fix raise train_lib.UserError (exit code 2 from main.py). A config
field that the run never reads is reported as a warning line (train_lib/config_reads.py).
"""

from train_lib.errors import ChecksFailed, Diverged, Preempted, UserError  # noqa: F401
