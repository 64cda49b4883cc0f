# %% [markdown]
# # medtune in a notebook
#
# The same steps as the command line, as functions; every call logs its MLflow run as the CLI
# does (open `mlflow ui` beside it). Runs as a script too: `python docs/notebook_example.py`
# (a test executes it). On `synthetic` (generated offline) it takes a few minutes on 2 CPU cores.
# For your data use a registered name (`"brain_mri"`) or a folder of class sub-folders, and
# drop the small sizes below: left out, trials, epochs and sizes are sized from the machine.

# %%
from pathlib import Path

import medtune

print("medtune", medtune.__version__)

# %% Validate, de-duplicate and split (reuses a finished identical split)
split = medtune.split("synthetic", image_size=48)
print(split.result.report["counts"], "skipped:", len(split.result.report["skipped"]))

# %% Search: two short trials here; engine="grid", pruner="asha", objective=... as on the CLI
search = medtune.search("synthetic", trials=2, epochs=2, image_size=48)
print("best trial", search.best.number, search.best.value, search.best.params)

# %% Train the best trial, evaluate on the test split, register, gate @champion
trained = medtune.train("synthetic", epochs=3, image_size=48, patience=3)
print({k: round(v, 3) for k, v in trained.metrics.items() if k in ("test_accuracy", "test_macro_f1")},
      f"{trained.model_name} v{trained.model_version}", trained.decision.alias if trained.decision else "")

# %% Load the registered model, predict a few images, explain one
model = medtune.load(f"models:/{trained.model_name}/{trained.model_version}")
images = sorted(split.resolved.root.rglob("*.png"))[:4]
predictions = model.predict(images)
print(predictions[["image", "label"]].to_string(index=False))

overlay = model.explain(images[0])  # a PIL image: a notebook shows it inline
out = Path("gradcam_example.png")
overlay.save(out)
print("Grad-CAM overlay saved to", out.resolve())
