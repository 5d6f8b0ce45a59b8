"""This repository's suite wiring: nothing beyond what the installed plugin does.

The plugin (``hypocheck``, installed with this repository) reads ``suite.yaml`` here (the bundled demo world),
collects the YAML files under ``hypotheses/`` and provides the models, data and caches to every case; a
user's repository needs no conftest at all. This file only keeps the demo world's own YAML files (run-dir
configs, the bad-input corpus) out of pytest's way when it is pointed at the whole tree.
"""

collect_ignore_glob = ["tools/demo/*", "tests/bad_inputs/*"]
