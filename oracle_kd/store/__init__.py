"""The run store: run identity (semantic config → content hash → folder), atomic files and locks, and the
schema of the record a finished run leaves (result.json)."""
