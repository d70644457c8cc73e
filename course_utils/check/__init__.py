"""Exercises: automatic checks, hints and solutions for the learner (notebooks 01-16).

In a notebook, after a "Your turn" cell::

    from course_utils import check

    def causal_mask(T):
        ...  # your code

    check.causal_mask(causal_mask)  # one line: passed, not attempted yet, or what is wrong
    check.hint("causal_mask")       # a hint; a second call gives a stronger one
    check.solution("causal_mask")   # the course's solution (course_utils/solutions/)

and, in a later cell, the switch that puts the answer to work::

    mask_fn = check.use_mine(causal_mask)  # yours if its check passes, else the course's

A check runs the learner's function on several inputs, edge cases included, and compares the
results with a reference nobody here wrote (PyTorch, Hugging Face ``transformers``) or with
the course's finished pieces. When the answer is wrong it looks for the usual mistakes (a
transposed mask, a softmax without the max trick, a missing ``1/sqrt(hs)``...) and names the
one it finds. It never raises on a wrong or missing answer, so a notebook runs top to bottom
with the stubs in place, and it leaves the global random state as it found it.

:func:`use_mine` checks the answer again and returns it when it passes, otherwise the course's
version with the same signature (the exercise's stand-in), and prints which one runs: the
notebook's model, tokenizer, batches or loss then run with the learner's code, and never with
an answer that fails its check. Every notebook from 01 on has at least one such switch.

``python -m course_utils exercises [NOTEBOOK]`` grades the answers saved in the notebook
files and prints a progress table (:func:`grade_notebook`, :func:`run_exercises`): per
notebook how many exercises pass and which of the learner's functions its switches now run
(:func:`use_mine_sites`). It grades the same way as the notebook: an answer may use the
imports, functions, classes and literal constants (``T = 8``) of its own cell and the cells
before it, not the variables those cells compute (a tensor, a model); a check in the
notebook fails such an answer too and says which variable to pass in as an argument
(:mod:`course_utils.check.scope`). Each check may run the answer 10 seconds, there as in a
notebook (:mod:`course_utils.check.limits`).

The package: :mod:`~course_utils.check.core` (the registry, :func:`run`, :func:`judge`,
:func:`hint`, :func:`solution`, the comparisons), one module of checks per notebook
(:mod:`~course_utils.check.nb04_attention` ...), :mod:`~course_utils.check.switch`
(:func:`use_mine`, :func:`stand_in`), :mod:`~course_utils.check.scope` (what an answer may
use), :mod:`~course_utils.check.limits` (the time limit) and
:mod:`~course_utils.check.grader` (saved notebooks, the ``exercises`` command).
"""

from .core import (
    EXERCISES,
    FAILED,
    NOT_ATTEMPTED,
    PASSED,
    Exercise,
    NotAttempted,
    Wrong,
    hint,
    judge,
    run,
    solution,
)
from .grader import (
    HOW_TO_RECORD,
    NotebookError,
    add_exercises_parser,
    grade_notebook,
    read_code_cells,
    run_exercises,
    use_mine_sites,
)
from .nb01_tokenization import apply_merges, merge, most_frequent_pair
from .nb02_datasets import random_batch, to_uint16
from .nb03_embeddings import bigram_probs, embed
from .nb04_attention import causal_attention, causal_mask, softmax, split_heads
from .nb05_transformer_block import dropout, layer_norm, pre_norm_block
from .nb06_gpt_model import convert_hf_state_dict, param_count
from .nb07_training import adamw_step, cross_entropy, warmup_cosine_lr
from .nb08_sampling import kv_attention_step, top_k_logits, top_p_logits
from .nb09_raw_tensors import gelu_grad, linear_backward, sgd_step
from .nb10_tinystories import join_stories, train_flops_per_token
from .nb11_modern_architecture import repeat_kv, rms_norm, rope
from .nb12_evaluation import bits_per_byte, final_number, wilson_interval
from .nb13_instruction_tuning import masked_cross_entropy, reply_targets
from .nb14_preference_tuning import dpo_loss, pick_pair, reply_logprobs
from .nb15_reasoning import (
    group_advantages,
    lora_forward,
    majority_vote,
    parse_answer,
    safe_value,
)
from .nb16_speedrun import muon_momentum, newton_schulz, verdict
from .switch import stand_in, use_mine

__all__ = [
    "EXERCISES",
    "FAILED",
    "NOT_ATTEMPTED",
    "PASSED",
    "Exercise",
    "NotAttempted",
    "Wrong",
    "hint",
    "judge",
    "run",
    "solution",
    "use_mine",
    "stand_in",
    "HOW_TO_RECORD",
    "NotebookError",
    "add_exercises_parser",
    "grade_notebook",
    "read_code_cells",
    "run_exercises",
    "use_mine_sites",
    "most_frequent_pair",
    "merge",
    "apply_merges",
    "random_batch",
    "to_uint16",
    "embed",
    "bigram_probs",
    "causal_mask",
    "softmax",
    "causal_attention",
    "split_heads",
    "layer_norm",
    "dropout",
    "pre_norm_block",
    "param_count",
    "convert_hf_state_dict",
    "cross_entropy",
    "adamw_step",
    "warmup_cosine_lr",
    "top_k_logits",
    "top_p_logits",
    "kv_attention_step",
    "linear_backward",
    "gelu_grad",
    "sgd_step",
    "join_stories",
    "train_flops_per_token",
    "rms_norm",
    "rope",
    "repeat_kv",
    "bits_per_byte",
    "final_number",
    "wilson_interval",
    "reply_targets",
    "masked_cross_entropy",
    "reply_logprobs",
    "dpo_loss",
    "pick_pair",
    "lora_forward",
    "parse_answer",
    "group_advantages",
    "majority_vote",
    "safe_value",
    "newton_schulz",
    "muon_momentum",
    "verdict",
]
