"""MLflow "models from code" entry: the pyfunc medtune logs (no pickled Python objects)."""

import mlflow

from medtune.serving import ImageClassifier

mlflow.models.set_model(ImageClassifier())
