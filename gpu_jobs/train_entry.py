"""OpenCLIP's trainer with pairlake's model configs registered: ``python -m gpu_jobs.train_entry ARGS``.

``open_clip_train.main`` resolves ``--model`` in open_clip's in-process config registry, which only
knows the built-in architectures; ``add_model_config`` must run in the same process first, so the
plain ``python -m open_clip_train.main`` cannot train ``pairlake-demo-tiny``. All arguments are
open_clip_train's.
"""

from __future__ import annotations

import sys

from open_clip_train import main as open_clip_train_main

from gpu_jobs.clip_model import register_model_configs


def main(argv: list[str] | None = None) -> int:
    register_model_configs()
    result = open_clip_train_main.main(sys.argv[1:] if argv is None else argv)
    # open_clip_train returns -1 when it refuses to run (e.g. the experiment name exists) and its own
    # __main__ drops that, exiting 0; surface it as a failing exit status.
    return 1 if result == -1 else 0


if __name__ == "__main__":
    sys.exit(main())
