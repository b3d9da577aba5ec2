"""The `ingest` stage: read and validate the data, build examples and splits. (Filled in by the data layer.)"""
