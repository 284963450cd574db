"""Probing stored embeddings: the batched linear grid (task 1) and token heads (task 2).

Modules: ``data`` (labels + store -> arrays, splits, few-shot), ``training`` (sampling, schedules, early
stopping, checkpoint strategies), ``linear`` (the batched grid, logistic regression), ``heads`` (registry),
``checkpoint`` (save / load_predictor), ``layout`` (run folders), ``report`` (CSV files, figure), ``runner``
(diseases x runs, resumable).
"""
