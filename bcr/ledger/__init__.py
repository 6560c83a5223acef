"""Claim ledger, plots and site pages rendered from the Parquet results."""
