"""The pipeline spec: pydantic models for each section, loading, overrides and validation.

`trainflow.spec.pipeline` holds `PipelineSpec` and `load_spec`; section modules hold the
params of each pluggable kind. Kept import-light so that engine code can use section models.
"""
