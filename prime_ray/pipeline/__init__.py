"""The job pipeline: stages behind one interface, run in order by the runner with manifests and events."""
