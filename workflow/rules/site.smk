# Site: render result pages with Jinja, then `mkdocs build --strict` (the last rule of the DAG).

SITE_INDEX = "results/site/index.html"


rule build_site:
    input:
        cfg=ancient(RUN_CONFIG),
        card="results/model/card.json",
        accuracy="results/model/accuracy.parquet",
        dense=expand("results/dense/{context}.parquet", context=CONTEXTS),
        mkdocs=str(REPO / "mkdocs.yml"),
    output:
        SITE_INDEX,
    params:
        code=code_hash("ledger"),
        repo=str(REPO),
    log:
        "logs/build_site.log",
    shell:
        "bcr site build --config {input.cfg} --repo {params.repo} --results results > {log} 2>&1"
