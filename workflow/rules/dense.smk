# Dense baseline: stock transformers cache, every prompt generated `repeats` times (determinism gate).


rule dense_baseline:
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        prompts=rules.build_prompts.output[0],
        ckpt=model_checkpoint_files(),
    output:
        C.DENSE.path(),
    wildcard_constraints:
        context=r"\d+",
        workload=PROMPT_FAMILY_NAMES,
    params:
        code=command_hash("dense", "run"),
        cfg=section_hash("runtime", "model", "generation"),
    benchmark:
        benchmark_path("dense_baseline", "{workload}/{context}")
    log:
        "logs/dense_baseline/{workload}/{context}.log",
    threads: TIMED_THREADS
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr dense run --config {input.cfg} --prompts {input.prompts} --out {output} --quiet > {log} 2>&1"
