"""Hyperparameter optimisation: the engines (``optuna_engine``, ``keras_tuner_engine``, ``grid``),
the trial runner (``trial``) and what they share (``base``). The notebook function that runs a
search is :func:`medtune.api.search` (``medtune.search``).
"""
