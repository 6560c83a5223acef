# Dense baseline: stock transformers cache, every prompt generated `repeats` times (determinism gate).


rule dense_baseline:
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts="results/prompts/{context}.parquet",
        ckpt=model_checkpoint_files(),
    output:
        "results/dense/{context}.parquet",
    wildcard_constraints:
        context=r"\d+",
    params:
        code=code_hash("dense.py", "generation.py", "models.py", "runtime.py", "provenance.py"),
        cfg=section_hash("runtime", "model", "generation"),
    log:
        "logs/dense_baseline/{context}.log",
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr dense run --config {input.cfg} --prompts {input.prompts} --out {output} --quiet > {log} 2>&1"
