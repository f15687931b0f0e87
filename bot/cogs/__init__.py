"""One cog per capability."""
