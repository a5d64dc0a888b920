"""Container consoles: a keeper process per running native container holds its terminal (so the console
outlives agent restarts), logs it in a bounded ring, and lets the agent attach (see keeper.py)."""
