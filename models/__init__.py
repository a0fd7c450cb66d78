"""Everything that learns. Imports torch, numpy, pandas, pydantic, pyyaml, matplotlib and tqdm only
(never Prefect or Feast) so it runs alone on a GPU host.

Modules: ``tasks`` (task graph, torch-free), ``config`` (typed params), ``preprocess`` (feature columns,
vocabularies, standardisation), ``networks`` (model registry), ``losses``, ``train`` (train_model,
load_model, predict_frame), ``metrics`` (evaluate_predictions), ``plots``, ``export`` (ONNX bundle,
OnnxScorer), ``compare`` (model x loss table). Import the submodule you need; this package file
stays import-free so ``models.tasks`` is cheap.
"""
