"""Data: the native schema, its validating reader, source adapters, and the example builder."""
