"""Quiet the libraries' own chatter (progress bars, deprecation notes) in every process that runs runs.

Used by the CLI and by Ray workers, so a worker prints no more than the command line does.
"""

from __future__ import annotations

import logging
import os
import warnings


def quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    warnings.filterwarnings("ignore", message=".*gemm_4bit.*")
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft vs transformers 5 deprecation
    warnings.filterwarnings("ignore", message=".*fan_in_fan_out.*")  # peft sets it for GPT-2's Conv1D itself
    # peft's prefix-tuning forward (training) still passes `past_key_values`, which transformers 5.24
    # renamed `cache`; pyproject caps transformers below 5.40, where the old name goes
    warnings.filterwarnings("ignore", message="`past_key_values` is deprecated", category=FutureWarning)
    for name in ("transformers", "peft", "accelerate", "bitsandbytes"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
