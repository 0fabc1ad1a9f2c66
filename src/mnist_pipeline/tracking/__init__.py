"""MLflow: the store, the runs, their inputs and lineage, the logged results and the model registry."""
