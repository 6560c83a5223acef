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
    benchmark:
        benchmark_path("cache_ops")
    log:
        "logs/serving/cache_ops.log",
    threads: TIMED_THREADS
    resources:
        runtime=30,
        mem_mb=8000,
    shell:
        "bcr prefix bench --config {input.cfg} --out {output} > {log} 2>&1"


# Request-level serving (bcr/serving/): each workload through one server per arm, timed by the same
# streaming client; the local engine on CPU (the default), SGLang's server on GPUs (config/a100.yaml).
SERVING = config["serving"]
SERVING_ENGINE = SERVING.get("engine", "local")
SERVING_RUN = SERVING.get("run") or {}
SERVING_WORKLOADS = list(SERVING_RUN.get("workloads", []))
SERVING_ARMS = list(SERVING_RUN.get("arms", []))
SERVING_FORCE_MISS = list(SERVING_RUN.get("force_miss", []))  # workloads also served at 0% reuse
SERVING_CORRECTNESS = SERVING.get("correctness")
# The local engine runs the config's model (the committed checkpoint); SGLang loads its own.
SERVING_MODEL = model_checkpoint_files() if SERVING_ENGINE == "local" else []


rule serving_run:
    """One workload through every arm's server: one row per request."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        model=SERVING_MODEL,
    output:
        [C.SERVING_REQUESTS.path(engine=SERVING_ENGINE, workload="{workload}", arm=a) for a in SERVING_ARMS],
    params:
        code=command_hash("serving", "run"),
        cfg=section_hash("serving", "runtime", "model"),
        results=lambda w, input: str(Path(input.cfg).parent.parent),  # results/run/config.yaml
        logs=f"logs/serving/{SERVING_ENGINE}/{{workload}}",
    wildcard_constraints:
        workload="|".join(SERVING_WORKLOADS) or "none",
    benchmark:
        benchmark_path("serving_run", "{workload}")
    log:
        f"logs/serving/{SERVING_ENGINE}/{{workload}}.log",
    threads: TIMED_THREADS
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr serving run --config {input.cfg} --workload {wildcards.workload} --results {params.results} "
        "--logs {params.logs} > {log} 2>&1"


rule serving_force_miss:
    """The same workload through every arm at 0% reuse (SGLANG_RADIX_FORCE_MISS=1): the caches' own
    overhead around full prefills, under its own path so nothing reads it as an arm."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        model=SERVING_MODEL,
    output:
        [C.SERVING_FORCE_MISS.path(engine=SERVING_ENGINE, workload="{workload}", arm=a) for a in SERVING_ARMS],
    params:
        code=command_hash("serving", "run"),
        cfg=section_hash("serving", "runtime", "model"),
        results=lambda w, input: str(Path(input.cfg).parent.parent),
        logs=f"logs/serving/{SERVING_ENGINE}/force_miss/{{workload}}",
    wildcard_constraints:
        workload="|".join(SERVING_FORCE_MISS) or "none",
    benchmark:
        benchmark_path("serving_force_miss", "{workload}")
    log:
        f"logs/serving/{SERVING_ENGINE}/force_miss/{{workload}}.log",
    threads: TIMED_THREADS
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr serving run --config {input.cfg} --workload {wildcards.workload} --force-miss "
        "--results {params.results} --logs {params.logs} > {log} 2>&1"


rule serving_summary:
    """The note's Result 1: cached-token delta and TTFT/E2E ratios per workload, paired by request."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        claims=CLAIMS_FILE,  # its bootstrap settings: the ledger's intervals
        requests=expand(rules.serving_run.output, workload=SERVING_WORKLOADS),
        force_miss=expand(rules.serving_force_miss.output, workload=SERVING_FORCE_MISS),
    output:
        C.SERVING_SUMMARY.path(),
    params:
        code=command_hash("serving", "summary"),
    benchmark:
        benchmark_path("serving_summary")
    log:
        "logs/serving/summary.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr serving summary --config {input.cfg} --claims {input.claims} --requests {input.requests} "
        "{input.force_miss} --out {output} > {log} 2>&1"


rule longctx_correctness:
    """Prompts near the maximum context, each asked twice, through both arms: outputs compared."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        model=SERVING_MODEL,
    output:
        requests=[
            C.LONGCTX_REQUESTS.path(engine=SERVING_ENGINE, arm=a)
            for a in (
                [SERVING_CORRECTNESS["arm"], SERVING_CORRECTNESS["baseline"]] if SERVING_CORRECTNESS else []
            )
        ],
        prompts=C.LONGCTX.path(),
    params:
        code=command_hash("serving", "longctx"),
        cfg=section_hash("serving", "runtime", "model"),
        results=lambda w, input: str(Path(input.cfg).parent.parent),  # results/run/config.yaml
        logs=f"logs/correctness/{SERVING_ENGINE}",
    benchmark:
        benchmark_path("longctx_correctness")
    log:
        "logs/correctness/longctx.log",
    threads: THREADS  # exactness only: no claim or page reads its requests' clocks
    resources:
        runtime=120,
        mem_mb=16000,
    shell:
        "bcr serving longctx --config {input.cfg} --results {params.results} --logs {params.logs} "
        "> {log} 2>&1"
