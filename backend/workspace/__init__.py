"""What the workspace holds: models and datasets, their formats, rows and views, imports, and the remote-code opt-in."""
