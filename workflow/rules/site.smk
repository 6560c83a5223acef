# Site: evaluate the claim ledger on the results, render the pages with Jinja, then
# `mkdocs build --strict` (the last rule of the DAG).  Publishing a version with mike stays
# outside the DAG (site/publishing.md).
#
# Inputs: every result file the ledger and the pages read, named by the rules that write them, so
# a track added to the DAG adds its outputs here; files known only after the sweep checkpoint (the
# per-prompt tiered runs) come from an input function the checkpoint re-evaluates.
rule freeze_environments:
    """`pip freeze` of the main and the peer environment beside the effective config (the site's
    provenance page shows both beside their locks); reruns when a lock changes."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        locks=[str(REPO / lock) for lock in C.ENVIRONMENTS.values()],
    output:
        [C.RUN_FREEZE.path(environment=e) for e in C.ENVIRONMENTS],
    params:
        code=command_hash("site", "freeze"),
        cfg=section_hash("peers"),
        results=lambda w, input: str(Path(input.cfg).parent.parent),  # results/run/config.yaml
    benchmark:
        benchmark_path("freeze_environments")
    log:
        "logs/freeze_environments.log",
    resources:
        runtime=5,
        mem_mb=2000,
    shell:
        "bcr site freeze --config {input.cfg} --results {params.results} > {log} 2>&1"


SITE_RESULTS = [
    *expand(rules.model_card.output, model=MODEL_NAMES),
    *expand(rules.dense_baseline.output[0], workload=PROMPT_FAMILIES, context=CONTEXTS),
    *expand(rules.tiered_promote.output.summary, workload=PROMPT_FAMILIES, mode=TIERED_MODES),
    *expand(rules.tiered_promotion_summary.output[0], workload=PROMPT_FAMILIES, mode=TIERED_MODES),
    *rules.cache_ops.output,
    *rules.freeze_environments.output,
    *([rules.serving_summary.output[0]] if SERVING_WORKLOADS else []),
    *([rules.longctx_correctness.output.prompts] if SERVING_CORRECTNESS else []),
    *rules.tiered_decomposition.output,
    *(rules.peers_compare.output if PEERS_CFG else []),
    *expand(
        rules.tiered_frontier.output,
        model=TIERED_FRONTIER_MODELS,
        workload=PROMPT_FAMILIES,
    ),
    *expand(
        rules.tiered_controls.output[0],
        workload=PROMPT_FAMILIES,
        mode=TIERED_MODES,
        context=TIERED_CONTROL_CONTEXTS,
    ),
]
REFERENCE_FILE = str(REPO / "config" / "reference.yaml")
MKDOCS_FILE = str(REPO / "mkdocs.yml")
DESIGN_FILE = str(REPO / "DESIGN.md")
SITE_SOURCES = sorted(str(p) for p in (REPO / "site").rglob("*") if p.is_file())


rule evaluate_claims:
    """One verdict per claim of config/claims.yaml, computed from the result files."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        claims=CLAIMS_FILE,
        results=SITE_RESULTS,
        tiered=lambda w: tiered_workflow.checkpoint_results(checkpoints.tiered_promote, config),
    output:
        ledger=C.LEDGER.path(),
        benchmarks=C.BENCHMARKS.path(),
    params:
        code=command_hash("site", "ledger"),
        cfg=bcr_config.config_hash(config),
        results=lambda w, input: str(Path(input.cfg).parent.parent),  # results/run/config.yaml
    benchmark:
        benchmark_path("evaluate_claims")
    log:
        "logs/evaluate_claims.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr site ledger --config {input.cfg} --claims {input.claims} --results {params.results} "
        "--out {output.ledger} --benchmarks {output.benchmarks} > {log} 2>&1"


rule build_site:
    """Pages and plots into results/site_src, then mkdocs build --strict into results/site."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        ledger=rules.evaluate_claims.output.ledger,
        claims=CLAIMS_FILE,
        reference=REFERENCE_FILE,
        mkdocs=MKDOCS_FILE,
        design=DESIGN_FILE,
        sources=SITE_SOURCES,
        results=SITE_RESULTS,
        tiered=lambda w: tiered_workflow.checkpoint_results(checkpoints.tiered_promote, config),
    output:
        C.SITE_INDEX.path(),
    params:
        code=command_hash("site", "build"),
        cfg=bcr_config.config_hash(config),
        repo=lambda w, input: str(Path(input.mkdocs).parent),
        results=lambda w, input: str(Path(input.cfg).parent.parent),  # results/run/config.yaml
    benchmark:
        benchmark_path("build_site")
    log:
        "logs/build_site.log",
    resources:
        runtime=15,
        mem_mb=4000,
    shell:
        "bcr site build --config {input.cfg} --repo {params.repo} --results {params.results} "
        "--ledger {input.ledger} --claims {input.claims} --reference {input.reference} > {log} 2>&1"
