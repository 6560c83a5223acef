# Exact-prefix serving (DESIGN.md §3): the cache-operation benchmark of every arm on the workloads'
# token traces (CPU, no model).  Server runs on GPUs extend this file (bcr.prefix.launcher).

SERVING_CACHE_OPS = "results/serving/cache_ops.parquet"
SERVING_SITE_INPUTS = [SERVING_CACHE_OPS]


rule cache_ops:
    """µs per match / insert / checkpoint / path / evict of bcr, radix and UnifiedRadixCache (both cores)."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
    output:
        SERVING_CACHE_OPS,
    params:
        code=code_hash("prefix", "serving", "runtime.py", "provenance.py"),
        cfg=section_hash("serving", "runtime", "model"),
    log:
        "logs/serving/cache_ops.log",
    resources:
        runtime=30,
        mem_mb=8000,
    shell:
        "bcr prefix bench --config {input.cfg} --out {output} > {log} 2>&1"
