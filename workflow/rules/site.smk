# Site: evaluate the claim ledger on the results, render the pages with Jinja, then
# `mkdocs build --strict` (the last rule of the DAG).  Publishing a version with mike stays
# outside the DAG (site/publishing.md).
#
# Inputs: every result file of this config's DAG (bcr/ledger/workflow.py).  A track contributes
# its files by defining TIERED_SITE_INPUTS / SERVING_SITE_INPUTS / CORRECTNESS_SITE_INPUTS /
# PEERS_SITE_INPUTS (a list of paths or an input function) in its own rule file.
from bcr.ledger import workflow as site_workflow

SITE_INDEX = "results/site/index.html"
LEDGER = "results/ledger.parquet"
CLAIMS_FILE = str(REPO / "config" / "claims.yaml")
REFERENCE_FILE = str(REPO / "config" / "reference.yaml")
MKDOCS_FILE = str(REPO / "mkdocs.yml")
SITE_SOURCES = sorted(str(p) for p in (REPO / "site").rglob("*") if p.is_file())


rule evaluate_claims:
    """One verdict per claim of config/claims.yaml, computed from the result files."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        claims=CLAIMS_FILE,
        results=site_workflow.static_inputs(globals()),
        promoted=lambda w: site_workflow.dynamic_inputs(globals(), w),
    output:
        LEDGER,
    params:
        code=code_hash("ledger", "tiered/sweep.py"),
        cfg=bcr_config.config_hash(config),
    log:
        "logs/evaluate_claims.log",
    resources:
        runtime=10,
        mem_mb=4000,
    shell:
        "bcr site ledger --config {input.cfg} --claims {input.claims} --results results --out {output} "
        "> {log} 2>&1"


rule build_site:
    """Pages and plots into results/site_src, then mkdocs build --strict into results/site."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        ledger=LEDGER,
        claims=CLAIMS_FILE,
        reference=REFERENCE_FILE,
        mkdocs=MKDOCS_FILE,
        sources=SITE_SOURCES,
        results=site_workflow.static_inputs(globals()),
        promoted=lambda w: site_workflow.dynamic_inputs(globals(), w),
    output:
        SITE_INDEX,
    params:
        code=code_hash("ledger", "tiered/sweep.py"),
        cfg=bcr_config.config_hash(config),
        repo=lambda w, input: str(Path(input.mkdocs).parent),
    log:
        "logs/build_site.log",
    resources:
        runtime=15,
        mem_mb=4000,
    shell:
        "bcr site build --config {input.cfg} --repo {params.repo} --results results --ledger {input.ledger} "
        "--claims {input.claims} --reference {input.reference} > {log} 2>&1"
