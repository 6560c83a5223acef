# Model stage: each local tiny model is trained by a rule whose output is committed (a few MB), so a
# default run reuses it and `--forcerun train_tiny_model` (the primary) or `train_<name>` (an extra
# model, dashes as underscores) retrains it.  Hub models need no rule.  One card per model.
for _name, _model in MODELS.items():
    if _model["source"] != "local":
        continue

    rule:
        name:
            train_rule_name(_name)
        conda:
            BCR_ENV
        input:
            cfg=ancient(RUN_CONFIG),
        output:
            model_checkpoint_files(_model),
        params:
            code=command_hash("model", "train"),
            cfg=bcr_config.config_hash(
                {"model": _model, "needle": config["prompts"].get("needle"), "contexts": CONTEXTS}
            ),
            model=_name,
        benchmark:
            benchmark_path(train_rule_name(_name))
        log:
            f"logs/train/{_name}.log",
        threads: TIMED_THREADS
        resources:
            runtime=60,
            mem_mb=8000,
        shell:
            "bcr model train --config {input.cfg} --model {params.model} --quiet > {log} 2>&1"


rule model_card:
    """Parameters, checksums, training report; task accuracy per family at every context the model
    runs at: every pipeline context for the primary, the sweep context (the frontier's) for the others."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        ckpt=lambda w: model_checkpoint_files(MODELS[w.model]),
    output:
        card=C.MODEL_CARD.path(),
        accuracy=C.MODEL_ACCURACY.path(),
    wildcard_constraints:
        model="|".join(MODEL_NAMES),
    params:
        code=command_hash("model", "card"),
        cfg=lambda w: bcr_config.config_hash(
            {"model": MODELS[w.model], **{k: config.get(k) for k in ("runtime", "prompts", "model_card")}}
        ),
        # an extra model runs at the sweep context only (the frontier), so its card measures there
        contexts=lambda w: "" if w.model == config["model"]["name"] else f"--contexts {TIERED_SWEEP_CONTEXT}",
    benchmark:
        benchmark_path("model_card", "{model}")
    log:
        "logs/model_card/{model}.log",
    threads: THREADS  # accuracy only: nothing timed
    shell:
        "bcr model card --config {input.cfg} --model {wildcards.model} --out {output.card} "
        "--accuracy {output.accuracy} {params.contexts} > {log} 2>&1"
