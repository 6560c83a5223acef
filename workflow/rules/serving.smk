# Exact-prefix serving (DESIGN.md, "Exact-prefix serving"): the cache-operation benchmark of every
# arm on the workloads' token traces (CPU, no model).  Server runs on GPUs extend this file.


rule cache_ops:
    """µs per match / lock / path / checkpoint / insert / release / evict and per request (the total the
    scheduler's thread pays), for the scheduler's calls and plain callers, of every arm."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
    output:
        C.CACHE_OPS.path(),
    params:
        code=command_hash("prefix", "bench"),
        cfg=section_hash("serving", "runtime", "model"),
    log:
        "logs/serving/cache_ops.log",
    threads: TIMED_THREADS
    resources:
        runtime=30,
        mem_mb=8000,
    shell:
        "bcr prefix bench --config {input.cfg} --out {output} > {log} 2>&1"
