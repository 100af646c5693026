"""What each stateful data step does, as plain functions: `fit` learns a state from rows,
`apply` turns rows (a polars frame) into rows with that state.

The scikit-learn contract that a step's task (tasks/<step>.py, which stores the output), the
cross-validation folds and prediction share. Nothing here imports Prefect, so a model package
applies its fitted steps without loading the orchestrator (trainflow.package).
"""
