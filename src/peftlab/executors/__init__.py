"""Where a sweep's runs execute: `local` (in this process, one after another) or `ray` (a Ray cluster).

Both go through `peftlab.sweep.claim_and_run`, so resume and store-sharing rules are the same.
"""
