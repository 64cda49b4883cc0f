"""``medtune app``: a Gradio demo of registered medtune models, with Grad-CAM and the model card.

``inference`` computes (no UI), ``ui`` builds the page from a model source (no MLflow),
``server`` starts it safely; :mod:`medtune.steps.app` joins it to the Model Registry.
"""
