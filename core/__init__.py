"""The core that the training side and the read side share, importing neither of them.

- :mod:`.grammar`: the one naming grammar of Q-Former sublayers, and the placements;
- :mod:`.schema`: the record schema;
- :mod:`.run_folder`: run.json, record parts and their validation, compaction, resume bookkeeping, the writer lock;
- :mod:`.layout`: the sweep's folders (``OUT/<benchmark>/<method tag>/seed<k>``), method tags, set-aside attempts;
- :mod:`.atomic`: atomic file writes;
- :mod:`.adalora_rules`: AdaLoRA's schedule, phases, mask threshold and rank_pattern keys.

It needs numpy and pyarrow only: no torch, peft or matplotlib.
"""
