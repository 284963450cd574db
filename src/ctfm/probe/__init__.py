"""Probing stored embeddings: the batched linear grid (task 1) and token heads (task 2).

Modules: ``data`` (labels + store -> arrays, splits, few-shot), ``training`` (sampling, schedules, early
stopping, checkpoint strategies), ``linear`` (the batched grid, logistic regression), ``heads`` (the head
table), ``checkpoint`` (save / load_predictor), ``reference`` (the reference trainers' checkpoint files),
``layout`` (run folders), ``report`` (CSV files), ``figure`` (the progress figure, drawn in a child process),
``runner`` (diseases x runs, resumable), ``lp_task`` and ``eao`` (the two tasks the runner runs).
"""
