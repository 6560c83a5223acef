"""bcr-memory: exact long-context KV-cache experiments on Qwen-family models."""
