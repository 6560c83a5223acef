# Dense baseline: stock transformers cache, every prompt generated `repeats` times (determinism gate).
# Its clocks are shown on the baseline page only (every latency claim reads the dense rows its own
# timed job measures in the same process), so only the primary family keeps them, on reserved cores;
# the other families' jobs run untimed beside other jobs, their TTFT/TPOT null.


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
        untimed=lambda w: "" if dense_timed(w) else "--untimed",
    benchmark:
        benchmark_path("dense_baseline", "{workload}/{context}")
    log:
        "logs/dense_baseline/{workload}/{context}.log",
    threads: lambda w: TIMED_THREADS if dense_timed(w) else THREADS
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr dense run --config {input.cfg} --prompts {input.prompts} --out {output} {params.untimed} "
        "--quiet > {log} 2>&1"
