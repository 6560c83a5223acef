"""bcr-memory: exact long-context KV-cache experiments on Qwen-family models.

Importing the package changes nothing in the process (no environment variables, no threads): the
SGLang plug-in imports it inside every server process, and the system under measurement must stay
as SGLang made it.  The project's own entry points (``bcr.cli.main``, the Makefile, the test suite)
set what they need themselves.
"""
