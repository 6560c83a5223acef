# Model stage: the tiny default model is trained by a rule whose output is committed (a few MB),
# so a default run reuses it and `--forcerun train_tiny_model` retrains it.  Hub models need no rule.


if LOCAL_MODEL:

    rule train_tiny_model:
        conda:
            BCR_ENV
        input:
            cfg=ancient(RUN_CONFIG),
        output:
            model_checkpoint_files(),
        params:
            code=command_hash("model", "train"),
            cfg=bcr_config.config_hash(
                {"model": config["model"], "needle": config["prompts"].get("needle"), "contexts": CONTEXTS}
            ),
        log:
            "logs/train_tiny_model.log",
        threads: TIMED_THREADS
        resources:
            runtime=60,
            mem_mb=8000,
        shell:
            "bcr model train --config {input.cfg} --quiet > {log} 2>&1"


rule model_card:
    """Parameters, checksums, training report; needle accuracy at every pipeline context."""
    conda:
        BCR_ENV
    input:
        cfg=ancient(RUN_CONFIG),
        ckpt=model_checkpoint_files(),
    output:
        card=C.MODEL_CARD.path(),
        accuracy=C.MODEL_ACCURACY.path(),
    params:
        code=command_hash("model", "card"),
        cfg=section_hash("runtime", "model", "prompts"),
    log:
        "logs/model_card.log",
    threads: TIMED_THREADS
    shell:
        "bcr model card --config {input.cfg} --out {output.card} --accuracy {output.accuracy} > {log} 2>&1"
