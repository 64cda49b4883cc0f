"""Pipeline steps: each joins the plain core (datasets, training, reports) to tracking."""
