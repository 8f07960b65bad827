"""The foundation: settings, strings (zh/en), errors with keys, workspace paths, the job and registry records, and the one module that speaks SQL."""
