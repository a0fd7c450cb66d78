"""Everything that learns. Imports torch, numpy, pandas, pydantic, scikit-learn, matplotlib and tqdm
only (never Prefect or Feast) so it runs alone on a GPU host.

Modules: ``tasks`` (task graph, torch-free), ``config`` (shared model knobs, train and export
params), ``preprocess`` (feature columns, vocabularies, standardisation), ``networks`` (the model
registry: one module per model with its config, ``parse_model_config``, ``switch_model``), ``losses``,
``train`` (train_model, load_model, predict_frame), ``metrics`` (evaluate_predictions), ``plots``,
``export`` (ONNX bundle, OnnxScorer), ``compare`` (model x loss table), ``atomic`` (atomic writes).
Import the submodule you need; this package file stays import-free so ``models.tasks`` is cheap.
"""
